"""Metadata at index time (issue 15 item 1): manifest file, sidecars, file facts; metadata-only updates."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from xmodal.collection import build_collection, open_collection
from xmodal.data.metadata import file_facts, read_metadata_file
from xmodal.errors import InvalidInputError


def _write_csv(path, rows):
    path.write_text("path,camera,year,rating\n" + "".join(f"{r},{c},{y},{s}\n" for r, c, y, s in rows))


def test_metadata_file_sidecars_and_facts_are_recorded_and_filterable(tiny_model, image_folder, tmp_path):
    _write_csv(tmp_path / "meta.csv", [("img_00_red.png", "X100", 2020, 4.5), ("img_01_green.png", "A7", 2021, 3),
                                       ("sub/img_10_brown.png", "X100", 2019, ""), ("gone.png", "A7", 2018, 1)])
    (image_folder / "img_02_blue.png.json").write_text(json.dumps({"camera": "Z9", "tags": ["sky", "sea"]}))
    report = build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False,
                              metadata=tmp_path / "meta.csv")
    assert report.metadata_unmatched == 1
    col = open_collection(tmp_path / "idx")
    red = col.index.metadata("img_00_red.png")
    assert red["camera"] == "X100" and red["year"] == 2020 and red["rating"] == 4.5
    assert (red["width"], red["height"]) == (40, 36) and red["size"] == (image_folder / "img_00_red.png").stat().st_size
    assert "rating" not in col.index.metadata("sub/img_10_brown.png")  # empty cell: absent
    assert col.index.metadata("img_02_blue.png")["tags"] == ["sky", "sea"]
    res = col.retriever(model=tiny_model).search(text="a photo", k=12, where='camera = "X100" and year >= 2020')
    assert res.ids == ["img_00_red.png"] and res.metadata[0]["camera"] == "X100"
    res = col.retriever(model=tiny_model).search(text="a photo", k=12, where='tags = "sea" or width > 49')
    assert set(res.ids) == {"img_02_blue.png", "sub/img_10_brown.png", "sub/img_11_cyan.png"}


def test_metadata_only_change_updates_without_reencoding(tiny_model, image_folder, tmp_path, counting_encoder):
    _write_csv(tmp_path / "meta.csv", [("img_00_red.png", "X100", 2020, 1)])
    enc = counting_encoder(tiny_model)
    build_collection(image_folder, enc, tmp_path / "idx", show_progress=False, metadata=tmp_path / "meta.csv")
    first = enc.encoded
    # the manifest changes, a sidecar appears: no file changed, so nothing is encoded again
    _write_csv(tmp_path / "meta.csv", [("img_00_red.png", "A7", 2020, 1), ("img_01_green.png", "A7", 2022, 2)])
    (image_folder / "img_03_yellow.png.json").write_text(json.dumps({"camera": "Z9"}))
    report = build_collection(image_folder, enc, tmp_path / "idx", show_progress=False)  # the recorded file is read again
    assert enc.encoded == first and report.added == 0 and report.metadata_updated == 3
    col = open_collection(tmp_path / "idx")
    res = col.retriever(model=tiny_model).search(text="x", k=12, where='camera = "A7"')
    assert sorted(res.ids) == ["img_00_red.png", "img_01_green.png"]
    assert col.index.metadata("img_03_yellow.png")["camera"] == "Z9"
    # nothing changed: nothing updated; a changed image is re-encoded and keeps its metadata
    assert build_collection(image_folder, enc, tmp_path / "idx", show_progress=False).metadata_updated == 0
    Image.new("RGB", (33, 33), "navy").save(image_folder / "img_00_red.png")
    again = build_collection(image_folder, enc, tmp_path / "idx", show_progress=False)
    assert again.added == 1
    meta = open_collection(tmp_path / "idx").index.metadata("img_00_red.png")
    assert meta["camera"] == "A7" and meta["width"] == 33


@pytest.mark.parametrize("engine", ["late-interaction", "milvus"])
def test_metadata_survives_updates_on_other_engines(engine, tiny_model, tiny_model_dir, image_folder, tmp_path):
    if engine == "milvus":
        pytest.importorskip("pymilvus")
    from xmodal.models.late import LateInteractionEncoder

    model = LateInteractionEncoder.from_pretrained(tiny_model_dir, dim=16) if engine == "late-interaction" else tiny_model
    (image_folder / "img_00_red.png.json").write_text(json.dumps({"camera": "X100"}))
    build_collection(image_folder, model, tmp_path / "idx", engine=engine, show_progress=False)
    (image_folder / "img_00_red.png.json").write_text(json.dumps({"camera": "A7"}))
    report = build_collection(image_folder, model, tmp_path / "idx", show_progress=False)
    assert report.metadata_updated == 1 and report.added == 0
    col = open_collection(tmp_path / "idx")
    assert col.index.metadata("img_00_red.png")["camera"] == "A7"
    _, ids = col.index.search(_query(col, tiny_model, engine), 5, where='camera = "A7"')
    assert [i for i in ids[0] if i is not None] == ["img_00_red.png"]
    if hasattr(col.index, "close"):
        col.index.close()


def _query(col, model, engine):
    if engine == "late-interaction":  # any token vectors will do: the filter decides
        return np.ones((1, 3, col.index.dim), dtype=np.float32) / np.sqrt(col.index.dim)
    return model.encode_text(["red"], show_progress=False)


def test_metadata_file_formats_and_errors(tmp_path):
    (tmp_path / "m.tsv").write_text("file\tscore\tok\n001.jpg\t2.5\ttrue\n./b/c.jpg\t3\tfalse\n")
    assert read_metadata_file(tmp_path / "m.tsv") == {"001.jpg": {"score": 2.5, "ok": True}, "b/c.jpg": {"score": 3.0, "ok": False}}
    (tmp_path / "m.jsonl").write_text('{"id": "a.png", "tags": ["x"], "when": "2021-01-01"}\n\n')
    assert read_metadata_file(tmp_path / "m.jsonl") == {"a.png": {"tags": ["x"], "when": "2021-01-01"}}
    (tmp_path / "bad.csv").write_text("name,x\na,1\n")
    with pytest.raises(InvalidInputError, match="no key column"):
        read_metadata_file(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"path": "a"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        read_metadata_file(tmp_path / "bad.jsonl")
    with pytest.raises(InvalidInputError, match="expected .csv"):
        read_metadata_file(tmp_path / "m.xlsx") if (tmp_path / "m.xlsx").write_text("x") else None


def test_file_facts_exif_date(tmp_path):
    img = Image.new("RGB", (20, 10), "red")
    exif = Image.Exif()
    exif[306] = "2021:06:01 12:30:00"
    img.save(tmp_path / "a.jpg", exif=exif)
    os.utime(tmp_path / "a.jpg", (1_600_000_000, 1_600_000_000))
    facts = file_facts(tmp_path / "a.jpg")
    assert facts["taken"] == "2021-06-01T12:30:00" and (facts["width"], facts["height"]) == (20, 10)
    assert facts["mtime"] == "2020-09-13T12:26:40"
