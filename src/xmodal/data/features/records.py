"""``RegionFeatures`` (one image's detector regions), ``MissingFeaturesError`` and the npz record codec.

The npz codec is shared by the per-image npz folder and the LMDB store (whose values are npz bytes):
liberal in the key names it reads, strict (``regions``/``boxes``/``labels``/``image_w``/``image_h``)
in what it writes.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...errors import DatasetFormatError, InvalidInputError, XmodalError

# Key names seen in the wild for each field of a per-image record (first match wins).
REGION_KEYS = ("regions", "features", "x", "feat", "feats", "region_features", "image_features")
BOX_KEYS = ("boxes", "bbox", "bboxes")
LABEL_KEYS = ("labels", "objects_id", "classes", "class_ids", "objects")
WIDTH_KEYS = ("image_w", "w", "img_w", "width", "image_width")
HEIGHT_KEYS = ("image_h", "h", "img_h", "height", "image_height")
NUM_KEYS = ("num_boxes", "num_bbox", "num_regions")


@dataclass(eq=False)
class RegionFeatures:
    """One image as a detector sees it: ``r`` regions, each a ``d``-dim feature with its box.

    Attributes:
        regions: ``(r, d)`` float32 region features (e.g. 36 x 2048 from bottom-up attention).
        boxes: ``(r, 4)`` float32 ``x1, y1, x2, y2`` in pixels of the original image.
        image_w / image_h: original image size (to normalise boxes); ``None`` when unknown.
        labels: ``(r,)`` int64 detector class ids, optional.

    Shapes are checked here, so a record that exists is well-formed; a bad one raises
    ``DatasetFormatError``. Records handed out by a ``FeatureStore`` may be shared with its cache:
    copy an array before changing it in place.
    """

    regions: np.ndarray
    boxes: np.ndarray
    image_w: int | None = None
    image_h: int | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        regions = _numeric(self.regions, "regions")
        if regions.ndim != 2:
            raise DatasetFormatError(f"regions must be a 2-D (num_regions, dim) array, got shape {regions.shape}.")
        r = regions.shape[0]
        boxes = _numeric(self.boxes, "boxes")
        if boxes.shape != (r, 4):
            raise DatasetFormatError(f"boxes must have shape ({r}, 4) to match {r} regions, got {boxes.shape}.")
        self.regions = np.ascontiguousarray(regions, dtype=np.float32)
        self.boxes = np.ascontiguousarray(boxes, dtype=np.float32)
        # NaN/inf would flow silently into every similarity of this image (and into training losses)
        for name, arr in (("regions", self.regions), ("boxes", self.boxes)):
            if not np.isfinite(arr).all():
                raise DatasetFormatError(f"{name} contain NaN or infinite values; the feature extractor's output is broken.")
        if self.labels is not None:
            labels = _numeric(self.labels, "labels")
            if labels.shape != (r,):
                raise DatasetFormatError(f"labels must have shape ({r},) to match {r} regions, got {labels.shape}.")
            if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
                raise DatasetFormatError("labels must be integer class ids, got non-integer values.")
            self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.image_w = _size(self.image_w, "image_w")
        self.image_h = _size(self.image_h, "image_h")

    @property
    def num_regions(self) -> int:
        return int(self.regions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.regions.shape[1])

    def equals(self, other: "RegionFeatures") -> bool:
        """Same arrays (exactly), sizes and labels."""
        if not isinstance(other, RegionFeatures):
            return False
        same_labels = (self.labels is None and other.labels is None) or (
            self.labels is not None and other.labels is not None and np.array_equal(self.labels, other.labels))
        return (np.array_equal(self.regions, other.regions) and np.array_equal(self.boxes, other.boxes)
                and self.image_w == other.image_w and self.image_h == other.image_h and same_labels)

    def __repr__(self) -> str:
        size = f"{self.image_w}x{self.image_h}" if self.image_w and self.image_h else "unknown size"
        return (f"RegionFeatures({self.num_regions} regions x {self.dim}-d, {size}"
                f"{', labels' if self.labels is not None else ''})")


class MissingFeaturesError(XmodalError, KeyError):
    """An image id that the feature store does not hold (the message names the id and the store)."""

    def __str__(self) -> str:  # KeyError would repr() the message (quotes, escapes) in the CLI's one line
        return str(self.args[0]) if self.args else ""


def _numeric(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists etc.
        raise DatasetFormatError(f"{name} is not an array: {e}") from e
    if arr.dtype.kind not in "fiub":
        raise DatasetFormatError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return arr


def _size(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        f = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{name} must be an integer number of pixels, got {value!r}.") from e
    if not np.isfinite(f) or f != int(f) or f <= 0:
        raise DatasetFormatError(f"{name} must be a positive integer number of pixels, got {value!r}.")
    return int(f)


def as_record(value: Any, image_id: str = "?") -> RegionFeatures:
    """A ``RegionFeatures`` from a record or a dict of its fields (``regions``, ``boxes``, ...)."""
    if isinstance(value, RegionFeatures):
        return value
    if isinstance(value, Mapping) and "regions" in value:
        try:
            return RegionFeatures(**value)
        except TypeError as e:
            raise InvalidInputError(f"cannot make region features for '{image_id}' from {sorted(value)}: {e}") from e
    raise InvalidInputError(f"the value for image id '{image_id}' is a {type(value).__name__}, not RegionFeatures.")


def check_id(image_id: Any) -> str:
    """An image id that every format can store (also as a relative file path / HDF5 group path)."""
    if not isinstance(image_id, str) or not image_id:
        raise InvalidInputError(f"image ids must be non-empty strings, got {image_id!r}.")
    if any(c in image_id for c in "\t\n\r\x00\\"):
        raise InvalidInputError(f"image id {image_id!r} contains a tab, newline, NUL or backslash.")
    parts = image_id.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(f"image id {image_id!r} must be a relative path without empty, '.' or '..' parts.")
    return image_id


# ----------------------------------------------------------------------------------- npz record codec
def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in data), None)


def _scalar_size(value: Any, name: str) -> int | None:
    """0 means "unknown" in several feature files; a negative size is malformed."""
    v = np.asarray(value)
    if v.size != 1:
        raise DatasetFormatError(f"{name} should be one number, got shape {v.shape}.")
    f = float(v.reshape(()))
    if f == 0:
        return None
    return _size(f, name)


def record_from_arrays(data: Mapping[str, Any]) -> RegionFeatures:
    """Build a record from a dict-like of arrays with any of the common key names.

    ``x`` stored transposed as ``(d, r)`` (as some VQA feature dumps do) is recognised by its box count;
    a ``num_boxes`` smaller than the arrays trims padded rows.
    """
    rk, bk = _first(data, REGION_KEYS), _first(data, BOX_KEYS)
    if rk is None:
        raise DatasetFormatError(f"no region features (looked for {'/'.join(REGION_KEYS)}; found {sorted(data)}).")
    if bk is None:
        raise DatasetFormatError(f"no boxes (looked for {'/'.join(BOX_KEYS)}; found {sorted(data)}).")
    regions, boxes = np.asarray(data[rk]), np.asarray(data[bk])
    if boxes.ndim == 2 and boxes.shape[1] == 4 and regions.ndim == 2 and regions.shape[0] != boxes.shape[0] \
            and regions.shape[1] == boxes.shape[0]:
        regions = regions.T
    lk = _first(data, LABEL_KEYS)
    labels = np.asarray(data[lk]).reshape(-1) if lk is not None else None
    nk = _first(data, NUM_KEYS)
    if nk is not None:
        n = np.asarray(data[nk]).reshape(-1)
        if n.size != 1 or n[0] < 0 or n[0] > min(regions.shape[0], boxes.shape[0]) or n[0] != int(n[0]):
            raise DatasetFormatError(f"{nk}={n.tolist()} does not fit {regions.shape[0]} regions.")
        n = int(n[0])
        regions, boxes = regions[:n], boxes[:n]
        labels = labels[:n] if labels is not None else None
    wk, hk = _first(data, WIDTH_KEYS), _first(data, HEIGHT_KEYS)
    return RegionFeatures(regions=regions, boxes=boxes, labels=labels,
                          image_w=_scalar_size(data[wk], wk) if wk else None,
                          image_h=_scalar_size(data[hk], hk) if hk else None)


_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, DatasetFormatError)


def load_npz_record(source: str | Path | bytes, where: str) -> RegionFeatures:
    """Read one record from an npz file (or its bytes); ``DatasetFormatError`` naming ``where`` if it is bad."""
    try:
        with np.load(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source,
                     allow_pickle=False) as z:
            keys = [k for k in (REGION_KEYS + BOX_KEYS + LABEL_KEYS + WIDTH_KEYS + HEIGHT_KEYS + NUM_KEYS)
                    if k in z.files]
            return record_from_arrays({k: z[k] for k in keys})
    except _NPZ_ERRORS as e:
        raise DatasetFormatError(f"'{where}' is not a readable region-feature npz: {e}") from e


def npz_bytes(rec: RegionFeatures) -> bytes:
    """The strict npz form of a record: ``regions``, ``boxes`` (+ ``labels``, ``image_w``, ``image_h``)."""
    arrays: dict[str, np.ndarray] = {"regions": rec.regions, "boxes": rec.boxes}
    if rec.labels is not None:
        arrays["labels"] = rec.labels
    if rec.image_w is not None:
        arrays["image_w"] = np.int64(rec.image_w)
    if rec.image_h is not None:
        arrays["image_h"] = np.int64(rec.image_h)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
