"""``FeatureStore``: one read-only mapping ``image id -> RegionFeatures`` over every format, and the writers."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ...errors import DatasetFormatError, InvalidInputError
from ...io import replace_dir
from .formats import HDF5_SUFFIXES, Hdf5Reader, detect_format, looks_like_store, normalise_format, open_reader, open_writer
from .records import MissingFeaturesError, RegionFeatures, as_record

_LOAD_CHUNK = 256


class _LRU:
    """A thread-safe bounded LRU cache with hit/miss counters (``capacity=0`` caches nothing)."""

    def __reduce__(self):  # pickles empty (locks do not pickle; a copy starts cold)
        return (_LRU, (self.capacity,))

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._data: OrderedDict[str, RegionFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> RegionFeatures | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: RegionFeatures) -> None:
        if not self.capacity:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def info(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._data), "capacity": self.capacity}

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class FeatureStore(Mapping[str, RegionFeatures]):
    """Region features by image id, from an npz folder, a bottom-up-attention TSV, HDF5 or LMDB.

    ``FeatureStore.open(path)`` detects the format. By default records are read just in time and kept
    in a bounded, thread-safe LRU cache; ``in_memory=True`` reads everything up front (in parallel).
    Malformed records found on open are left out and listed in ``skipped`` as ``(where, reason)``;
    a lazy store that meets a bad record on access raises ``DatasetFormatError`` naming it (and adds it
    to ``skipped``). The store pickles (open handles are not copied, and are reopened after a fork), so
    it can travel to DataLoader workers.

        >>> store = FeatureStore.open("trainval_36.tsv")               # doctest: +SKIP
        >>> store["391895"].regions.shape                              # doctest: +SKIP
        (36, 2048)
    """

    def __init__(self, ids: list[str], *, reader: Any = None, records: dict[str, RegionFeatures] | None = None,
                 format: str, path: Path | None, skipped: list[tuple[str, str]], cache_size: int = 1024,
                 num_workers: int = 4) -> None:
        self._ids = ids
        self._index = {k: i for i, k in enumerate(ids)}
        self._reader = reader
        self._records = records
        self._format = format
        self._path = path
        self.skipped = skipped
        self._cache = _LRU(cache_size if records is None else 0)
        self._num_workers = max(1, int(num_workers))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()
        self._dim: int | None = None
        self._closed = False
        self._reads = 0
        self._skipped_ids: dict[str, tuple[str, str]] = dict(getattr(reader, "skipped_ids", {}))

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path: str | os.PathLike, format: str = "auto", *, in_memory: bool = False, cache_size: int = 1024,
             select: Iterable[str] | None = None, num_workers: int = 4) -> "FeatureStore":
        """Open a store; ``format`` is ``auto`` (detected), ``npz``, ``tsv``, ``hdf5`` or ``lmdb``.

        ``select`` restricts the store to those ids (an id not in the file raises ``MissingFeaturesError``).
        """
        path = Path(path)
        fmt = detect_format(path) if format == "auto" else normalise_format(format)
        if not path.exists():
            raise InvalidInputError(f"feature store not found: '{path}'.")
        wanted = None if select is None else list(dict.fromkeys(str(s) for s in select))
        reader = open_reader(fmt, path, keep_records=in_memory, select=None if wanted is None else set(wanted))
        skipped = list(reader.skipped)
        ids = reader.ids()
        if wanted is not None:
            have = set(ids)
            missing = [s for s in wanted if s not in have]
            if missing:
                reader.close()
                raise MissingFeaturesError(_missing_message(missing, path, getattr(reader, "skipped_ids", {})))
            keep = set(wanted)
            ids = [i for i in ids if i in keep]
        if not in_memory:
            return cls(ids, reader=reader, format=fmt, path=path, skipped=skipped, cache_size=cache_size,
                       num_workers=num_workers)
        bad: dict[str, tuple[str, str]] = dict(getattr(reader, "skipped_ids", {}))
        try:
            records = _load_all(reader, ids, skipped, bad, num_workers)
        finally:
            reader.close()
        records = _drop_odd_dims(records, reader, skipped, bad)
        store = cls([i for i in ids if i in records], records=records, reader=None, format=fmt, path=path,
                    skipped=skipped, num_workers=num_workers)
        store._skipped_ids.update(bad)
        return store

    @classmethod
    def from_dict(cls, mapping: Mapping[str, RegionFeatures]) -> "FeatureStore":
        """An in-memory store over records you already have (dicts of fields are accepted too)."""
        records = {str(k): as_record(v, str(k)) for k, v in mapping.items()}
        return cls(list(records), records=records, format="memory", path=None, skipped=[])

    # ----------------------------------------------------------------------------------------- mapping
    def _key(self, image_id: Any) -> str:
        if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
            image_id = str(int(image_id))  # COCO-style integer ids
        if not isinstance(image_id, str) or image_id not in self._index:
            raise MissingFeaturesError(_missing_message([image_id], self._path, self._skipped_ids, self))
        return image_id

    def __getitem__(self, image_id: str) -> RegionFeatures:
        key = self._key(image_id)
        if self._records is not None:
            self._reads += 1
            return self._records[key]
        return self._get_lazy(key)

    def __contains__(self, image_id: object) -> bool:
        if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
            image_id = str(int(image_id))
        return isinstance(image_id, str) and image_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    __eq__ = object.__eq__  # Mapping's __eq__ would read every record
    __hash__ = object.__hash__

    def get_many(self, ids: Sequence[str]) -> list[RegionFeatures]:
        """Records of ``ids`` in input order; cache misses are read in parallel (``num_workers`` threads)."""
        keys = [self._key_or_none(i) for i in ids]
        missing = [i for i, k in zip(ids, keys) if k is None]
        if missing:
            raise MissingFeaturesError(_missing_message(missing, self._path, self._skipped_ids, self))
        if self._records is not None:
            self._reads += len(keys)
            return [self._records[k] for k in keys]
        found = {k: self._cache.get(k) for k in dict.fromkeys(keys)}
        todo = [k for k, v in found.items() if v is None]
        if len(todo) > 1 and self._num_workers > 1:
            for k, rec in zip(todo, self._executor().map(self._load, todo)):
                found[k] = rec
        else:
            for k in todo:
                found[k] = self._load(k)
        return [found[k] for k in keys]

    def _key_or_none(self, image_id: Any) -> str | None:
        try:
            return self._key(image_id)
        except MissingFeaturesError:
            return None

    # ------------------------------------------------------------------------------------------- lazy
    def _get_lazy(self, key: str) -> RegionFeatures:
        rec = self._cache.get(key)
        return rec if rec is not None else self._load(key)

    def _load(self, key: str) -> RegionFeatures:
        if self._closed:
            raise InvalidInputError(f"feature store '{self._path}' is closed.")
        try:
            rec = self._reader.read(key)
            rec = self._check_dim(rec, key)
        except DatasetFormatError as e:
            entry = (self._reader.where(key), str(e))
            with self._lock:
                if entry not in self.skipped:
                    self.skipped.append(entry)
                    self._skipped_ids[key] = entry
            raise
        self._cache.put(key, rec)
        return rec

    def _check_dim(self, rec: RegionFeatures, key: str) -> RegionFeatures:
        try:
            dim = self.feature_dim
        except DatasetFormatError:  # no record with regions yet
            return rec
        if rec.num_regions == 0 and rec.dim != dim:
            return RegionFeatures(rec.regions.reshape(0, dim), rec.boxes, rec.image_w, rec.image_h, rec.labels)
        if rec.dim != dim:
            raise DatasetFormatError(f"'{self._reader.where(key)}' has {rec.dim}-d regions but the store's "
                                     f"features are {dim}-d.")
        return rec

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self._num_workers, thread_name_prefix="xmodal-features")
                self._pool_pid = os.getpid()
            return self._pool

    # ------------------------------------------------------------------------------------------- info
    @property
    def feature_dim(self) -> int:
        """The region feature dimension ``d`` (e.g. 2048)."""
        if self._dim is not None:
            return self._dim
        dim = getattr(self._reader, "dim", None) if self._reader is not None else None
        if dim is None and self._records is not None:
            dims = Counter(r.dim for r in self._records.values() if r.num_regions)
            dim = dims.most_common(1)[0][0] if dims else None
        if dim is None and self._records is None:
            for key in self._ids[:50]:  # the first readable record with regions decides
                try:
                    rec = self._reader.read(key)
                except DatasetFormatError:
                    continue
                if rec.num_regions:
                    dim = rec.dim
                    break
        if dim is None:
            raise DatasetFormatError(f"feature store '{self._path or 'in memory'}' holds no readable region, so its "
                                     "feature dimension is unknown.")
        self._dim = int(dim)
        return self._dim

    @property
    def format(self) -> str:
        return self._format

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def in_memory(self) -> bool:
        return self._records is not None

    def cache_info(self) -> dict:
        """``hits``, ``misses``, ``size``, ``capacity`` of the LRU cache (an in-memory store holds everything)."""
        if self._records is not None:
            return {"hits": self._reads, "misses": 0, "size": len(self._records), "capacity": len(self._records)}
        return self._cache.info()

    def __repr__(self) -> str:
        mode = "in memory" if self._records is not None else f"lazy, cache {self._cache.capacity}"
        return f"FeatureStore({len(self)} images, format={self._format}, path='{self._path}', {mode})"

    # ----------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release file handles and threads; a lazy store cannot read afterwards (an in-memory one still can)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None
        if self._reader is not None:
            self._reader.close()
        self._cache.clear()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_pool=None, _pool_pid=0, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ----------------------------------------------------------------------------------------- helpers
def _missing_message(missing: list, store_path: Path | None, skipped_ids: dict[str, tuple[str, str]],
                     store: "FeatureStore | None" = None) -> str:
    where = f"feature store '{store_path}'" if store_path is not None else "the in-memory feature store"
    if len(missing) == 1:
        msg = f"no region features for image id {missing[0]!r} in {where}."
    else:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        msg = f"{len(missing)} image ids have no region features in {where}: {shown}."
    bad = [(m, skipped_ids[m]) for m in missing if isinstance(m, str) and m in skipped_ids]
    if bad:
        m, (loc, reason) = bad[0]
        msg += f" {m!r} was skipped as malformed ({loc}: {reason})."
    if store is not None:
        msg += f" The store holds {len(store)} ids" + (f", e.g. {store._ids[0]!r}." if len(store) else ".")
    return msg


def _load_all(reader: Any, ids: list[str], skipped: list[tuple[str, str]], bad: dict[str, tuple[str, str]],
              num_workers: int) -> dict[str, RegionFeatures]:
    """Every record of ``ids``; unreadable ones go to ``skipped``."""
    kept = getattr(reader, "records", None)
    if kept is not None:  # the TSV scan already decoded them
        return {k: kept[k] for k in ids if k in kept}
    records: dict[str, RegionFeatures] = {}
    if isinstance(reader, Hdf5Reader) and reader.layout == "flat":
        rows = sorted(reader._rows[k] for k in ids)
        by_row = {reader._rows[k]: k for k in ids}
        for s in range(0, len(rows), _LOAD_CHUNK):
            chunk = rows[s:s + _LOAD_CHUNK]
            runs = _runs(chunk)
            for run in runs:
                try:
                    recs = reader.read_flat_chunk(run)
                except DatasetFormatError:
                    recs = None
                for i, row in enumerate(run):
                    k = by_row[row]
                    try:
                        records[k] = recs[i] if recs is not None else reader.read(k)
                    except DatasetFormatError as e:
                        skipped.append((reader.where(k), str(e)))
                        bad[k] = skipped[-1]
        return records

    def one(key: str) -> tuple[str, RegionFeatures | None, str | None]:
        try:
            return key, reader.read(key), None
        except DatasetFormatError as e:
            return key, None, str(e)

    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for key, rec, err in pool.map(one, ids):
            if err is None:
                records[key] = rec
            else:
                skipped.append((reader.where(key), err))
                bad[key] = skipped[-1]
    return records


def _runs(rows: list[int]) -> list[list[int]]:
    """Sorted row numbers -> runs of consecutive ones (one HDF5 slice read each)."""
    runs: list[list[int]] = []
    for r in rows:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def _drop_odd_dims(records: dict[str, RegionFeatures], reader: Any, skipped: list[tuple[str, str]],
                   bad: dict[str, tuple[str, str]]) -> dict[str, RegionFeatures]:
    """Keep the records of the most common feature dimension; others are reported (a model needs one ``d``)."""
    dims = Counter(r.dim for r in records.values() if r.num_regions)
    if not dims:
        return records
    dim = dims.most_common(1)[0][0]
    out = {}
    for k, r in records.items():
        if r.num_regions == 0 and r.dim != dim:
            r = RegionFeatures(r.regions.reshape(0, dim), r.boxes, r.image_w, r.image_h, r.labels)
        if r.dim != dim:
            skipped.append((reader.where(k), f"{r.dim}-d regions but the store's features are {dim}-d"))
            bad[k] = skipped[-1]
            continue
        out[k] = r
    return out


# ----------------------------------------------------------------------------------------- writing
def format_for_path(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "tsv"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in (".lmdb", ".mdb"):
        return "lmdb"
    return "npz"


def _items(mapping: Any) -> Iterator[tuple[str, RegionFeatures]]:
    if isinstance(mapping, FeatureStore) and mapping._records is None:
        ids = list(mapping)
        for s in range(0, len(ids), 64):  # parallel reads, bounded memory
            yield from zip(ids[s:s + 64], mapping.get_many(ids[s:s + 64]))
    elif isinstance(mapping, Mapping):
        yield from mapping.items()
    else:
        yield from mapping


def write_features(mapping: Mapping[str, RegionFeatures] | Iterable[tuple[str, RegionFeatures]],
                   path: str | os.PathLike, format: str = "auto", *, overwrite: bool = False) -> Path:
    """Write records to a store and return its path.

    ``format``: ``npz`` (a folder of ``<id>.npz``), ``tsv``, ``hdf5`` (group per id), ``lmdb`` or ``auto``
    (from the suffix: .tsv, .h5/.hdf5, .lmdb, else an npz folder). ``mapping`` may be any mapping
    (a ``FeatureStore`` too) or an iterable of ``(id, record)`` pairs; it is streamed, never copied
    whole. The store is written beside the target and renamed into place, so readers never see half
    a store; an existing store is replaced only with ``overwrite=True``.
    """
    path = Path(path)
    fmt = format_for_path(path) if format == "auto" else normalise_format(format)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"'{path}' already exists: pass overwrite=True (--overwrite) to replace it.")
    if path.exists() and not looks_like_store(path):
        raise InvalidInputError(f"'{path}' exists and is not a feature store; refusing to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove(tmp)
    writer = open_writer(fmt, tmp)
    try:
        for image_id, rec in _items(mapping):
            writer.add(str(image_id), rec)
        writer.close()
    except BaseException:
        writer.close()
        _remove(tmp)
        raise
    replace_dir(tmp, path)
    return path


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
