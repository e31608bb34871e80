"""Index folders: a manifest (format version, engine, model id, dimension, count, checksums, file map).

An index is saved with ``atomic_folder`` (``xmodal.io``): in place, new files under fresh versioned
names, the manifest last. The manifest's ``files`` maps each logical file name (``ids.json``) to the
stored one (``ids.v<token>.json``); older indexes without the map store files under their logical names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import CorruptIndexError, IndexMismatchError, IndexNotFoundError
from ..io import STAGING_PREFIX
from ..io import atomic_folder as _atomic_folder

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    engine: str
    dimension: int
    count: int
    metric: str = "ip"
    model_id: str | None = None
    format_version: int = FORMAT_VERSION
    checksums: dict[str, str] = field(default_factory=dict)  # logical file name -> sha256
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


def write_manifest(folder: Path, manifest: Manifest, files: list[str]) -> None:
    """Checksum ``files`` (relative to the staging ``folder``) and write the manifest there, last.

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
    (folder / MANIFEST_NAME).write_text(manifest.to_json())


def _previous_manifest(folder: Path) -> Manifest | None:
    try:
        return Manifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    folder = Path(folder)
    mpath = folder / MANIFEST_NAME
    if not folder.exists():
        raise IndexNotFoundError(f"no index at '{folder}': the folder does not exist. Build one with `xmodal index`.")
    if not mpath.exists():
        raise IndexNotFoundError(
            f"'{folder}' is not an xmodal index: it has no {MANIFEST_NAME}. Build one with `xmodal index`."
        )
    try:
        manifest = Manifest.from_dict(json.loads(mpath.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise CorruptIndexError(f"the manifest of '{folder}' cannot be parsed ({e}).") from e
    if manifest.format_version > FORMAT_VERSION:
        raise IndexMismatchError(
            f"index '{folder}' has format version {manifest.format_version}; this xmodal reads up to "
            f"{FORMAT_VERSION}. Upgrade xmodal."
        )
    if verify:
        for name, digest in manifest.checksums.items():
            f = manifest.path(folder, name)
            if not f.exists():
                raise CorruptIndexError(f"index '{folder}' is missing its file '{name}'. Rebuild the index.")
            if sha256_file(f) != digest:
                raise CorruptIndexError(
                    f"index '{folder}': file '{name}' does not match the manifest checksum (damaged or "
                    "changed by hand). Rebuild the index."
                )
    return manifest


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
