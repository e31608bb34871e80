"""Index folders: a manifest (format version, engine, model id, dimension, count, checksum) and atomic writes.

An index is saved into a temporary sibling folder first and renamed into place, so a crash while
saving never leaves a half-written index where a good one used to be.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import CorruptIndexError, IndexMismatchError, IndexNotFoundError

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
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    params: dict[str, Any] = field(default_factory=dict)  # engine-specific settings
    created: float = field(default_factory=time.time)

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


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` (old contents removed), on error it is dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Keep anything in the old folder that the new index does not own (e.g. resume state of a
    # collection being built), but replace the index files themselves.
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.time_ns()}")
        for child in path.iterdir():
            if not (tmp / child.name).exists():
                shutil.move(str(child), str(tmp / child.name))
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_manifest(folder: Path, manifest: Manifest, files: list[str]) -> None:
    """Checksum ``files`` (relative to ``folder``) and write the manifest last."""
    manifest.checksums = {name: sha256_file(folder / name) for name in files}
    (folder / MANIFEST_NAME).write_text(manifest.to_json())


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
            f = folder / name
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
