"""build_collection: incremental updates, resume after interruption, corrupt files, safe paths."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from xmodal.collection import build_collection, open_collection
from xmodal.errors import IndexMismatchError, InvalidInputError


def test_build_reports_corrupt_and_search_finds_exact_image(tiny_model, image_folder, tmp_path):
    report = build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    assert report.total == 13 and report.added == 12 and [f for f, _ in report.failed] == ["broken.jpg"]
    col = open_collection(tmp_path / "idx")
    assert len(col) == 12 and "sub/img_10_brown.png" in col.index.ids()
    result = col.retriever(model=tiny_model).search(image=image_folder / "img_03_yellow.png", k=3)
    assert result.ids[0] == "img_03_yellow.png" and result.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert col.image_path("sub/img_10_brown.png") == (image_folder / "sub" / "img_10_brown.png").resolve()


def test_incremental_update_adds_and_removes_only_the_difference(counting_encoder, tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    (image_folder / "img_00_red.png").unlink()
    Image.new("RGB", (33, 33), "navy").save(image_folder / "new.png")
    Image.new("RGB", (33, 33), "olive").save(image_folder / "img_01_green.png")  # changed content
    counter = counting_encoder(tiny_model)
    report = build_collection(image_folder, counter, tmp_path / "idx", show_progress=False)
    assert counter.encoded == 2  # new.png + changed img_01
    assert (report.added, report.removed, report.unchanged) == (2, 2, 10)
    ids = set(open_collection(tmp_path / "idx").index.ids())
    assert "img_00_red.png" not in ids and {"new.png", "img_01_green.png", "img_05_orange.png"} <= ids


def test_interrupted_run_resumes_without_re_encoding(counting_encoder, tiny_model, image_folder, tmp_path):
    from xmodal import io

    saved = []

    def stop_after_two_chunks(step):  # an injected interruption (replaces the old stop_after= test hook)
        if step == "collection:chunk-saved":
            saved.append(step)
            if len(saved) == 2:
                raise KeyboardInterrupt("interrupted after 2 chunks")

    prev = io.set_fault_hook(stop_after_two_chunks)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_collection(image_folder, tiny_model, tmp_path / "idx", chunk_size=4, show_progress=False)
    finally:
        io.set_fault_hook(prev)
    counter = counting_encoder(tiny_model)
    report = build_collection(image_folder, counter, tmp_path / "idx", chunk_size=4, show_progress=False)
    # 2 chunks of 4 files were done: 7 images + broken.jpg (failed files are tried again)
    assert report.resumed == 7 and counter.encoded == 12 - 7 and report.added == 12
    assert len(open_collection(tmp_path / "idx")) == 12
    assert not (tmp_path / "idx" / ".build").exists()
    # same vectors as a clean build
    clean = build_collection(image_folder, tiny_model, tmp_path / "clean", show_progress=False)
    a, b = open_collection(tmp_path / "idx").index, open_collection(tmp_path / "clean").index
    ids = sorted(a.ids())
    np.testing.assert_allclose(a.reconstruct(ids), b.reconstruct(ids), atol=1e-6)
    assert clean.added == 12


def test_wrong_model_is_refused(tiny_model, image_folder, tmp_path):
    from xmodal import build_tiny_model

    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    other = build_tiny_model("siglip", tmp_path / "siglip")
    with pytest.raises(IndexMismatchError, match="tiny-clip"):
        build_collection(image_folder, other, tmp_path / "idx", show_progress=False)
    with pytest.raises(IndexMismatchError):
        open_collection(tmp_path / "idx").retriever(model=str(tmp_path / "siglip"))


def test_image_paths_cannot_escape_root(tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    col = open_collection(tmp_path / "idx")
    col.index._meta["img_02_blue.png"]["path"] = "../../etc/passwd"
    with pytest.raises(InvalidInputError, match="outside"):
        col.image_path("img_02_blue.png")
    with pytest.raises(InvalidInputError, match="unknown"):
        col.image_path("../secret.png")
