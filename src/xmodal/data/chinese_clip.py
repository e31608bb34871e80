"""MUGE and Chinese-CLIP datasets: a texts jsonl that lists each text's images, plus a base64 image TSV.

Two published field layouts share one shape:

| layout | jsonl line | released by |
| --- | --- | --- |
| ``muge`` | ``{"query_id": 8428, "query_text": "...", "item_ids": [1076345, 517602]}`` | MUGE ECommerce-IR (Tianchi) |
| ``cnclip`` | ``{"text_id": 8428, "text": "...", "image_ids": [1076345, 517602]}`` | Chinese-CLIP (MUGE, Flickr30k-CN, COCO-CN) |

Images: ``${split}_imgs.tsv``, one ``image_id<TAB>base64`` per line (standard or URL-safe alphabet:
Chinese-CLIP's README encodes with the standard one, its loaders decode the URL-safe one).

The reader keeps what the official scorers need to accept predictions later: the layout's field names
and whether the ground truth writes ids as JSON integers or strings (``extra["layout"]``), every image
of every text (``extra["caption_images"]``; a text may have several), and the queries by their original
id (``extra["queries"]``: id -> (text, [image ids as str])).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import DatasetFormatError, InvalidInputError
from .types import Caption, ImageTextDataset


@dataclass(frozen=True)
class JsonlLayout:
    """Field names and id types of a texts jsonl, so predictions can be written back in the same convention."""

    name: str
    query_key: str
    text_key: str
    items_key: str
    query_ids_int: bool = True
    item_ids_int: bool = True

    def query_id(self, value: Any) -> Any:
        """A query id as the ground truth writes it (ints stay ints, strings stay strings)."""
        return _typed(value, self.query_ids_int)

    def item_id(self, value: Any) -> Any:
        """An image id (a TSV key, always a string in xmodal) as the ground truth writes it."""
        return _typed(value, self.item_ids_int)


def _typed(value: Any, as_int: bool) -> Any:
    if not as_int:
        return str(value)
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"id '{value}' is not an integer, but the ground truth writes integer ids.") from e


LAYOUTS = {
    "muge": ("query_id", "query_text", "item_ids"),
    "cnclip": ("text_id", "text", "image_ids"),
}


def read_b64_tsv(path: str | Path) -> dict[str, bytes]:
    """``image_id<TAB>base64`` per line -> {image_id: image bytes}; either base64 alphabet is accepted."""
    tsv = Path(path)
    if not tsv.is_file():
        raise DatasetFormatError(f"image TSV not found: '{tsv}'.")
    images: dict[str, bytes] = {}
    with open(tsv, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 2:
                raise DatasetFormatError(f"{tsv}:{n}: expected 'image_id<TAB>base64', got {len(parts)} fields.")
            key, b64 = parts[0].strip(), parts[1].strip()
            if key in images:
                raise DatasetFormatError(f"{tsv}:{n}: image id '{key}' appears twice.")
            try:  # URL-safe '-'/'_' become '+'/'/', then strict decoding rejects anything else
                images[key] = base64.b64decode(b64.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError) as e:
                raise DatasetFormatError(f"{tsv}:{n}: image '{key}' is not valid base64.") from e
    return images


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of a jsonl file, blank lines skipped; bad JSON is one error naming file:line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(f"{path}:{n}: not valid JSON ({e.msg}).") from e


def detect_layout(path: str | Path) -> str:
    """``muge`` or ``cnclip`` from the field names of the first record of a texts jsonl."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"texts file not found: '{path}'.")
    for n, rec in json_lines(path):
        for name, (qkey, tkey, _) in LAYOUTS.items():
            if isinstance(rec, dict) and qkey in rec and tkey in rec:
                return name
        fields = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise DatasetFormatError(f"{path}:{n}: needs MUGE fields (query_id, query_text, item_ids) or Chinese-CLIP "
                                 f"fields (text_id, text, image_ids); got {fields}.")
    raise DatasetFormatError(f"{path}: no records.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_texts_and_tsv(texts: str | Path, images_tsv: str | Path, layout: str | None = None, name: str | None = None,
                       split: str = "valid") -> ImageTextDataset:
    """A MUGE or Chinese-CLIP split: texts jsonl (layout auto-detected when ``layout`` is None) + base64 TSV.

    Each text becomes one caption of its first image (the training view); all its images are positives
    in evaluation (``extra["caption_images"]``), as in the official scorers.
    """
    layout = layout or detect_layout(texts)
    if layout not in LAYOUTS:
        raise DatasetFormatError(f"unknown texts layout '{layout}'; expected one of {sorted(LAYOUTS)}.")
    qkey, tkey, ikey = LAYOUTS[layout]
    images = read_b64_tsv(images_tsv)
    qpath = Path(texts)
    if not qpath.is_file():
        raise DatasetFormatError(f"texts file not found: '{qpath}'.")
    captions: list[Caption] = []
    caption_images: list[list[str]] = []
    queries: dict[Any, tuple[str, list[str]]] = {}
    qtypes: set[bool] = set()
    itypes: set[bool] = set()
    with open(qpath, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                qid, text, raw_items = rec[qkey], rec[tkey], rec[ikey]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DatasetFormatError(f"{qpath}:{n}: needs JSON with {qkey}, {tkey}, {ikey} ({e}).") from e
            if not isinstance(qid, (int, str)) or isinstance(qid, bool) or not isinstance(raw_items, list) \
                    or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in raw_items):
                raise DatasetFormatError(f"{qpath}:{n}: {qkey} must be an integer or string and {ikey} a list of them.")
            if not isinstance(text, str) or not text.strip():
                raise DatasetFormatError(f"{qpath}:{n}: {qkey} {qid} has no {tkey}.")
            if qid in queries:
                raise DatasetFormatError(f"{qpath}:{n}: {qkey} {qid} appears twice.")
            items = [str(i) for i in raw_items]
            unknown = [i for i in items if i not in images]
            if unknown or not items:
                raise DatasetFormatError(f"{qpath}:{n}: {qkey} {qid} refers to unknown or no images {unknown[:3]}.")
            qtypes.add(_is_int(qid))
            itypes.update(_is_int(i) for i in raw_items)
            queries[qid] = (text, items)
            caption_images.append(list(dict.fromkeys(items)))
            captions.append(Caption(text, items[0], lang="zh", caption_id=str(qid)))
    if not captions:
        raise DatasetFormatError(f"{qpath}: no records.")
    for what, types in ((qkey, qtypes), (ikey, itypes)):
        if len(types) > 1:  # predictions could not follow one convention
            raise DatasetFormatError(f"{qpath}: {what} mixes integers and strings; use one type for all ids.")
    spec = JsonlLayout(layout, qkey, tkey, ikey, query_ids_int=qtypes == {True}, item_ids_int=itypes == {True})
    return ImageTextDataset(images, captions, name=name or layout, split=split,
                            extra={"queries": queries, "caption_images": caption_images, "layout": spec})


def read_chinese_clip(texts: str | Path, images_tsv: str | Path, name: str = "cnclip",
                      split: str = "valid") -> ImageTextDataset:
    """Chinese-CLIP: ``{"text_id", "text", "image_ids"}`` jsonl + ``image_id<TAB>base64`` TSV."""
    return read_texts_and_tsv(texts, images_tsv, layout="cnclip", name=name, split=split)


def open_jsonl_split(path: str | Path, images: str | Path | None = None, split: str = "valid",
                     layout: str | None = None) -> ImageTextDataset:
    """``path`` is a texts jsonl (then ``images`` is its TSV) or a dataset folder in Chinese-CLIP's layout,
    ``DIR/${split}_texts.jsonl`` + ``DIR/${split}_imgs.tsv`` (MUGE's ``${split}_queries.jsonl`` also found),
    so one spec serves every split (``--split train``, ``--eval-split valid``)."""
    path = Path(path)
    what = "Chinese-CLIP" if layout == "cnclip" else "MUGE / Chinese-CLIP"
    if path.is_dir():
        texts = next((path / f"{split}_{stem}.jsonl" for stem in ("texts", "queries")
                      if (path / f"{split}_{stem}.jsonl").is_file()), None)
        if texts is None:
            raise DatasetFormatError(f"{path}: no {split}_texts.jsonl (or {split}_queries.jsonl) for split '{split}'.")
        tsv = Path(images) if images is not None else path / f"{split}_imgs.tsv"
        return read_texts_and_tsv(texts, tsv, layout=layout, name=path.name, split=split)
    if images is None:
        raise InvalidInputError(f"{what} needs --images pointing at the image_id<TAB>base64 TSV (e.g. valid_imgs.tsv), "
                                "or a dataset folder with ${split}_texts.jsonl and ${split}_imgs.tsv.")
    return read_texts_and_tsv(path, images, layout=layout, name=layout or "muge", split=split)
