"""Jobs over feature stores: split a big TSV into npz files, describe a store, convert, and extract.

``extract_features`` runs a *user-supplied* region extractor (anything with the ``RegionExtractor``
call signature, e.g. a detector + RoI pooling) over images and writes a store. xmodal ships no
detector weights; see docs/features.md for a torchvision Faster R-CNN example.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from tqdm import tqdm

from ...errors import DatasetFormatError, InvalidInputError
from ..images import find_images, open_image
from .formats import looks_like_store, normalise_format, open_writer
from .records import RegionFeatures, as_record, check_id
from .store import FeatureStore, format_for_path, write_features
from .tsv import scan


# ---------------------------------------------------------------------------------------------- split
@dataclass
class SplitReport:
    """What ``split_tsv`` did: records written, ids already there (resume), malformed rows skipped."""

    out: Path
    written: int = 0
    existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"'{self.out}': wrote {self.written} npz files, {self.existing} already there, "
                f"skipped {len(self.skipped)} malformed rows.")


def split_tsv(src: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True) -> SplitReport:
    """One ``<id>.npz`` per row of a bottom-up-attention TSV, in one streaming pass.

    Resumable: ids whose npz already exists are not decoded again (files are written atomically,
    so an interrupted run leaves no half file). Malformed rows are reported with their line numbers.
    """
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise InvalidInputError(f"TSV not found: '{src}'.")
    writer = open_writer("npz", out, append=True)
    done = set(writer.existing)
    report = SplitReport(out)
    bar = tqdm(total=src.stat().st_size, unit="B", unit_scale=True, desc=f"split {src.name}", disable=not progress)
    _, rows = scan(src, decode_if=lambda i: i not in done, on_bytes=bar.update)
    try:
        for row in rows:
            if row.reason is not None:
                report.skipped.append((f"{src.name}:{row.lineno}", row.reason))
            elif row.record is None:
                report.existing += 1
            else:
                try:
                    writer.add(row.image_id, row.record)
                except InvalidInputError as e:  # an id that cannot be a file name
                    report.skipped.append((f"{src.name}:{row.lineno}", str(e)))
                    continue
                report.written += 1
    finally:
        bar.close()
    return report


# ----------------------------------------------------------------------------------------------- info
def describe_features(store: FeatureStore | str | os.PathLike, format: str = "auto", *, limit: int | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Statistics of a store: count, feature dim, regions per image, box geometry, labels, skipped records.

    Reads every record (or the first ``limit``) lazily; records that fail to read are counted as skipped.
    """
    own = not isinstance(store, FeatureStore)
    st = FeatureStore.open(store, format, cache_size=0) if own else store
    try:
        ids = list(st)[:limit] if limit else list(st)
        counts, widths, heights = [], [], []
        lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
        degenerate = outside = with_size = with_labels = nonfinite = read = 0
        bar = tqdm(total=len(ids), unit="img", desc="reading", disable=not progress)
        for s in range(0, len(ids), 64):
            chunk = ids[s:s + 64]
            try:
                recs = st.get_many(chunk)
            except DatasetFormatError:  # read one by one to find the bad ones
                recs = []
                for k in chunk:
                    try:
                        recs.append(st[k])
                    except DatasetFormatError:
                        pass  # the store adds it to st.skipped
            for r in recs:
                read += 1
                counts.append(r.num_regions)
                b = r.boxes
                nonfinite += int(np.count_nonzero(~np.isfinite(r.regions)))
                with_labels += r.labels is not None
                if r.num_regions:
                    widths.append(b[:, 2] - b[:, 0])
                    heights.append(b[:, 3] - b[:, 1])
                    lo = np.minimum(lo, b[:, :2].min(axis=0))
                    hi = np.maximum(hi, b[:, 2:].max(axis=0))
                    degenerate += int(np.count_nonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])))
                if r.image_w and r.image_h:
                    with_size += 1
                    outside += int(np.count_nonzero((b[:, 0] < -1) | (b[:, 1] < -1) | (b[:, 2] > r.image_w + 1)
                                                    | (b[:, 3] > r.image_h + 1)))
            bar.update(len(chunk))
        bar.close()
        w = np.concatenate(widths) if widths else np.zeros(0)
        h = np.concatenate(heights) if heights else np.zeros(0)
        try:
            dim = st.feature_dim
        except DatasetFormatError:
            dim = None
        skipped = list(st.skipped)
        return {
            "path": str(st.path) if st.path else None, "format": st.format, "count": len(st), "read": read,
            "feature_dim": dim,
            "regions": {"min": int(min(counts, default=0)), "mean": float(np.mean(counts)) if counts else 0.0,
                        "max": int(max(counts, default=0)), "total": int(sum(counts))},
            "boxes": {"mean_w": float(w.mean()) if w.size else None, "mean_h": float(h.mean()) if h.size else None,
                      "min_xy": lo.tolist() if np.isfinite(lo).all() else None,
                      "max_xy": hi.tolist() if np.isfinite(hi).all() else None,
                      "degenerate": degenerate, "outside_image": outside},
            "with_image_size": with_size, "with_labels": with_labels, "nonfinite_values": nonfinite,
            "skipped": skipped,
        }
    finally:
        if own:
            st.close()


def convert_features(src: str | os.PathLike, dst: str | os.PathLike, to: str = "auto", *, overwrite: bool = False,
                     progress: bool = True) -> tuple[Path, list[tuple[str, str]]]:
    """Copy a store into another format; returns the new path and the records left out as malformed."""
    dst = Path(dst)
    fmt = format_for_path(dst) if to == "auto" else normalise_format(to)
    with FeatureStore.open(src) as st:
        bar = tqdm(total=len(st), unit="img", desc=f"convert to {fmt}", disable=not progress)

        def good() -> Iterable[tuple[str, RegionFeatures]]:
            ids = list(st)
            for s in range(0, len(ids), 64):
                chunk = ids[s:s + 64]
                try:
                    pairs = list(zip(chunk, st.get_many(chunk)))
                except DatasetFormatError:
                    pairs = []
                    for k in chunk:
                        try:
                            pairs.append((k, st[k]))
                        except DatasetFormatError:
                            pass  # recorded in st.skipped
                yield from pairs
                bar.update(len(chunk))

        try:
            path = write_features(good(), dst, fmt, overwrite=overwrite)
        finally:
            bar.close()
        return path, list(st.skipped)


# -------------------------------------------------------------------------------------------- extract
@runtime_checkable
class RegionExtractor(Protocol):
    """Anything that turns a batch of RGB images into one ``RegionFeatures`` per image.

    Boxes are in pixels of the image it was given. ``image_w``/``image_h`` may be left ``None``:
    ``extract_features`` fills them from the image.
    """

    def __call__(self, images: list[Any]) -> list[RegionFeatures]: ...


@dataclass
class ExtractReport:
    """What ``extract_features`` did: records written, ids already in the store (resume), unreadable images."""

    out: Path
    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"'{self.out}': extracted {self.written} images, {self.existing} already there, "
                f"{len(self.failed)} unreadable.")


def _image_ids(image_paths: Any) -> dict[str, Path]:
    if isinstance(image_paths, Mapping):
        return {check_id(str(k)): Path(v) for k, v in image_paths.items()}
    if isinstance(image_paths, (str, os.PathLike)) and Path(image_paths).is_dir():
        root = Path(image_paths)
        return {p.relative_to(root).as_posix(): p for p in find_images(root)}
    if isinstance(image_paths, (str, os.PathLike)):
        raise InvalidInputError(f"'{image_paths}' is not a folder; pass a folder, a list of paths or {{id: path}}.")
    out: dict[str, Path] = {}
    for p in image_paths:
        p = Path(p)
        if p.name in out and out[p.name] != p:
            raise InvalidInputError(f"two images are named '{p.name}' ({out[p.name]} and {p}): pass {{id: path}} "
                                    "or a folder (ids are then paths relative to it).")
        out[p.name] = p
    return out


def extract_features(extractor: RegionExtractor, image_paths: str | os.PathLike | Sequence[Any] | Mapping[str, Any],
                     out: str | os.PathLike, format: str = "npz", batch_size: int = 8, *,
                     progress: bool = True) -> ExtractReport:
    """Run ``extractor`` over images and write a feature store (npz folder, TSV, HDF5 or LMDB).

    ``image_paths``: a folder (ids = paths relative to it), a list of paths (ids = file names) or
    ``{id: path}``. Unreadable images are reported in ``failed`` and skipped; ids already in ``out``
    are not extracted again, so an interrupted run resumes where it stopped.
    """
    if not callable(extractor):
        raise InvalidInputError(f"the extractor must be callable (images -> list[RegionFeatures]), got {extractor!r}.")
    fmt = normalise_format(format)
    out = Path(out)
    if out.exists() and not looks_like_store(out):
        raise InvalidInputError(f"'{out}' exists and is not a feature store.")
    todo = _image_ids(image_paths)
    writer = open_writer(fmt, out, append=True)
    report = ExtractReport(out)
    pending = [(k, p) for k, p in todo.items() if k not in writer.existing]
    report.existing = len(todo) - len(pending)
    bar = tqdm(total=len(pending), unit="img", desc="extract", disable=not progress)
    try:
        for s in range(0, len(pending), max(1, batch_size)):
            ids, images = [], []
            for k, p in pending[s:s + batch_size]:
                try:
                    images.append(open_image(p))
                    ids.append(k)
                except InvalidInputError as e:
                    report.failed.append((str(p), str(e)))
            if images:
                recs = extractor(images)
                if not isinstance(recs, (list, tuple)) or len(recs) != len(images):
                    raise InvalidInputError(f"the extractor returned {type(recs).__name__} of "
                                            f"{len(recs) if hasattr(recs, '__len__') else '?'} records for "
                                            f"{len(images)} images; it must return one RegionFeatures per image.")
                for k, img, rec in zip(ids, images, recs):
                    rec = as_record(rec, k)
                    if rec.image_w is None or rec.image_h is None:
                        rec = RegionFeatures(rec.regions, rec.boxes, rec.image_w or img.width,
                                             rec.image_h or img.height, rec.labels)
                    writer.add(k, rec)
                    report.written += 1
                writer.flush()
            bar.update(len(pending[s:s + batch_size]))
    finally:
        bar.close()
        writer.close()
    return report
