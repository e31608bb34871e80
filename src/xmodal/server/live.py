"""Live updates of a served index: items added and deleted over HTTP, safe against ``kill -9``.

Every change is first appended to a write-ahead log in the index folder (``live-updates.wal``: one line per
change -- CRC32, then JSON with the item id, its vector and metadata -- written and fsynced before the
request is answered), then applied to the in-memory index, so searches see it at once. When the server
starts, the log is replayed onto the saved index; on start, at shutdown and every ``compact_every`` changes the
index is saved (``index.save``: atomic, manifest last) and the log emptied. Replaying is idempotent (an add
replaces an item of the same id, a delete of a missing id does nothing), so a crash between the save and
emptying the log loses nothing and duplicates nothing; a line cut off by a crash was never acknowledged
and is dropped.

The folder lock (``xmodal.io.folder_lock``) is taken at the first change and held until shutdown: an
``xmodal index`` run on the same folder meanwhile refuses instead of overwriting live changes.

``LockedIndex`` puts one lock around every call into the index (searches, adds, removes, metadata):
FAISS indexes are not safe to change while being searched.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidInputError, XmodalError
from ..indexes.manifest import companion_files
from ..io import fault_point, fsync_dir

WAL_NAME = "live-updates.wal"


class LockedIndex:
    """An index whose every method call holds ``lock``; attributes and everything else are the index's own."""

    def __init__(self, index: Any, lock: threading.RLock) -> None:
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_lock", lock)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._index, name)
        if not callable(value):
            return value
        lock = self._lock

        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return value(*args, **kwargs)

        return locked

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def __contains__(self, item_id: Any) -> bool:
        with self._lock:
            return item_id in self._index

    @property
    def wrapped(self) -> Any:
        return self._index


def _encode_record(record: Mapping[str, Any]) -> bytes:
    body = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def _decode_record(line: bytes) -> dict[str, Any] | None:
    """The record of one complete log line, or None for a torn/corrupt one."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("op") in ("add", "delete") else None


def read_wal(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, bytes of the good prefix): reading stops at the first torn or corrupt line."""
    records, good = [], 0
    if not path.is_file():
        return records, good
    with open(path, "rb") as f:
        for line in f:
            record = _decode_record(line)
            if record is None:
                break
            records.append(record)
            good += len(line)
    return records, good


class LiveIndex:
    """The changeable side of one served collection: WAL, locked index, adds and deletes."""

    def __init__(self, collection: Any, compact_every: int = 1000) -> None:
        self.collection = collection
        self.folder = Path(collection.folder)
        self.wal_path = self.folder / WAL_NAME
        self.lock = threading.RLock()
        self.compact_every = compact_every
        self._pending = 0  # changes in the log since the last save
        self._held = ExitStack()  # the folder lock, once we write
        self._locked = False
        self._wal: Any = None
        self.index = LockedIndex(collection.index, self.lock)
        collection.index = self.index

    # ------------------------------------------------------------------ start and stop
    def recover(self) -> int:
        """Replay the log left by an earlier run onto the loaded index and save; returns the changes replayed."""
        records, good = read_wal(self.wal_path)
        if not self.wal_path.exists() or self.wal_path.stat().st_size == 0:
            return 0
        self._lock_folder()
        with self.lock:
            for r in records:
                self._apply(r)
            if self.wal_path.stat().st_size != good:  # a line cut off by a crash: never acknowledged
                with open(self.wal_path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            self._pending = len(records)
            if records:
                self.compact()
        return len(records)

    def close(self) -> None:
        try:
            with self.lock:
                if self._pending:
                    self.compact()
                if self._wal is not None:
                    self._wal.close()
                    self._wal = None
        finally:
            self._held.close()
            self._locked = False

    # ------------------------------------------------------------------ changes
    def add(self, item_id: str, vector: np.ndarray, metadata: Mapping[str, Any]) -> None:
        vec = np.asarray(vector, dtype="<f4").reshape(-1)
        record = {"op": "add", "id": item_id, "vector": base64.b64encode(vec.tobytes()).decode("ascii"),
                  "metadata": dict(metadata)}
        self._log_and_apply(record)

    def delete(self, item_id: str) -> None:
        self._log_and_apply({"op": "delete", "id": item_id})

    def _log_and_apply(self, record: dict[str, Any]) -> None:
        line = _encode_record(record)
        with self.lock:
            self._lock_folder()
            if self._wal is None:
                new = not self.wal_path.exists()
                self._wal = open(self.wal_path, "ab")
                if new:
                    fsync_dir(self.folder)
            self._wal.write(line)
            self._wal.flush()
            fault_point("live:logged-unsynced")
            os.fsync(self._wal.fileno())  # durable before the caller is answered
            fault_point("live:logged")
            self._apply(record)
            self._pending += 1
            if self._pending >= self.compact_every:
                self.compact()

    def _apply(self, record: Mapping[str, Any]) -> None:
        index = self.index.wrapped
        item_id = str(record["id"])
        present = item_id in index
        lexical = getattr(self.collection, "lexical", None)  # BM25 texts (hybrid search) follow the same changes
        if record["op"] == "delete":
            if present:
                index.remove([item_id])
            if lexical is not None:
                lexical.remove([item_id])
            return
        vec = np.frombuffer(base64.b64decode(record["vector"]), dtype="<f4").astype(np.float32)
        if present:  # replayed add, or an item re-added with new content
            index.remove([item_id])
        index.add([item_id], vec[None, :], metadata=[dict(record.get("metadata") or {})])
        if lexical is not None:
            from ..indexes.lexical import item_text

            lexical.add([item_id], [item_text(record.get("metadata") or {}, lexical.fields)])

    def compact(self) -> None:
        """Save the index (atomically, manifest last), then empty the log."""
        with self.lock:
            self._lock_folder()
            with companion_files(self._companions()):
                self.index.wrapped.save(self.folder)
            fault_point("live:saved")
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            with open(self.wal_path, "wb") as f:
                os.fsync(f.fileno())
            self._pending = 0

    def _companions(self) -> dict[str, bytes]:
        """The collection's companion files for the save: as they are, with the changed BM25 texts."""
        from ..indexes.manifest import read_manifest

        m = read_manifest(self.folder, verify=False)
        files = {name: m.path(self.folder, name).read_bytes() for name in m.companions}
        lexical = getattr(self.collection, "lexical", None)
        if lexical is not None:
            from ..indexes.lexical import LEXICAL_FILE

            files[LEXICAL_FILE] = lexical.to_bytes()
        return files

    def _lock_folder(self) -> None:
        if self._locked:
            return
        from ..io import folder_lock

        try:
            self._held.enter_context(folder_lock(self.folder, "another xmodal process"))
            self._locked = True
        except XmodalError as e:
            raise InvalidInputError(f"cannot change this index now: {e}") from None
