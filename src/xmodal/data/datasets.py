"""Readers for the field's dataset formats; each returns an ``ImageTextDataset`` for one split.

Formats: Karpathy-split JSON (Flickr30k/COCO), official COCO captions JSON (``coco.py``), MUGE/Chinese-CLIP
jsonl + base64 image TSV (``chinese_clip.py``),
Multi30k-style parallel caption files, CSV/TSV ``image,caption``, a folder of images with sidecar
``.txt`` captions, and webdataset tar shards. Malformed input raises ``DatasetFormatError`` naming
the file and the line or record.
"""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import DatasetFormatError, InvalidInputError
from .chinese_clip import open_jsonl_split, read_chinese_clip, read_texts_and_tsv
from .coco import read_coco_captions
from .images import find_images
from .types import Caption, ImageTextDataset


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DatasetFormatError(f"dataset file not found: '{path}'.") from e
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8.") from e


def read_karpathy(path: str | Path, images_dir: str | Path | None = None, split: str = "test",
                  name: str | None = None) -> ImageTextDataset:
    """Karpathy-split JSON: ``{"images": [{"filename", "split", "sentences": [{"raw"}], "filepath"?}], "dataset"?}``.

    ``split`` may be ``train``, ``val``, ``test``, ``restval`` or ``train+restval`` (COCO's full training set).
    Image ids are file names (with ``filepath`` prefix for COCO); sources are paths under ``images_dir``.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{path}: expected an object with an 'images' list (Karpathy split format).")
    splits = set(split.split("+"))
    root = Path(images_dir) if images_dir is not None else path.parent
    images: dict[str, Any] = {}
    captions: list[Caption] = []
    for n, rec in enumerate(data["images"]):
        if not isinstance(rec, dict) or "filename" not in rec or "sentences" not in rec:
            raise DatasetFormatError(f"{path}: images[{n}] lacks 'filename' or 'sentences'.")
        if rec.get("split", "test") not in splits:
            continue
        # Validate every field here, before anything is encoded: a bad record found after an hour of
        # encoding wastes the hour.
        if not isinstance(rec["filename"], str) or not rec["filename"].strip():
            raise DatasetFormatError(f"{path}: images[{n}].filename must be a file name (text); got {rec['filename']!r}.")
        if rec.get("filepath") is not None and not isinstance(rec["filepath"], str):
            raise DatasetFormatError(f"{path}: images[{n}].filepath must be text; got {rec['filepath']!r}.")
        if not isinstance(rec["sentences"], list) or not rec["sentences"]:
            raise DatasetFormatError(f"{path}: images[{n}].sentences must be a non-empty list of "
                                     f"{{\"raw\": caption}} objects; got {rec['sentences']!r:.60}.")
        rel = f"{rec['filepath']}/{rec['filename']}" if rec.get("filepath") else rec["filename"]
        if rel in images:
            raise DatasetFormatError(f"{path}: images[{n}] repeats image '{rel}'.")
        images[rel] = root / rel
        for m, s in enumerate(rec["sentences"]):
            text = s.get("raw") if isinstance(s, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DatasetFormatError(f"{path}: images[{n}].sentences[{m}] has no 'raw' text.")
            captions.append(Caption(text.strip(), rel, s.get("lang", "en"), str(s.get("sentid", f"{rel}#{m}"))))
    if not images:
        raise DatasetFormatError(f"{path}: no images in split '{split}'.")
    extra = {k: v for k, v in data.items() if k not in ("images",)}
    return ImageTextDataset(images, captions, name=name or data.get("dataset", path.stem), split=split, extra=extra)


def read_csv(path: str | Path, images_dir: str | Path | None = None, image_col: str = "image",
             caption_col: str = "caption", name: str | None = None, split: str = "all") -> ImageTextDataset:
    """CSV (``,``) or TSV (``.tsv``, tab) with a header naming the image and caption columns."""
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(f"dataset file not found: '{path}'.")
    root = Path(images_dir) if images_dir is not None else path.parent
    delim = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    images: dict[str, Any] = {}
    captions: list[Caption] = []
    # utf-8-sig: spreadsheet programs start CSVs with a byte-order mark, which would glue onto the first header
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delim)
        try:
            fields = reader.fieldnames
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{path}: not UTF-8 text ({e.reason}); save the file as UTF-8.") from e
        if fields is None or image_col not in fields or caption_col not in fields:
            raise DatasetFormatError(f"{path}:1: header must name columns '{image_col}' and '{caption_col}'; got {fields}.")
        for row in _rows(reader, path):
            line = reader.line_num
            img, cap = (row.get(image_col) or "").strip(), (row.get(caption_col) or "").strip()
            if not img or not cap or None in row:
                raise DatasetFormatError(f"{path}:{line}: needs a non-empty image and caption (got {dict(row)}).")
            images.setdefault(img, root / img)
            captions.append(Caption(cap, img))
    return ImageTextDataset(images, captions, name=name or path.stem, split=split)


def _rows(reader: Any, path: Path) -> Any:
    """The reader's rows, turning a decoding error into a DatasetFormatError naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{path}:{reader.line_num + 1}: not UTF-8 text ({e.reason}); save the file as UTF-8.") from e
        yield row


def read_folder(folder: str | Path, name: str | None = None, split: str = "all") -> ImageTextDataset:
    """Images with sidecar captions: ``cat.jpg`` + ``cat.txt`` (one caption per non-empty line)."""
    folder = Path(folder)
    images: dict[str, Any] = {}
    captions: list[Caption] = []
    for p in find_images(folder):
        side = p.with_suffix(".txt")
        if not side.exists():
            continue
        rel = p.relative_to(folder).as_posix()
        lines = [ln.strip() for ln in side.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise DatasetFormatError(f"{side}: caption file is empty.")
        images[rel] = p
        captions += [Caption(t, rel) for t in lines]
    if not images:
        raise DatasetFormatError(f"{folder}: no image has a sidecar .txt caption file.")
    return ImageTextDataset(images, captions, name=name or folder.name, split=split)


def read_muge(queries: str | Path, images_tsv: str | Path, name: str = "muge", split: str = "valid") -> ImageTextDataset:
    """MUGE / Chinese-CLIP: texts jsonl + ``image_id<TAB>base64`` TSV; the field layout is detected from the first
    record: MUGE's ``query_id``/``query_text``/``item_ids`` or Chinese-CLIP's ``text_id``/``text``/``image_ids``.

    All queries with their full item lists are in ``extra["queries"]`` (query_id -> (text, [item ids])); see
    ``xmodal.data.chinese_clip`` for the rest of ``extra``.
    """
    return read_texts_and_tsv(queries, images_tsv, layout=None, name=name, split=split)


def read_multi30k(caption_files: dict[str, str | Path], image_list: str | Path, images_dir: str | Path,
                  name: str = "multi30k", split: str = "test") -> ImageTextDataset:
    """Multi30k-style parallel files: one image file name per line, and per language one caption per line."""
    names = [ln.strip() for ln in Path(image_list).read_text(encoding="utf-8").splitlines() if ln.strip()]
    images = {n: Path(images_dir) / n for n in names}
    captions: list[Caption] = []
    for lang, f in caption_files.items():
        lines = Path(f).read_text(encoding="utf-8").splitlines()
        lines = lines[:-1] if lines and not lines[-1].strip() and len(lines) == len(names) + 1 else lines
        if len(lines) != len(names):
            raise DatasetFormatError(f"{f}: {len(lines)} captions for {len(names)} images in {image_list}; files must be parallel.")
        for n, (img, text) in enumerate(zip(names, lines), start=1):
            if not text.strip():
                raise DatasetFormatError(f"{f}:{n}: empty caption.")
            captions.append(Caption(text.strip(), img, lang=lang))
    return ImageTextDataset(images, captions, name=name, split=split)


def read_webdataset(shards: str | Sequence[str], name: str = "webdataset", split: str = "all") -> ImageTextDataset:
    """webdataset tar shards: members ``KEY.jpg|png|webp`` + ``KEY.txt`` (caption) or ``KEY.json`` (``caption``/``captions``).

    Shards are streamed (``xmodal.data.shards``, keys by webdataset's rules); images of uncompressed
    shards stay on disk as ``TarMember`` references until they are opened.
    """
    from .shards import image_ext, iter_samples

    paths = sorted(glob.glob(shards)) if isinstance(shards, str) else list(shards)
    if not paths:
        raise DatasetFormatError(f"no shards match '{shards}'.")
    images: dict[str, Any] = {}
    captions: list[Caption] = []
    for shard in paths:
        for sample in iter_samples(shard, lazy_images=True):
            key = sample["__key__"]
            img_ext = image_ext(sample)
            if img_ext is None:
                raise DatasetFormatError(f"{shard}: sample '{key}' has no image member.")
            texts = _sample_captions(shard, key, sample)
            if not texts:
                raise DatasetFormatError(f"{shard}: sample '{key}' has no caption (.txt or .json).")
            if key in images:
                raise DatasetFormatError(f"{shard}: sample '{key}' appears twice (members of a sample must be adjacent).")
            images[key] = sample[img_ext]
            captions += [Caption(t.strip(), key) for t in texts]
    return ImageTextDataset(images, captions, name=name, split=split)


def _sample_captions(shard: str, key: str, sample: dict[str, Any]) -> list[str]:
    from .shards import find_field

    txt, js = find_field(sample, ("txt",)), find_field(sample, ("json",))
    try:
        if txt is not None:
            return [t for t in sample[txt].decode("utf-8").splitlines() if t.strip()]
        if js is not None:
            meta = json.loads(sample[js])
            texts = (meta.get("captions") or ([meta["caption"]] if "caption" in meta else [])) if isinstance(meta, dict) else []
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise DatasetFormatError(f"{shard}: sample '{key}': 'caption'/'captions' must be text or a list of texts.")
            return [t for t in texts if t.strip()]
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{shard}: sample '{key}': caption is not UTF-8 text ({e.reason}).") from e
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{shard}: sample '{key}': .json member is not valid JSON ({e.msg}).") from e
    return []


READERS = {"karpathy": read_karpathy, "csv": read_csv, "tsv": read_csv, "folder": read_folder,
           "muge": read_muge, "multi30k": read_multi30k, "wds": read_webdataset, "webdataset": read_webdataset,
           "cnclip": read_chinese_clip, "coco": read_coco_captions}


def load_dataset(spec: str, images: str | Path | None = None, split: str | None = None) -> ImageTextDataset:
    """Open a dataset from ``FORMAT:PATH``: ``karpathy:dataset_flickr30k.json`` (+ images dir), ``csv:pairs.csv``,
    ``folder:DIR``, ``muge:valid_texts.jsonl`` (+ images = the base64 TSV; MUGE or Chinese-CLIP fields, detected),
    ``cnclip:valid_texts.jsonl`` (+ images = the base64 TSV), ``cnclip:DIR``/``muge:DIR`` (Chinese-CLIP's
    ``DIR/${split}_texts.jsonl`` + ``DIR/${split}_imgs.tsv``), ``wds:shards-*.tar``,
    ``multi30k:IMAGE_LIST,LANG=CAPTIONS[,LANG=CAPTIONS...]`` (+ images dir), e.g.
    ``multi30k:test_2016_flickr.txt,en=test_2016_flickr.en,de=test_2016_flickr.de``,
    ``coco:captions_val2014.json[,captions_train2014.json][,karpathy=dataset_coco.json]`` (+ images dir)."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in READERS:
        raise InvalidInputError(f"dataset must be FORMAT:PATH with FORMAT one of {sorted(READERS)}; got '{spec}'.")
    if fmt == "karpathy":
        return read_karpathy(path, images, split=split or "test")
    if fmt in ("csv", "tsv"):
        return read_csv(path, images)
    if fmt == "folder":
        return read_folder(path)
    if fmt in ("muge", "cnclip"):  # a texts jsonl (+ --images TSV), or a folder of ${split}_texts.jsonl/_imgs.tsv
        return open_jsonl_split(path, images, split=split or "valid", layout=None if fmt == "muge" else "cnclip")
    if fmt == "coco":
        files = [p for p in path.split(",") if p and not p.startswith("karpathy=")]
        karpathy = next((p.partition("=")[2] for p in path.split(",") if p.startswith("karpathy=")), None)
        if not files or karpathy == "":
            raise InvalidInputError("COCO needs coco:CAPTIONS_JSON[,CAPTIONS_JSON...][,karpathy=dataset_coco.json], "
                                    f"e.g. coco:captions_val2014.json,karpathy=dataset_coco.json; got '{spec}'.")
        return read_coco_captions(files, images, karpathy=karpathy, split=split)
    if fmt == "multi30k":
        image_list, *pairs = path.split(",")
        langs = dict(p.partition("=")[::2] for p in pairs)
        if not image_list or not langs or any(not k or not v for k, v in langs.items()):
            raise InvalidInputError("Multi30k needs multi30k:IMAGE_LIST,LANG=CAPTIONS[,LANG=CAPTIONS...], e.g. "
                                    f"multi30k:test_2016_flickr.txt,en=test_2016_flickr.en; got '{spec}'.")
        if images is None:
            raise InvalidInputError("Multi30k needs --images pointing at the folder of the listed image files.")
        missing = [f for f in (image_list, *langs.values()) if not Path(f).is_file()]
        if missing:
            raise DatasetFormatError(f"Multi30k file(s) not found: {missing}.")
        return read_multi30k(langs, image_list, images, split=split or "test")
    return read_webdataset(path)
