"""Chinese-CLIP / MUGE texts jsonl + base64 TSV readers (field layouts of the released files)."""

from __future__ import annotations

import io
import json

import pytest
from jsonl_datasets import write_split
from PIL import Image

from xmodal.data import load_dataset, read_chinese_clip, read_muge
from xmodal.errors import DatasetFormatError, InvalidInputError


def test_chinese_clip_layout(tmp_path):
    """``{"text_id", "text", "image_ids"}`` (Chinese-CLIP's ${split}_texts.jsonl) + ``id<TAB>base64``."""
    texts, tsv, recs = write_split(tmp_path, "cnclip")
    ds = read_chinese_clip(texts, tsv)
    assert len(ds.images) == 12 and len(ds.captions) == 13 and ds.name == "cnclip"
    assert ds.captions[0].caption_id == "500" and ds.captions[0].image_id == "1000"
    assert ds.extra["queries"][599] == ("red or green", ["1000", "1001"])
    assert ds.extra["caption_images"][-1] == ["1000", "1001"]
    lay = ds.extra["layout"]
    assert (lay.query_key, lay.items_key, lay.query_ids_int, lay.item_ids_int) == ("text_id", "image_ids", True, True)
    assert Image.open(io.BytesIO(ds.images["1003"])).getpixel((0, 0)) == (255, 255, 0)


def test_muge_reader_detects_chinese_clip_fields(tmp_path):
    """Regression (issue 21): ``muge:`` refused Chinese-CLIP's own files ("needs ... query_id")."""
    texts, tsv, _ = write_split(tmp_path, "cnclip")
    ds = read_muge(texts, tsv)
    assert ds.extra["layout"].name == "cnclip" and len(ds.captions) == 13
    muge_texts, muge_tsv, _ = write_split(tmp_path / "m", "muge")
    assert load_dataset(f"muge:{muge_texts}", images=muge_tsv).extra["layout"].query_key == "query_id"
    assert load_dataset(f"cnclip:{texts}", images=tsv, split="test").split == "test"
    with pytest.raises(InvalidInputError, match="--images"):
        load_dataset(f"cnclip:{texts}")


def test_string_ids_and_urlsafe_base64(tmp_path):
    texts, tsv, _ = write_split(tmp_path, "cnclip", string_ids=True, urlsafe=True)
    ds = read_chinese_clip(texts, tsv)
    lay = ds.extra["layout"]
    assert not lay.query_ids_int and not lay.item_ids_int and "599" in ds.extra["queries"]
    assert Image.open(io.BytesIO(ds.images["1000"])).size == (30, 30)


@pytest.mark.parametrize("line, match", [
    ({"text_id": 1, "text": "x", "image_ids": [77]}, "unknown or no images"),
    ({"text_id": 1, "text": " ", "image_ids": [1000]}, "has no text"),
    ({"text_id": [1], "text": "x", "image_ids": [1000]}, "integer or string"),
    ({"text_id": 1, "text": "x"}, "needs JSON with text_id, text, image_ids"),
])
def test_broken_lines_name_file_and_line(tmp_path, line, match):
    _, tsv, _ = write_split(tmp_path, "cnclip")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text_id": 0, "text": "ok", "image_ids": [1000]}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DatasetFormatError, match=match) as e:
        read_chinese_clip(bad, tsv)
    assert "bad.jsonl:2" in str(e.value)


def test_mixed_id_types_and_unknown_fields_refused(tmp_path):
    _, tsv, _ = write_split(tmp_path, "cnclip")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text_id": 1, "text": "a", "image_ids": [1000]}) + "\n"
                     + json.dumps({"text_id": "2", "text": "b", "image_ids": [1001]}) + "\n")
    with pytest.raises(DatasetFormatError, match="mixes integers and strings"):
        read_chinese_clip(mixed, tsv)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": 1, "caption": "a"}) + "\n")
    with pytest.raises(DatasetFormatError, match="Chinese-CLIP fields"):
        read_muge(other, tsv)
    (tmp_path / "dup.tsv").write_text(tsv.read_text().splitlines()[0] + "\n" + tsv.read_text().splitlines()[0] + "\n")
    with pytest.raises(DatasetFormatError, match="dup.tsv:2"):
        read_chinese_clip(other, tmp_path / "dup.tsv")


def test_dataset_folder_in_chinese_clip_layout(tmp_path):
    """``cnclip:DIR`` + split finds DIR/${split}_texts.jsonl and DIR/${split}_imgs.tsv (one spec for every split)."""
    root = tmp_path / "MUGE"
    write_split(root, "cnclip", split="train")
    write_split(root, "cnclip", split="valid")
    train = load_dataset(f"cnclip:{root}", split="train")
    valid = load_dataset(f"muge:{root}")  # default split: valid; fields detected
    assert (train.name, train.split, valid.split, len(valid.captions)) == ("MUGE", "train", "valid", 13)
    with pytest.raises(DatasetFormatError, match="test_texts.jsonl"):
        load_dataset(f"cnclip:{root}", split="test")
