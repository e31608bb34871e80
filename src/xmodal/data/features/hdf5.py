"""HDF5 region features (h5py): a group per image id, or flat datasets indexed by row."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetFormatError, InvalidInputError
from .records import (BOX_KEYS, HEIGHT_KEYS, LABEL_KEYS, NUM_KEYS, REGION_KEYS, WIDTH_KEYS, RegionFeatures,
                      as_record, check_id, record_from_arrays)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is in the [data] extra
        raise InvalidInputError("reading HDF5 features needs h5py: pip install 'xmodal[data]'.") from e
    return h5py


def _str_ids(values: np.ndarray) -> list[str]:
    out = []
    for v in values.reshape(-1):
        if isinstance(v, bytes):
            out.append(v.decode("utf-8"))
        elif isinstance(v, (np.integer, int)):
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def _first(group: Any, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in group), None)


class Hdf5Reader:
    """Two layouts: a group per image id (``regions``, ``boxes``, ``labels`` datasets; ``image_w``/``image_h``
    attributes), or flat datasets indexed by row (``image_id (N,)``, ``features (N, r, d)``, ``boxes (N, r, 4)``,
    optional ``num_boxes``, ``image_w``/``image_h``, ``labels``). h5py handles are guarded by a lock."""

    format = "hdf5"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.skipped: list[tuple[str, str]] = []
        self.dim: int | None = None
        self._lock = threading.Lock()
        self._file = None
        self._pid = 0
        with self._lock:
            f = self._handle()
            id_key = _first(f, ("image_id", "image_ids", "ids"))
            if id_key is not None and isinstance(f[id_key], _h5py().Dataset):
                self._init_flat(f, id_key)
            else:
                self._init_groups(f)

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = _h5py().File(self.path, "r")
            except OSError as e:
                raise DatasetFormatError(f"'{self.path}' is not a readable HDF5 file: {e}") from e
            self._pid = os.getpid()
        return self._file

    def _init_flat(self, f, id_key: str) -> None:
        self.layout = "flat"
        ids = _str_ids(f[id_key][...])
        n = len(ids)
        keys = {name: _first(f, ks) for name, ks in (("features", REGION_KEYS), ("boxes", BOX_KEYS),
                                                     ("num_boxes", NUM_KEYS), ("image_w", WIDTH_KEYS),
                                                     ("image_h", HEIGHT_KEYS), ("labels", LABEL_KEYS))}
        if keys["features"] is None or keys["boxes"] is None:
            raise DatasetFormatError(f"'{self.path}' has '{id_key}' but no features/boxes datasets "
                                     f"(found {sorted(f.keys())}).")
        feats, boxes = f[keys["features"]], f[keys["boxes"]]
        if feats.ndim != 3 or feats.shape[0] != n:
            raise DatasetFormatError(f"'{self.path}': '{keys['features']}' should be (N={n}, r, d), is {feats.shape}.")
        r = feats.shape[1]
        if boxes.shape != (n, r, 4):
            raise DatasetFormatError(f"'{self.path}': '{keys['boxes']}' should be ({n}, {r}, 4), is {boxes.shape}.")
        for name in ("num_boxes", "image_w", "image_h"):
            if keys[name] is not None and f[keys[name]].shape not in ((n,), (n, 1)):
                raise DatasetFormatError(f"'{self.path}': '{keys[name]}' should be ({n},), is {f[keys[name]].shape}.")
        if keys["labels"] is not None and f[keys["labels"]].shape != (n, r):
            raise DatasetFormatError(f"'{self.path}': '{keys['labels']}' should be ({n}, {r}), is {f[keys['labels']].shape}.")
        self._keys, self.dim = keys, int(feats.shape[2])
        self._small = {k: f[keys[k]][...].reshape(-1) for k in ("num_boxes", "image_w", "image_h") if keys[k]}
        self._rows: dict[str, int] = {}
        nb = self._small.get("num_boxes")
        for i, image_id in enumerate(ids):
            where = f"{self.path.name}[{i}]"
            if image_id in self._rows:
                self.skipped.append((where, f"duplicate image id '{image_id}' (first at row {self._rows[image_id]})"))
            elif nb is not None and not (0 <= nb[i] <= r):
                self.skipped.append((where, f"num_boxes {nb[i]} is outside 0..{r}"))
            else:
                self._rows[image_id] = i
        self._ids = list(self._rows)

    def _init_groups(self, f) -> None:
        self.layout = "groups"
        h5py = _h5py()
        found: list[str] = []

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and _first(obj, REGION_KEYS) is not None:
                found.append(name)

        f.visititems(visit)
        if not found and len(f.keys()):
            raise DatasetFormatError(
                f"'{self.path}' holds neither a group per image (with a 'regions' dataset) nor flat 'image_id' + "
                f"'features' datasets (found {sorted(f.keys())[:10]}).")
        self._ids = sorted(found)
        if found:
            ds = f[found[0]][_first(f[found[0]], REGION_KEYS)]
            self.dim = int(ds.shape[-1]) if ds.ndim == 2 else None

    def ids(self) -> list[str]:
        return list(self._ids)

    def where(self, image_id: str) -> str:
        if self.layout == "flat":
            return f"{self.path.name}[{self._rows.get(image_id)}]"
        return f"{self.path.name}:/{image_id}"

    def _flat_row(self, f, i: int, values: dict[str, np.ndarray] | None = None) -> RegionFeatures:
        k = self._keys
        n = int(self._small["num_boxes"][i]) if "num_boxes" in self._small else None
        get = (lambda name: values[name]) if values is not None else (lambda name: f[k[name]][i])
        arrays = {"regions": get("features")[:n], "boxes": get("boxes")[:n]}
        if k["labels"]:
            arrays["labels"] = get("labels")[:n]
        for name in ("image_w", "image_h"):
            if name in self._small:
                arrays[name] = self._small[name][i]
        return record_from_arrays(arrays)

    def read(self, image_id: str) -> RegionFeatures:
        try:
            with self._lock:
                f = self._handle()
                if self.layout == "flat":
                    return self._flat_row(f, self._rows[image_id])
                g = f[image_id]
                arrays = {k: g[k][...] for k in g.keys() if isinstance(g[k], _h5py().Dataset)}
                arrays.update({k: v for k, v in g.attrs.items() if k in WIDTH_KEYS + HEIGHT_KEYS})
            return record_from_arrays(arrays)
        except (DatasetFormatError, OSError, KeyError, ValueError) as e:
            raise DatasetFormatError(f"'{self.path}' record '{image_id}' ({self.where(image_id)}) is unreadable: {e}") from e

    def read_flat_chunk(self, rows: list[int]) -> list[RegionFeatures]:
        """Records of consecutive rows with one read per dataset (fast in-memory loading of flat files)."""
        with self._lock:
            f = self._handle()
            lo, hi = rows[0], rows[-1] + 1
            block = {name: f[self._keys[name]][lo:hi] for name in ("features", "boxes", "labels") if self._keys[name]}
        return [self._flat_row(None, i, {k: v[i - lo] for k, v in block.items()}) for i in rows]

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_file=None, _pid=0, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class Hdf5Writer:
    """The group-per-id layout; ``append=True`` continues an existing file of that layout."""

    def __init__(self, path: Path, append: bool = False) -> None:
        h5py = _h5py()
        self.path = Path(path)
        self.existing: set[str] = set()
        if append and self.path.exists():
            reader = Hdf5Reader(self.path)
            if reader.layout != "groups":
                reader.close()
                raise InvalidInputError(f"'{self.path}' has the flat layout; xmodal appends only to group-per-id files.")
            self.existing = set(reader.ids())
            reader.close()
        try:
            self._f = h5py.File(self.path, "a" if append else "w")
        except OSError as e:
            raise InvalidInputError(f"cannot open '{self.path}' for writing: {e} (close stores reading it first).") from e
        self._f.attrs["xmodal_format"] = "region-features/groups/v1"

    def add(self, image_id: str, record: RegionFeatures) -> None:
        check_id(image_id)
        rec = as_record(record, image_id)
        if image_id in self._f:
            del self._f[image_id]
        try:
            g = self._f.create_group(image_id)
        except ValueError as e:
            raise InvalidInputError(f"cannot store image id '{image_id}' in HDF5: {e}") from e
        g.create_dataset("regions", data=rec.regions)
        g.create_dataset("boxes", data=rec.boxes)
        if rec.labels is not None:
            g.create_dataset("labels", data=rec.labels)
        for name in ("image_w", "image_h"):
            if getattr(rec, name) is not None:
                g.attrs[name] = getattr(rec, name)
        self.existing.add(image_id)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()
