"""webdataset tar shards, read in one place for every caller (dataset reader, distributed encoding).

Samples are grouped and keyed by the ``webdataset`` library's own rules (``group_by_keys`` with
``base_plus_ext``: the key is the member path up to the first dot of its file name), so ``a.b.jpg`` and
``a.b.txt`` form sample ``a`` here exactly as in a webdataset training pipeline. A leading ``./`` (tars
made with ``tar -C dir .``) is not part of the key. Shards are streamed member by member; with
``lazy_images=True`` image members of an uncompressed tar are not read at all but returned as
``TarMember`` references (offset + size) that ``open_image`` reads when needed, so listing a dataset of
many shards costs memory for its captions only.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import DatasetFormatError
from .images import IMAGE_SUFFIXES

IMAGE_EXTS = {s.lstrip(".") for s in IMAGE_SUFFIXES}


@dataclass(frozen=True)
class TarMember:
    """One member of an uncompressed tar, read on demand (``read_bytes``), like a ``Path``."""

    shard: str
    name: str
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"shard '{self.shard}' is shorter than its member '{self.name}' (changed since it was read?)")
        return data

    def __str__(self) -> str:
        return f"{self.shard}:{self.name}"


def find_field(sample: dict[str, Any], exts: set[str] | tuple[str, ...]) -> str | None:
    """The sample field whose (last) extension is one of ``exts``: ``jpg``, or ``b.jpg`` for member ``a.b.jpg``."""
    fields = [e for e in sample if not e.startswith("__")]
    return next((e for e in fields if e in exts), None) or next(
        (e for e in fields if e.rpartition(".")[2] in exts), None)


def image_ext(sample: dict[str, Any]) -> str | None:
    """The field of a sample's image member, or None."""
    return find_field(sample, IMAGE_EXTS)


def _members(shard: str, lazy_images: bool) -> Iterator[dict[str, Any]]:
    """``{"fname", "data", "__url__"}`` per regular member, in tar order (webdataset's member records)."""
    with open(shard, "rb") as f:
        lazy = lazy_images and _plain_tar(f)  # offsets inside a compressed tar are not file offsets
        f.seek(0)
        with tarfile.open(fileobj=f, mode="r|*") as stream:  # streaming: one member at a time
            for info in stream:
                if not info.isreg():
                    continue
                if lazy and info.name.rpartition(".")[2].lower() in IMAGE_EXTS:
                    data: Any = TarMember(shard, info.name, info.offset_data, info.size)
                else:
                    data = stream.extractfile(info).read()
                yield {"fname": info.name, "data": data, "__url__": shard}
                stream.members = []  # do not keep every TarInfo of a big shard


def _plain_tar(f: Any) -> bool:
    """True for an uncompressed tar (old-style headers included): member offsets are file offsets."""
    f.seek(0)
    try:
        with tarfile.open(fileobj=f, mode="r:"):
            return True
    except tarfile.TarError:
        return False


def _key(fname: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    while fname.startswith("./"):
        fname = fname[2:]
    return base_plus_ext(fname)


def iter_samples(shard: str | Path, lazy_images: bool = False) -> Iterator[dict[str, Any]]:
    """Samples of one shard: ``{"__key__", "__url__", EXT: bytes or TarMember, ...}`` (lower-case extensions).

    Raises ``DatasetFormatError`` when the shard is missing, not a tar, or cut off.
    """
    from webdataset.tariterators import group_by_keys

    shard = str(shard)
    try:
        yield from group_by_keys(_members(shard, lazy_images), keys=_key)
    except FileNotFoundError as e:
        raise DatasetFormatError(f"shard not found: '{shard}'.") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetFormatError(f"{shard}: not a readable tar shard ({e}).") from e
    except ValueError as e:  # group_by_keys: the same member name twice in one sample
        raise DatasetFormatError(f"{shard}: {e.args[0] if e.args else e}") from e
