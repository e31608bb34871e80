"""LMDB region features: key = image id (utf-8), value = the record as npz bytes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ...errors import DatasetFormatError, InvalidInputError
from .records import RegionFeatures, as_record, check_id, load_npz_record, npz_bytes

LMDB_META_KEY = b"__xmodal__"


def _lmdb():
    try:
        import lmdb
    except ImportError as e:  # pragma: no cover - lmdb is in the [data] extra
        raise InvalidInputError("LMDB features need the lmdb package: pip install 'xmodal[data]'.") from e
    return lmdb


_ENVS: dict[tuple[str, int], list] = {}  # (real path, pid) -> [env, users]: LMDB allows one env per file per process
_ENVS_LOCK = threading.Lock()


def _acquire_env(path: Path, readahead: bool):
    key = (os.path.realpath(path), os.getpid())
    with _ENVS_LOCK:
        for stale in [k for k in _ENVS if k[0] == key[0] and k[1] != key[1]]:
            # inherited through fork(): py-lmdb refuses a second open of the same files in one process, and
            # a read-only, lock-free env's close() only unmaps and closes this process's copies.
            _ENVS.pop(stale)[0].close()
        if key not in _ENVS:
            lmdb = _lmdb()
            try:
                env = lmdb.open(str(path), readonly=True, lock=False, subdir=path.is_dir(), readahead=readahead,
                                max_readers=512, max_dbs=0)
            except lmdb.Error as e:
                raise DatasetFormatError(f"'{path}' is not a readable LMDB database: {e}") from e
            _ENVS[key] = [env, 0]
        _ENVS[key][1] += 1
        return _ENVS[key][0]


def _release_env(path: Path, pid: int) -> None:
    key = (os.path.realpath(path), pid)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _ENVS[key]
                if pid == os.getpid():
                    entry[0].close()


class LmdbReader:
    """Key = image id (utf-8), value = the record as npz bytes; opened read-only without locking."""

    format = "lmdb"

    def __init__(self, path: Path, readahead: bool = False) -> None:
        self.path = Path(path)
        self.skipped: list[tuple[str, str]] = []
        self.dim = None
        self._readahead = readahead
        self._env = None
        self._pid = 0
        env = self._handle()
        ids = []
        with env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key == LMDB_META_KEY:
                    continue
                try:
                    ids.append(key.decode("utf-8"))
                except UnicodeDecodeError:
                    self.skipped.append((f"{self.path.name}:key {key[:40]!r}", "key is not a utf-8 image id"))
        self._ids = ids

    def _handle(self):
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = _acquire_env(self.path, self._readahead), os.getpid()
        return self._env

    def ids(self) -> list[str]:
        return list(self._ids)

    def where(self, image_id: str) -> str:
        return f"{self.path.name}:{image_id}"

    def read(self, image_id: str) -> RegionFeatures:
        with self._handle().begin() as txn:
            value = txn.get(image_id.encode("utf-8"))
        if value is None:
            raise DatasetFormatError(f"'{self.path}' lost key '{image_id}' after it was opened.")
        return load_npz_record(value, where=self.where(image_id))

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            _release_env(self.path, self._pid)
        self._env = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_env=None, _pid=0)
        return state


class LmdbWriter:
    """Records as npz bytes in batched transactions; the map grows when full (no huge sparse file up front)."""

    BATCH = 64

    def __init__(self, path: Path, append: bool = False) -> None:
        lmdb = _lmdb()
        self.path = Path(path)
        self._map_size = 64 << 20
        if append and self.path.exists():
            self._map_size = max(self._map_size, 2 * _dir_size(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = lmdb.open(str(self.path), map_size=self._map_size, subdir=True, max_dbs=0)
        except lmdb.Error as e:
            raise InvalidInputError(f"cannot open '{self.path}' for writing: {e} (close stores reading it first).") from e
        self.existing: set[str] = set()
        if append:
            with self._env.begin() as txn:
                self.existing = {k.decode("utf-8", "replace") for k in txn.cursor().iternext(keys=True, values=False)
                                 if k != LMDB_META_KEY}
        self._pending: list[tuple[bytes, bytes]] = [(LMDB_META_KEY, b'{"format": "region-features/npz/v1"}')]

    def add(self, image_id: str, record: RegionFeatures) -> None:
        check_id(image_id)
        self._pending.append((image_id.encode("utf-8"), npz_bytes(as_record(record, image_id))))
        self.existing.add(image_id)
        if len(self._pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        lmdb = _lmdb()
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
                self._pending = []
            except lmdb.MapFullError:
                need = sum(len(v) for _, v in self._pending)
                self._map_size = max(2 * self._map_size, self._map_size + 2 * need)
                self._env.set_mapsize(self._map_size)

    def close(self) -> None:
        if self._env is not None:
            self.flush()
            self._env.sync()
            self._env.close()
            self._env = None


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
