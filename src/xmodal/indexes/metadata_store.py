"""Columnar metadata for filtered search: one Arrow table, evaluated with numpy/pyarrow compute.

Items' metadata dicts are free-form (a CSV gives every item the same fields, sidecars differ per
item, a field may hold a number here and text there, or a list of tags). They are stored "long":
one row per (item, field, value) with typed value columns::

    row (int64: the engine's item position) | field (string) | list (bool: element of a list)
    | num (float64) | str (string) | bool (bool)

so a filter touches only the rows of the fields it names, each comparison is one vectorised
operation on one typed column, and no per-item Python runs at query time. Nested objects are
flattened with dots (``{"exif": {"date": ..}}`` -> ``exif.date``, plus a presence row for ``exif``).
Saved as Parquet (``metadata.parquet``). Why Arrow/Parquet rather than SQLite: see
``benchmarks/filtered_search.py`` (``--store-compare``), which measures both on the same data.

``mask(expr, n)`` returns a boolean numpy array over rows ``0..n-1``: exactly
``[filters.matches(expr, meta_of_row) for row in range(n)]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .filters import And, Compare, Exists, Expr, In, Not, Or, parse_filter, type_class

COLUMNS = ("row", "field", "list", "num", "str", "bool")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("row", pa.int64()), ("field", pa.string()), ("list", pa.bool_()), ("num", pa.float64()),
                      ("str", pa.large_string()), ("bool", pa.bool_())])


def _entries(meta: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, bool, Any]]:
    """(field, in_list, value) of one metadata dict; value None = present but not comparable."""
    for key, v in meta.items():
        if v is None:
            continue
        name = f"{prefix}{key}"
        if isinstance(v, Mapping):
            yield name, False, None
            yield from _entries(v, name + ".")
        elif isinstance(v, (list, tuple)):
            yield name, True, None
            for x in v:
                if type_class(x) is not None:
                    yield name, True, x
        else:
            yield name, False, v if type_class(v) is not None else None


def _utf8(v: str) -> str:
    """Text Arrow can hold: a file name that is not UTF-8 (surrogate escapes) keeps its bytes as \\xNN escapes."""
    try:
        v.encode("utf-8")
        return v
    except UnicodeEncodeError:
        return v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Field:
    """The rows of one field, split by value type (numpy for numbers/bools/rows, Arrow for text)."""

    def __init__(self, rows: np.ndarray, is_list: np.ndarray, num: Any, strs: Any, bools: Any) -> None:
        import pyarrow.compute as pc

        self.present = np.unique(rows)
        num_valid = ~np.asarray(num.is_null().to_numpy(zero_copy_only=False))
        self.num_rows, self.num_list = rows[num_valid], is_list[num_valid]
        self.num = np.asarray(num.filter(pc.invert(num.is_null())).to_numpy(zero_copy_only=False), dtype=np.float64)
        str_valid = ~np.asarray(strs.is_null().to_numpy(zero_copy_only=False))
        self.str_rows, self.str_list = rows[str_valid], is_list[str_valid]
        # text as dictionary codes: a comparison runs on the few distinct values, then one numpy gather
        enc = pc.dictionary_encode(strs.filter(pc.invert(strs.is_null())))
        self.str_dict, self.str_codes = enc.dictionary, np.asarray(enc.indices.to_numpy(zero_copy_only=False))
        bool_valid = ~np.asarray(bools.is_null().to_numpy(zero_copy_only=False))
        self.bool_rows, self.bool_list = rows[bool_valid], is_list[bool_valid]
        self.bool = np.asarray(bools.filter(pc.invert(bools.is_null())).to_numpy(zero_copy_only=False), dtype=bool)
        # rows 0..m-1 in order (a field every item has, e.g. from a CSV): a comparison's hits are the mask itself
        self.num_dense, self.str_dense = _dense(self.num_rows), _dense(self.str_rows)
        self.num_any_list, self.str_any_list = bool(self.num_list.any()), bool(self.str_list.any())


def _dense(rows: np.ndarray) -> bool:
    return bool(len(rows)) and rows[0] == 0 and rows[-1] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1))


class MetadataStore:
    """Item metadata as one long Arrow table (see module docstring); append-only, rows are item positions."""

    def __init__(self, table: Any = None) -> None:
        self._chunks: list[Any] = [] if table is None or len(table) == 0 else [table]
        self._fields: dict[str, _Field] | None = None

    @staticmethod
    def _table(records: Sequence[Mapping[str, Any] | None], rows: Sequence[int]) -> Any:
        import pyarrow as pa

        cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        for row, meta in zip(rows, records):
            if not meta:
                continue
            for name, in_list, v in _entries(meta):
                t = type_class(v)
                cols["row"].append(int(row))
                cols["field"].append(_utf8(name))
                cols["list"].append(in_list)
                cols["num"].append(float(v) if t == "num" else None)
                cols["str"].append(_utf8(v) if t == "str" else None)
                cols["bool"].append(v if t == "bool" else None)
        return pa.table(cols, schema=_schema())

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any] | None], rows: Sequence[int] | None = None) -> "MetadataStore":
        """A store of ``records[j]`` at row ``rows[j]`` (default ``j``)."""
        return cls(cls._table(records, range(len(records)) if rows is None else rows))

    def append(self, records: Sequence[Mapping[str, Any] | None], rows: Sequence[int]) -> None:
        """Add the metadata of new items at the given rows (rows of removed items simply stay unused)."""
        t = self._table(records, rows)
        if len(t):
            self._chunks.append(t)
            self._fields = None

    def replace(self, records: Sequence[Mapping[str, Any] | None], rows: Sequence[int]) -> None:
        """New metadata for rows that already have some (a metadata-only update of those items)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t = self.table()
        self._chunks = [t.filter(pc.invert(pc.is_in(t.column("row"), value_set=pa.array(list(rows), pa.int64()))))]
        self._fields = None
        self.append(records, rows)

    def compacted(self, live: np.ndarray) -> "MetadataStore":
        """Only the rows of live items (``live[row]``), e.g. before saving."""
        t = self.table()
        rows = t.column("row").to_numpy()
        keep = (rows < len(live)) & np.asarray(live, dtype=bool)[np.minimum(rows, max(len(live) - 1, 0))] if len(live) else np.zeros(len(rows), bool)
        return MetadataStore(t if keep.all() else t.filter(keep))

    def table(self) -> Any:
        import pyarrow as pa

        if not self._chunks:
            return _schema().empty_table()
        if len(self._chunks) > 1:
            self._chunks = [pa.concat_tables(self._chunks).combine_chunks()]
        return self._chunks[0]

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks)

    def save(self, path: str | Path) -> None:
        import pyarrow.parquet as pq

        pq.write_table(self.table(), str(path), compression="zstd")

    @classmethod
    def load(cls, path: str | Path) -> "MetadataStore":
        import pyarrow.parquet as pq

        table = pq.read_table(str(path), memory_map=True)
        if table.column_names != list(COLUMNS):
            from ..errors import CorruptIndexError

            raise CorruptIndexError(f"'{path}' is not an xmodal metadata table (columns {table.column_names}).")
        return cls(table)

    # ------------------------------------------------------------------ evaluation
    def _by_field(self) -> dict[str, _Field]:
        if self._fields is None:
            import pyarrow.compute as pc

            t = self.table()
            fields: dict[str, _Field] = {}
            if len(t):
                enc = pc.dictionary_encode(t.column("field")).combine_chunks()
                codes = enc.indices.to_numpy()
                order = np.argsort(codes, kind="stable")
                bounds = np.searchsorted(codes[order], np.arange(len(enc.dictionary) + 1))
                rows = t.column("row").to_numpy()[order]
                is_list = t.column("list").to_numpy()[order]
                take = {c: t.column(c).combine_chunks().take(order) for c in ("num", "str", "bool")}
                for code, name in enumerate(enc.dictionary.to_pylist()):
                    s, e = bounds[code], bounds[code + 1]
                    fields[name] = _Field(rows[s:e], is_list[s:e], take["num"][s:e], take["str"][s:e], take["bool"][s:e])
            self._fields = fields
        return self._fields

    def mask(self, expr: Expr | str, n: int) -> np.ndarray:
        """Boolean array over rows ``0..n-1``: which rows satisfy ``expr``."""
        return self._eval(parse_filter(expr), n)

    def _eval(self, expr: Expr, n: int) -> np.ndarray:
        if isinstance(expr, And):
            out = self._eval(expr.items[0], n)
            for e in expr.items[1:]:
                out &= self._eval(e, n)
            return out
        if isinstance(expr, Or):
            out = self._eval(expr.items[0], n)
            for e in expr.items[1:]:
                out |= self._eval(e, n)
            return out
        if isinstance(expr, Not):
            return ~self._eval(expr.item, n)
        f = self._by_field().get(_utf8(expr.field))
        out = np.zeros(n, dtype=bool)
        if f is None:
            return out
        if isinstance(expr, Exists):
            out[f.present[f.present < n]] = True
            return out
        if isinstance(expr, In):
            for v in expr.values:
                out |= self._compare(f, "=", v, n)
            return out
        if expr.op == "!=":
            out[f.present[f.present < n]] = True
            return out & ~self._compare(f, "=", expr.value, n)
        return self._compare(f, expr.op, expr.value, n)

    @staticmethod
    def _compare(f: _Field, op: str, value: Any, n: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        t = type_class(value)
        dense = False
        if t == "bool":
            if op != "=":
                return np.zeros(n, dtype=bool)  # true/false have no order
            hit, rows = f.bool == value, f.bool_rows
        elif t == "num":
            ops = {"=": np.equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
            hit = ops[op](f.num, float(value))
            if op != "=" and f.num_any_list:
                hit &= ~f.num_list  # ranges compare single values, not list elements
            rows, dense = f.num_rows, f.num_dense
        else:
            fn = {"=": pc.equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}[op]
            per_value = np.asarray(fn(f.str_dict, pa.scalar(_utf8(value), f.str_dict.type)).to_numpy(zero_copy_only=False), dtype=bool)
            hit = per_value[f.str_codes] if len(per_value) else np.zeros(0, dtype=bool)
            if op != "=" and f.str_any_list:
                hit &= ~f.str_list
            rows, dense = f.str_rows, f.str_dense
        if dense and len(hit) == n:  # one value per row, in row order: the comparison is the mask (a fresh array)
            return hit
        out = np.zeros(n, dtype=bool)
        if dense:  # hits are already in row order
            m = min(n, len(hit))
            out[:m] = hit[:m]
            return out
        rows = rows[hit]
        out[rows[rows < n]] = True
        return out
