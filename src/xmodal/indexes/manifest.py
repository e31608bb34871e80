"""Index folders: a manifest (format version, engine, model id, dimension, count, checksums, file map).

An index is saved with ``atomic_folder`` (``xmodal.io``): in place, new files under fresh versioned
names, the manifest last. The manifest's ``files`` maps each logical file name (``ids.json``) to the
stored one (``ids.v<token>.json``); older indexes without the map store files under their logical names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import CorruptIndexError, IndexMismatchError, IndexNotFoundError, InvalidInputError
from ..io import LOCK_NAME, STAGING_PREFIX
from ..io import atomic_folder as _atomic_folder

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1  # written by default
READ_FORMAT_VERSION = 2  # read up to: 2 = a FAISS index with segments (indexes/segments.py)


@dataclass
class Manifest:
    engine: str
    dimension: int
    count: int
    metric: str = "ip"
    model_id: str | None = None
    format_version: int = FORMAT_VERSION
    checksums: dict[str, str] = field(default_factory=dict)  # logical file name -> sha256
    stats: dict[str, list[int]] = field(default_factory=dict)  # logical file name -> [size, mtime_ns] (cheap open check)
    files: dict[str, str] = field(default_factory=dict)  # logical file name -> stored file name (set on commit)
    companions: list[str] = field(default_factory=list)  # files not the engine's own (collection.json), kept across saves
    fingerprint: str | None = None  # of the model's weights (models.fingerprint); None: not recorded
    params: dict[str, Any] = field(default_factory=dict)  # engine-specific settings
    created: float = field(default_factory=time.time)

    def path(self, folder: str | Path, name: str) -> Path:
        """Where the logical file ``name`` of this index version is stored in ``folder``."""
        return Path(folder) / self.files.get(name, name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# A file's mtime is recorded this far in the past (see ``file_stat``): any later write to it gets a
# newer mtime even on filesystems with coarse (1-2 s) timestamps, so an unchanged (size, mtime) proves
# the file is the one that was hashed -- the "racy git" problem, solved by never recording a racy time.
_BACKDATE_NS = 3_000_000_000


def file_stat(path: Path) -> list[int]:
    """``[size, mtime_ns]`` of ``path`` for the cheap open check; a recent mtime is first moved back by 3 s."""
    st = path.stat()
    now = time.time_ns()
    if st.st_mtime_ns > now - _BACKDATE_NS:
        os.utime(path, ns=(st.st_atime_ns, now - _BACKDATE_NS))
        st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def atomic_folder(path: str | Path):  # type: ignore[no-untyped-def]
    """Save an index folder in place, manifest last (see ``xmodal.io.atomic_folder``)."""
    return _atomic_folder(path, commit_name=MANIFEST_NAME)


# Files that ride along with the next index save (see ``companion_files``), and the weight fingerprint.
_companions: ContextVar[dict[str, bytes] | None] = ContextVar("xmodal_index_companions", default=None)
_fingerprint: ContextVar[str | None] = ContextVar("xmodal_index_fingerprint", default=None)


@contextmanager
def companion_files(files: dict[str, bytes], fingerprint: str | None = None) -> Iterator[None]:
    """Index saves inside this block also write ``files`` (e.g. a collection's ``collection.json``) and
    record ``fingerprint``, in the same atomic commit and under the manifest's checksums. Any engine
    that saves through ``write_manifest`` supports it without knowing about it."""
    t1, t2 = _companions.set(dict(files)), _fingerprint.set(fingerprint)
    try:
        yield
    finally:
        _companions.reset(t1)
        _fingerprint.reset(t2)


def write_manifest(folder: Path, manifest: Manifest, files: list[str],
                   kept: Manifest | None = None) -> None:
    """Checksum ``files`` (relative to the staging ``folder``) and write the manifest there, last.

    ``kept``: the previous version (``read_manifest`` of the index folder) whose files listed in
    ``manifest.files`` (logical -> stored name) stay as they are: their checksums and stats are carried
    over, nothing is re-read (an append save writes only its new segment).

    Companion files come from ``companion_files`` or, when none are given, are carried over unchanged
    from the version being replaced (``folder`` is the staging folder inside the index folder), so an
    engine-level save never drops a collection's ``collection.json``; likewise the weight fingerprint.
    """
    files = list(files)
    given = _companions.get()
    previous = _previous_manifest(folder.parent) if folder.name.startswith(STAGING_PREFIX) else None
    if given is not None:
        for name, data in given.items():
            (folder / name).write_bytes(data)
        manifest.companions = sorted(given)
    elif previous is not None:
        for name in previous.companions:
            src = previous.path(folder.parent, name)
            if src.is_file():
                shutil.copyfile(src, folder / name)
                manifest.companions.append(name)
    files += [n for n in manifest.companions if n not in files]
    same_model = previous is not None and previous.model_id == manifest.model_id
    manifest.fingerprint = manifest.fingerprint or _fingerprint.get() or (previous.fingerprint if same_model else None)
    manifest.checksums = {name: sha256_file(folder / name) for name in files}
    manifest.stats = {name: file_stat(folder / name) for name in files}
    if kept is not None:
        for name in manifest.files:
            manifest.checksums[name] = kept.checksums[name]
            if name in kept.stats:
                manifest.stats[name] = kept.stats[name]
    (folder / MANIFEST_NAME).write_text(manifest.to_json())


def write_companion(folder: str | Path, name: str, data: bytes | None) -> None:
    """Add (or with ``data=None`` drop) the companion file ``name`` of the index saved in ``folder``,
    leaving the engine's files as they are: one atomic manifest commit."""
    folder = Path(folder)
    m = read_manifest(folder, verify=False)
    keep = {n: m.files.get(n, n) for n in m.checksums if n != name}
    with atomic_folder(folder) as staging:
        checksums = {n: d for n, d in m.checksums.items() if n != name}
        stats = {n: s for n, s in m.stats.items() if n != name}
        companions = [c for c in m.companions if c != name]
        if data is not None:
            (staging / name).write_bytes(data)
            checksums[name] = hashlib.sha256(data).hexdigest()
            stats[name] = file_stat(staging / name)
            companions.append(name)
        m.checksums, m.stats, m.companions, m.files = checksums, stats, sorted(companions), keep
        (staging / MANIFEST_NAME).write_text(m.to_json())


def check_fingerprint(manifest: Manifest, folder: Path, fingerprint: str | None, allow_mismatch: bool = False) -> None:
    """Refuse a model whose weights differ from those the index was built with (same id is not enough:
    a fine-tuned model keeps its base id, and its vectors live in another space)."""
    if manifest.fingerprint is None or fingerprint is None or fingerprint == manifest.fingerprint or allow_mismatch:
        return
    raise IndexMismatchError(
        f"index '{folder}' was built with other weights of model '{manifest.model_id}' (fingerprint "
        f"{manifest.fingerprint[:19]}, this model {fingerprint[:19]}): its vectors are not comparable. Use the "
        "model it was built with, rebuild the index, or pass --allow-model-mismatch (allow_model_mismatch=True).")


def check_index_target(folder: str | Path) -> None:
    """Refuse to write an index into a folder that is neither absent, empty, nor an xmodal index.

    Our own traces (lock file, resume state, staging folders of an interrupted first run) count as ours.
    Nothing is created or changed here.
    """
    folder = Path(folder)
    if not folder.exists():
        if folder.is_symlink():
            raise InvalidInputError(f"'{folder}' is a symlink to a folder that does not exist; create the target first.")
        return
    if not folder.is_dir():
        raise InvalidInputError(f"'{folder}' is a file, not a folder; give a new or empty folder for the index.")
    names = {p.name for p in folder.iterdir()}
    if MANIFEST_NAME in names:
        try:
            read_manifest(folder, verify=False)
            return
        except CorruptIndexError:
            pass  # someone else's manifest.json: refused below
    elif LOCK_NAME in names:
        return  # a folder an earlier xmodal run created and locked (e.g. an interrupted first build)
    foreign = sorted(n for n in names if not n.startswith(STAGING_PREFIX) and n != ".build")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InvalidInputError(
            f"'{folder}' is not empty and not an xmodal index (it holds {shown}); refusing to write an index "
            "into it, so nothing of yours is overwritten. Give a new or empty folder (or an existing index).")


def _previous_manifest(folder: Path) -> Manifest | None:
    try:
        return Manifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_manifest(folder: str | Path, verify: bool | str = True) -> Manifest:
    """Read (and check) an index folder's manifest.

    ``verify``: ``True``/``"quick"`` (default) checks that every file exists with the size and
    modification time recorded at save -- O(number of files), so opening a large memory-mapped index
    stays cheap; a file whose mtime differs (copied without ``-p``, touched) is hashed, and refused if
    its content changed. ``"full"`` hashes every file (``xmodal verify``); ``False`` checks nothing.
    """
    folder = Path(folder)
    if verify not in (True, False, "quick", "full"):
        raise InvalidInputError(f"verify must be True, False, 'quick' or 'full'; got {verify!r}.")
    mpath = folder / MANIFEST_NAME
    if not folder.exists():
        raise IndexNotFoundError(f"no index at '{folder}': the folder does not exist. Build one with `xmodal index`.")
    if not mpath.exists():
        raise IndexNotFoundError(
            f"'{folder}' is not an xmodal index: it has no {MANIFEST_NAME}. Build one with `xmodal index`."
        )
    try:
        manifest = Manifest.from_dict(json.loads(mpath.read_text()))
    except (ValueError, TypeError, AttributeError) as e:
        raise CorruptIndexError(f"the manifest of '{folder}' cannot be parsed ({e}).") from e
    if manifest.format_version > READ_FORMAT_VERSION:
        raise IndexMismatchError(
            f"index '{folder}' has format version {manifest.format_version}; this xmodal reads up to "
            f"{READ_FORMAT_VERSION}. Upgrade xmodal."
        )
    if verify:
        for name, digest in manifest.checksums.items():
            f = manifest.path(folder, name)
            if not f.exists():
                raise CorruptIndexError(f"index '{folder}' is missing its file '{name}'. Rebuild the index.")
            if verify != "full" and _stat_unchanged(f, manifest.stats.get(name), folder, name):
                continue
            if sha256_file(f) != digest:
                raise CorruptIndexError(
                    f"index '{folder}': file '{name}' does not match the manifest checksum (damaged or "
                    "changed by hand). Rebuild the index."
                )
    return manifest


def _stat_unchanged(f: Path, recorded: list[int] | None, folder: Path, name: str) -> bool:
    """True when ``f`` has the recorded size and mtime (no need to hash it); a size change is damage."""
    if not recorded:
        return False  # an index saved before stats were recorded: hash it
    st = f.stat()
    if st.st_size != recorded[0]:
        raise CorruptIndexError(
            f"index '{folder}': file '{name}' does not match the manifest (it has {st.st_size:,} bytes, the "
            f"manifest records {recorded[0]:,}: damaged, truncated or changed by hand). Rebuild the index.")
    return st.st_mtime_ns == recorded[1]


def check_compatible(
    manifest: Manifest, folder: Path, model_id: str | None = None, dimension: int | None = None
) -> None:
    """Refuse an index built by another model or for another dimension, with a clear message."""
    if dimension is not None and manifest.dimension != dimension:
        raise IndexMismatchError(
            f"index '{folder}' holds {manifest.dimension}-d vectors but the model makes {dimension}-d vectors. "
            f"It was built with model '{manifest.model_id}'; use that model or rebuild the index."
        )
    if model_id is not None and manifest.model_id is not None and manifest.model_id != model_id:
        raise IndexMismatchError(
            f"index '{folder}' was built with model '{manifest.model_id}', not '{model_id}'. "
            "Query it with the same model (vectors of different models are not comparable) or rebuild it."
        )
