"""The bottom-up-attention TSV: ``image_id, image_w, image_h, num_boxes, boxes, features`` per line.

``boxes`` and ``features`` are base64 float32 (``trainval_36`` layout); the feature dimension is
``len(features) / num_boxes``. Files with or without a header line are read; a header may name an
extra ``objects_id`` (or ``labels``/``classes``) column of base64 int64 class ids, which is read.
Extra columns of headerless files are ignored (their meaning cannot be known).

Reading is one pass that validates every row and records its byte offset; lazy access then seeks
(``os.pread``, no lock) to the row. The offset index is cached beside the file as
``.<name>.xmodal-idx.npz`` keyed by size + mtime, so re-opening a big file is instant.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ...errors import DatasetFormatError, InvalidInputError
from ...io import atomic_path
from .records import RegionFeatures, as_record, check_id

FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LABEL_COLUMNS = ("objects_id", "labels", "classes", "class_ids")
INDEX_VERSION = 1
_SAMPLE = 64


class RowError(Exception):
    """Why one row is malformed (becomes a ``skipped`` entry with its line number)."""


@dataclass
class Layout:
    """Where the fields are: a header line (or not), column positions, column count, label column."""

    header: bool
    columns: dict[str, int]
    ncols: int
    label_col: int | None = None

    def to_json(self) -> dict:
        return {"header": self.header, "columns": self.columns, "ncols": self.ncols, "label_col": self.label_col}


@dataclass
class Row:
    """One line of the file: its position, and either a record (or ``None`` if not decoded) or a reason."""

    lineno: int
    offset: int
    nbytes: int
    image_id: str | None
    record: RegionFeatures | None = None
    reason: str | None = None


# ------------------------------------------------------------------------------------------- parsing
def _unwrap(field: bytes) -> bytes:
    """Tolerate ``b'...'`` (base64 bytes written through ``str()`` by Python-3 ports of generate_tsv)."""
    if field[:2] == b"b'" and field[-1:] == b"'":
        return field[2:-1]
    return field


def _b64(field: bytes, name: str) -> bytes:
    try:
        return base64.b64decode(_unwrap(field), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RowError(f"{name} is not valid base64 ({e})") from None


def _b64_len(field: bytes) -> int:
    f = _unwrap(field)
    return len(f) // 4 * 3 - (f[-2:].count(b"=") if f else 0)


def _int(field: bytes, name: str, *, allow_float: bool) -> int:
    text = field.decode("ascii", "replace").strip()
    try:
        return int(text)
    except ValueError:
        pass
    if allow_float:
        try:
            f = float(text)
            if np.isfinite(f) and f == int(f):
                return int(f)
        except ValueError:
            pass
    raise RowError(f"{name} {text[:20]!r} is not an integer")


def parse_fields(fields: list[bytes], layout: Layout, dim: int | None, decode: bool = True) -> tuple[str, RegionFeatures | None]:
    """``(image_id, record)`` of one row, or ``RowError``; ``decode=False`` checks only the cheap parts."""
    if len(fields) != layout.ncols:
        raise RowError(f"expected {layout.ncols} tab-separated columns, found {len(fields)}")
    c = layout.columns
    image_id = fields[c["image_id"]].decode("utf-8", "replace").strip()
    if not image_id:
        raise RowError("empty image_id")
    w = _int(fields[c["image_w"]], "image_w", allow_float=True)
    h = _int(fields[c["image_h"]], "image_h", allow_float=True)
    n = _int(fields[c["num_boxes"]], "num_boxes", allow_float=False)
    if n < 0 or w < 0 or h < 0:
        raise RowError(f"negative num_boxes/image size ({n}, {w}, {h})")
    if not decode:
        return image_id, None
    boxes_b = _b64(fields[c["boxes"]], "boxes")
    if len(boxes_b) == 16 * n:
        boxes = np.frombuffer(boxes_b, dtype=np.float32).reshape(n, 4).copy()  # writable, like npz/hdf5 reads
    elif len(boxes_b) == 32 * n and n:
        boxes = np.frombuffer(boxes_b, dtype=np.float64).reshape(n, 4)
    else:
        raise RowError(f"boxes length {len(boxes_b)} bytes is not num_boxes*4 float32 ({16 * n})")
    feats_b = _b64(fields[c["features"]], "features")
    if len(feats_b) % 4:
        raise RowError(f"features length {len(feats_b)} bytes is not a whole number of float32")
    nf = len(feats_b) // 4
    if n == 0:
        if nf:
            raise RowError(f"num_boxes is 0 but features has {nf} floats")
        regions = np.zeros((0, dim or 0), dtype=np.float32)
    elif dim is None:
        if nf % n or nf == 0:
            raise RowError(f"features length {nf} is not a multiple of num_boxes={n}")
        regions = np.frombuffer(feats_b, dtype=np.float32).reshape(n, nf // n).copy()
    elif nf != n * dim:
        raise RowError(f"features length {nf} is not num_boxes*{dim} ({n}*{dim} = {n * dim})")
    else:
        regions = np.frombuffer(feats_b, dtype=np.float32).reshape(n, dim).copy()
    labels = None
    if layout.label_col is not None and fields[layout.label_col].strip():
        lb = _b64(fields[layout.label_col], "labels")
        if len(lb) == 8 * n:
            labels = np.frombuffer(lb, dtype=np.int64).copy()
        elif len(lb) == 4 * n:
            labels = np.frombuffer(lb, dtype=np.int32)
        else:
            raise RowError(f"labels length {len(lb)} bytes is not num_boxes int64 ({8 * n})")
    try:
        rec = RegionFeatures(regions=regions, boxes=boxes, image_w=w or None, image_h=h or None, labels=labels)
    except DatasetFormatError as e:
        raise RowError(str(e).rstrip(".")) from None
    return image_id, rec


def _split(line: bytes) -> list[bytes]:
    return line.rstrip(b"\r\n").split(b"\t")


class _Big(int):
    """A long field of a sampled row, kept only as its decoded base64 length (samples stay small)."""


def _condense(fields: list[bytes]) -> list:
    return [f if len(f) <= 64 else _Big(_b64_len(f)) for f in fields]


def sniff(path: Path) -> tuple[Layout, int | None, int]:
    """The file's layout, its most common feature dimension in the first rows, and the first data line number."""
    with open(path, "rb") as f:
        first = f.readline()
        head = _split(first)
        names = [x.decode("utf-8", "replace").strip() if len(x) < 256 else "" for x in head]
        if "image_id" in names and "num_boxes" in names and not head[names.index("num_boxes")].strip().isdigit():
            missing = [x for x in FIELDS if x not in names]
            if missing:
                raise DatasetFormatError(f"'{path}': the header names columns {names} but lacks {missing}.")
            cols = {x: names.index(x) for x in FIELDS}
            label_col = next((names.index(x) for x in LABEL_COLUMNS if x in names), None)
            layout, start, sample = Layout(True, cols, len(names), label_col), 2, []
        else:
            layout, start, sample = None, 1, [_condense(head)] if first.strip() else []
        for line in f:
            if len(sample) >= _SAMPLE:
                break
            if line.strip():
                sample.append(_condense(_split(line)))
    if layout is None:
        counts = Counter(len(s) for s in sample)
        ncols = max(counts, key=lambda k: (counts[k], k)) if counts else len(FIELDS)
        if ncols < len(FIELDS):
            raise DatasetFormatError(
                f"'{path}' is not a bottom-up-attention TSV: its rows have {ncols} tab-separated columns; expected "
                f"{', '.join(FIELDS)} (with or without a header line).")
        layout = Layout(False, {x: i for i, x in enumerate(FIELDS)}, ncols)
    dims: Counter = Counter()
    for s in sample:
        try:
            if len(s) == layout.ncols:
                n = _int(s[layout.columns["num_boxes"]], "num_boxes", allow_float=False)
                feats = s[layout.columns["features"]]
                nb = int(feats) if isinstance(feats, _Big) else _b64_len(feats)
                if n > 0 and nb % (4 * n) == 0 and nb:
                    dims[nb // (4 * n)] += 1
        except RowError:
            continue
    return layout, (dims.most_common(1)[0][0] if dims else None), start


def scan(path: Path, decode_if: Callable[[str], bool] | None = None,
         on_bytes: Callable[[int], None] | None = None) -> tuple[Layout, Iterator[Row]]:
    """The layout and an iterator over every data row (valid or not), in file order.

    Rows are fully decoded and validated unless ``decode_if(image_id)`` is false (then only the cheap
    fields are checked and ``record`` is ``None``). Duplicate ids after the first valid one are reasons.
    """
    layout, dim, start = sniff(path)

    def rows() -> Iterator[Row]:
        nonlocal dim
        seen: dict[str, int] = {}
        with open(path, "rb") as f:
            offset = 0
            for lineno, line in enumerate(f, start=1):
                pos, offset = offset, offset + len(line)
                if on_bytes:
                    on_bytes(len(line))
                if lineno < start or not line.strip():
                    continue
                fields = _split(line)
                image_id = fields[layout.columns["image_id"]].decode("utf-8", "replace").strip() \
                    if len(fields) > layout.columns["image_id"] else None
                try:
                    decode = decode_if is None or (image_id is not None and decode_if(image_id))
                    image_id, rec = parse_fields(fields, layout, dim, decode=decode)
                    if image_id in seen:
                        raise RowError(f"duplicate image id '{image_id}' (first on line {seen[image_id]})")
                except RowError as e:
                    yield Row(lineno, pos, len(line), image_id, reason=str(e))
                    continue
                if dim is None and rec is not None and rec.num_regions:
                    dim = rec.dim
                seen[image_id] = lineno
                yield Row(lineno, pos, len(line), image_id, record=rec)

    return layout, rows()


# -------------------------------------------------------------------------------------------- reader
def index_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.xmodal-idx.npz")


class TsvReader:
    """Random access to a TSV by byte offset; see the module docstring."""

    format = "tsv"

    def __init__(self, path: Path, *, keep_records: bool = False, select: set[str] | None = None,
                 use_index_cache: bool = True) -> None:
        self.path = Path(path)
        self.skipped: list[tuple[str, str]] = []
        self.skipped_ids: dict[str, tuple[str, str]] = {}  # id -> (where, reason) for ids with no valid row
        self.records: dict[str, RegionFeatures] | None = {} if keep_records else None
        self._fd: int | None = None
        self._pid = 0
        self._lock = threading.Lock()
        if not (use_index_cache and not keep_records and self._load_index()):
            self._build_index(select)
            if use_index_cache:
                self._save_index()
        self._pos = {k: i for i, k in enumerate(self._ids)}

    # -- index
    def _stamp(self) -> dict:
        st = self.path.stat()
        return {"version": INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def _build_index(self, select: set[str] | None) -> None:
        layout, rows = scan(self.path)
        ids, offsets, lengths, lines = [], [], [], []
        dim = None
        for row in rows:
            where = f"{self.path.name}:{row.lineno}"
            if row.reason is not None:
                self.skipped.append((where, row.reason))
                if row.image_id:
                    self.skipped_ids.setdefault(row.image_id, (where, row.reason))
                continue
            ids.append(row.image_id)
            offsets.append(row.offset)
            lengths.append(row.nbytes)
            lines.append(row.lineno)
            if dim is None and row.record.num_regions:
                dim = row.record.dim
            if self.records is not None and (select is None or row.image_id in select):
                self.records[row.image_id] = row.record
        self.layout, self.dim, self._ids = layout, dim, ids
        for k in ids:
            self.skipped_ids.pop(k, None)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)

    def _save_index(self) -> None:
        meta = dict(self._stamp(), dim=self.dim, layout=self.layout.to_json(), skipped=self.skipped,
                    skipped_ids=self.skipped_ids)
        target = index_path(self.path)
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                         ids=np.frombuffer("\n".join(self._ids).encode(), dtype=np.uint8),
                         offsets=self._offsets, lengths=self._lengths, lines=self._lines)
        except OSError:  # a read-only folder: the index is only a speed-up
            pass

    def _load_index(self) -> bool:
        target = index_path(self.path)
        if not target.exists():
            return False
        try:
            with np.load(target, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                if any(meta.get(k) != v for k, v in self._stamp().items()):
                    return False
                ids = z["ids"].tobytes().decode().split("\n") if z["ids"].size else []
                offsets, lengths, lines = z["offsets"], z["lengths"], z["lines"]
        except Exception:  # a stale or broken cache is rebuilt, never trusted
            return False
        if not (len(ids) == len(offsets) == len(lengths) == len(lines)):
            return False
        lay = meta["layout"]
        self.layout = Layout(lay["header"], lay["columns"], lay["ncols"], lay["label_col"])
        self.dim, self._ids = meta["dim"], ids
        self._offsets, self._lengths, self._lines = offsets, lengths, lines
        self.skipped = [tuple(s) for s in meta["skipped"]]
        self.skipped_ids = {k: tuple(v) for k, v in meta.get("skipped_ids", {}).items()}
        return True

    # -- access
    def ids(self) -> list[str]:
        return list(self._ids)

    def where(self, image_id: str) -> str:
        return f"{self.path.name}:{int(self._lines[self._pos[image_id]])}"

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def read(self, image_id: str) -> RegionFeatures:
        i = self._pos[image_id]
        offset, length = int(self._offsets[i]), int(self._lengths[i])
        fd = self._handle()
        if hasattr(os, "pread"):
            data = os.pread(fd, length, offset)
        else:  # pragma: no cover - Windows
            with self._lock:
                os.lseek(fd, offset, os.SEEK_SET)
                data = os.read(fd, length)
        try:
            got, rec = parse_fields(_split(data), self.layout, self.dim)
            if got != image_id:
                raise RowError(f"found id '{got}' where '{image_id}' was indexed")
        except RowError as e:
            raise DatasetFormatError(f"'{self.where(image_id)}': {e} (did the file change after it was indexed? "
                                     f"delete '{index_path(self.path).name}' to re-index).") from None
        return rec

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_fd=None, _pid=0, _lock=None, records=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# -------------------------------------------------------------------------------------------- writer
def _b64enc(arr: np.ndarray, dtype) -> bytes:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes())


class TsvWriter:
    """Append rows; a header line (naming an ``objects_id`` column) is written only if records carry labels.

    Without labels the file is the classic headerless 6-column layout other tools read. With
    ``append=True`` an existing file is continued (a partial last line from a crash is cut off).
    """

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.existing: set[str] = set()
        self.labels: bool | None = None
        if append and self.path.exists() and self.path.stat().st_size:
            self._truncate_partial_line()
            layout, rows = scan(self.path)
            self.labels = layout.label_col is not None
            self.existing = {r.image_id for r in rows if r.reason is None}
        self._f = open(self.path, "ab" if append else "wb")

    def _truncate_partial_line(self) -> None:
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            pos, chunk = size, b""
            while pos > 0:
                step = min(1 << 16, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    cut = pos - step + nl + 1
                    break
                pos -= step
            else:
                cut = 0
            if cut != size:
                f.truncate(cut)

    def add(self, image_id: str, record: RegionFeatures) -> None:
        check_id(image_id)
        rec = as_record(record, image_id)
        if self.labels is None:
            self.labels = rec.labels is not None
            if self.labels:
                self._f.write(("\t".join(FIELDS + ("objects_id",)) + "\n").encode())
        if rec.labels is not None and not self.labels:
            raise InvalidInputError(
                f"'{image_id}' has labels but '{self.path}' was started without a labels column: give labels "
                "for all records or for none.")
        cols = [image_id.encode("utf-8"), str(rec.image_w or 0).encode(), str(rec.image_h or 0).encode(),
                str(rec.num_regions).encode(), _b64enc(rec.boxes, "<f4"), _b64enc(rec.regions, "<f4")]
        if self.labels:
            cols.append(_b64enc(rec.labels, "<i8") if rec.labels is not None else b"")
        self._f.write(b"\t".join(cols) + b"\n")
        self.existing.add(image_id)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
