"""COCO captions annotations (``captions_train2014.json``, ``captions_val2017.json``, ...), read directly.

The official layout::

    {"info": {...}, "licenses": [...],
     "images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", "height": 360, "width": 640, ...}],
     "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet on a small moped."}]}

Image ids in xmodal are the COCO ids as strings (``"391895"``); caption ids are the annotation ids. With
Karpathy's split file (``dataset_coco.json``, whose ``images[].cocoid`` name COCO images) one split is
selected (``test``, ``val``, ``train``, ``restval``, ``train+restval``); the captions still come from the
official annotations. Karpathy's splits mix train2014 and val2014 images, so give both annotation files
for its training split. ``write_coco_captions`` writes any dataset back in the official layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import DatasetFormatError
from ..io import atomic_write
from .types import Caption, ImageTextDataset

_TAG = re.compile(r"(train|val|test)(20\d\d)")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DatasetFormatError(f"COCO file not found: '{path}'.") from e
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e


def _image_folder(ann: Path, images_dir: Path | None) -> Path:
    """``images_dir/val2014`` when the annotation file is ``captions_val2014.json`` and that folder exists."""
    root = images_dir if images_dir is not None else ann.parent
    m = _TAG.search(ann.stem)
    if m and (root / m.group(0)).is_dir():
        return root / m.group(0)
    return root


def _karpathy_ids(path: Path, split: str) -> list[str]:
    data = _load(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{path}: expected Karpathy's split file (an object with an 'images' list).")
    wanted = set(split.split("+"))
    ids = []
    for n, rec in enumerate(data["images"]):
        if not isinstance(rec, dict) or "cocoid" not in rec or "split" not in rec:
            raise DatasetFormatError(f"{path}: images[{n}] lacks 'cocoid' or 'split' (is this dataset_coco.json?).")
        if rec["split"] in wanted:
            ids.append(str(rec["cocoid"]))
    if not ids:
        raise DatasetFormatError(f"{path}: no images in split '{split}'.")
    return ids


def read_coco_captions(annotations: str | Path | Sequence[str | Path], images_dir: str | Path | None = None,
                       karpathy: str | Path | None = None, split: str | None = None,
                       name: str = "coco") -> ImageTextDataset:
    """One or more official COCO captions files (+ optional Karpathy split file) -> ``ImageTextDataset``.

    Image sources are ``images_dir/<train2014|val2014|...>/file_name`` when that sub-folder exists, else
    ``images_dir/file_name`` (``images_dir`` defaults to the annotation file's folder). Images without a
    caption are left out (they cannot be evaluated). Without ``karpathy`` every image is kept and the split
    is named after the files (e.g. ``val2014``).
    """
    files = [Path(annotations)] if isinstance(annotations, (str, Path)) else [Path(a) for a in annotations]
    if not files:
        raise DatasetFormatError("no COCO annotation file given.")
    images_root = Path(images_dir) if images_dir is not None else None
    records: dict[str, dict] = {}
    sources: dict[str, Path] = {}
    caps: dict[str, list[Caption]] = {}
    for path in files:
        data = _load(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise DatasetFormatError(f"{path}: expected COCO captions JSON with 'images' and 'annotations' lists.")
        folder = _image_folder(path, images_root)
        for n, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise DatasetFormatError(f"{path}: images[{n}] lacks 'id' or 'file_name'.")
            key = str(img["id"])
            if key in records:
                raise DatasetFormatError(f"{path}: images[{n}] repeats image id {img['id']}.")
            records[key], sources[key] = img, folder / img["file_name"]
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise DatasetFormatError(f"{path}: annotations[{n}] lacks 'image_id' or 'caption'.")
            key, text = str(ann["image_id"]), ann["caption"]
            if key not in records:
                raise DatasetFormatError(f"{path}: annotations[{n}] refers to unknown image id {ann['image_id']}.")
            if not isinstance(text, str) or not text.strip():
                raise DatasetFormatError(f"{path}: annotations[{n}] has an empty caption.")
            cid = str(ann["id"]) if "id" in ann else f"{key}#{len(caps.get(key, []))}"
            caps.setdefault(key, []).append(Caption(text.strip(), key, "en", cid))
    if karpathy is not None:
        split = split or "test"
        order = _karpathy_ids(Path(karpathy), split)
        missing = [i for i in order if i not in caps]
        if missing:
            raise DatasetFormatError(
                f"{karpathy}: {len(missing)} images of split '{split}' have no captions in {[str(f) for f in files]} "
                f"(e.g. COCO id {missing[0]}); Karpathy's train/restval splits need captions_train2014.json and "
                "captions_val2014.json together.")
    else:
        tags = [m.group(0) if (m := _TAG.search(f.stem)) else f.stem for f in files]
        split = split or "+".join(tags)
        order = [k for k in records if k in caps]
    if not order:
        raise DatasetFormatError(f"{files[0]}: no image has a caption.")
    images = {k: sources[k] for k in order}
    captions = [c for k in order for c in caps[k]]
    return ImageTextDataset(images, captions, name=name, split=split,
                            extra={"coco_images": {k: records[k] for k in order}})


def write_coco_captions(dataset: ImageTextDataset, path: str | Path) -> Path:
    """Write ``dataset`` in the official COCO captions layout (``images`` + ``annotations``).

    Image and caption ids read from COCO files are kept; other datasets get integer ids in order, with the
    image id as ``file_name``.
    """
    coco = dataset.extra.get("coco_images", {})
    image_num: dict[str, Any] = {}
    images = []
    for n, key in enumerate(dataset.images):
        rec = dict(coco[key]) if key in coco else {"id": n + 1, "file_name": key}
        image_num[key] = rec["id"]
        images.append(rec)
    annotations = []
    for n, c in enumerate(dataset.captions):
        cid: Any = c.caption_id
        cid = int(cid) if cid is not None and cid.isdigit() else n + 1
        annotations.append({"image_id": image_num[c.image_id], "id": cid, "caption": c.text})
    obj = {"info": {"description": f"{dataset.name} / {dataset.split}, written by xmodal"}, "licenses": [],
           "images": images, "annotations": annotations}
    return atomic_write(path, json.dumps(obj, ensure_ascii=False))  # a reader never sees half a file
