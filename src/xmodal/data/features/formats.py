"""Format detection, the npz-folder reader/writer, and dispatch to the TSV, HDF5 and LMDB modules.

A reader lists ids cheaply on open and reads one record per ``read(id)`` (thread-safe; file handles
are reopened after a fork, so a store can go to DataLoader workers). A writer ``add(id, record)``s
one record at a time, knows the ids already present (``existing``) to resume, and ``close()`` s.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetFormatError, InvalidInputError
from ...io import atomic_write
from .hdf5 import HDF5_SUFFIXES, Hdf5Reader, Hdf5Writer
from .lmdbstore import LmdbReader, LmdbWriter
from .records import RegionFeatures, as_record, check_id, load_npz_record, npz_bytes
from .tsv import TsvReader, TsvWriter

FORMATS = ("npz", "tsv", "hdf5", "lmdb")
_ALIASES = {"h5": "hdf5", "hdf": "hdf5", "npz-folder": "npz", "mdb": "lmdb"}


def normalise_format(fmt: str) -> str:
    f = _ALIASES.get(fmt.lower(), fmt.lower())
    if f not in FORMATS:
        raise InvalidInputError(f"unknown feature format '{fmt}': use one of {', '.join(FORMATS)} (or auto).")
    return f


def detect_format(path: Path) -> str:
    """npz folder, TSV, HDF5 or LMDB from the path (suffix, folder contents, magic bytes)."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"feature store not found: '{path}'.")
    if path.is_dir():
        if (path / "data.mdb").exists():
            return "lmdb"
        if next(_npz_files(path), None) is not None:
            return "npz"
        raise DatasetFormatError(f"'{path}' is a folder with neither <id>.npz files nor an LMDB data.mdb.")
    suffix = path.suffix.lower()
    if suffix == ".tsv" or path.name.lower().endswith((".tsv.txt", ".tsv.0")):
        return "tsv"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in (".lmdb", ".mdb"):
        return "lmdb"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if b"\t" in head:
        return "tsv"
    raise DatasetFormatError(f"cannot tell the feature format of '{path}': pass format= one of {', '.join(FORMATS)}.")


def _npz_files(folder: Path):
    for p in folder.rglob("*.npz"):
        rel = p.relative_to(folder).parts
        if p.is_file() and not any(part.startswith(".") for part in rel):
            yield p


# ------------------------------------------------------------------------------------------------ npz
class NpzReader:
    """A folder of ``<id>.npz`` (ids may contain ``/``: sub-folders); read on access, no shared handle."""

    format = "npz"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.skipped: list[tuple[str, str]] = []
        self.dim = None
        self._ids = sorted(p.relative_to(self.path).with_suffix("").as_posix() for p in _npz_files(self.path))

    def ids(self) -> list[str]:
        return list(self._ids)

    def where(self, image_id: str) -> str:
        return f"{image_id}.npz"

    def read(self, image_id: str) -> RegionFeatures:
        return load_npz_record(self.path / f"{image_id}.npz", where=str(self.path / f"{image_id}.npz"))

    def close(self) -> None:
        pass


class NpzWriter:
    """One file per record, each written atomically (temp file + rename): a crash never leaves half a file."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.existing = set(NpzReader(self.path).ids()) if append else set()

    def add(self, image_id: str, record: RegionFeatures) -> None:
        check_id(image_id)
        data = npz_bytes(as_record(record, image_id))
        target = self.path / f"{image_id}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data, durable=False)  # many small rewritable files: no fsync per record
        self.existing.add(image_id)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- dispatch
def open_reader(fmt: str, path: Path, *, keep_records: bool = False, select: set[str] | None = None):
    if fmt in ("tsv", "hdf5") and not Path(path).is_file():
        raise InvalidInputError(f"a {fmt} feature store is a file; '{path}' is not a file.")
    if fmt == "tsv":
        return TsvReader(path, keep_records=keep_records, select=select)
    if fmt == "npz":
        if not Path(path).is_dir():
            raise InvalidInputError(f"an npz store is a folder of <id>.npz files; '{path}' is not a folder.")
        return NpzReader(path)
    if fmt == "hdf5":
        return Hdf5Reader(path)
    if fmt == "lmdb":
        return LmdbReader(path, readahead=keep_records)
    raise InvalidInputError(f"unknown feature format '{fmt}'.")  # pragma: no cover - normalised before


def open_writer(fmt: str, path: Path, append: bool = False):
    return {"npz": NpzWriter, "tsv": TsvWriter, "hdf5": Hdf5Writer, "lmdb": LmdbWriter}[fmt](Path(path), append=append)


def looks_like_store(path: Path) -> bool:
    """Whether an existing path is a feature store xmodal may replace (never an arbitrary folder)."""
    if path.is_file():
        return True
    if (path / "data.mdb").exists():
        return all(p.name in ("data.mdb", "lock.mdb") for p in path.iterdir())
    return all(p.is_dir() or p.suffix == ".npz" or p.name.startswith(".") for p in path.rglob("*"))
