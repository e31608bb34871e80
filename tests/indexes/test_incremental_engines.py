"""`xmodal index FOLDER` on a folder that gained, lost and changed files: every backend (FAISS, late interaction,
Milvus Lite) encodes and applies only the difference, and ids (relative paths) stay stable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xmodal.collection import build_collection, open_collection
from xmodal.models.late import LateInteractionEncoder

ENGINES = ["faiss", "late-interaction", "milvus"]


class CountingEncoder:
    def __init__(self, model):
        self.model, self.encoded = model, []
        self.model_id, self.embedding_dim = model.model_id, model.embedding_dim

    def encode_image(self, images, **kw):
        self.encoded += [getattr(i, "size", None) for i in images]
        return self.model.encode_image(images, **kw)


def encoder_for(engine, tiny_model, tiny_model_dir):
    return LateInteractionEncoder.from_pretrained(tiny_model_dir, dim=16) if engine == "late-interaction" else tiny_model


def close(col):
    if hasattr(col.index, "close"):
        col.index.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_only_the_difference_is_encoded_and_ids_stay_stable(engine, tiny_model, tiny_model_dir, image_folder, tmp_path):
    if engine == "milvus":
        pytest.importorskip("pymilvus")
    model = encoder_for(engine, tiny_model, tiny_model_dir)
    idx = tmp_path / "idx"
    opts = {"nbits": 2} if engine == "late-interaction" else {}
    first = build_collection(image_folder, model, idx, engine=engine, show_progress=False, **opts)
    assert first.added == 12
    col = open_collection(idx)
    before = {i: col.retriever(model=model).search(image=image_folder / i, k=1).ids[0]
              for i in ("img_03_yellow.png", "sub/img_10_brown.png")}
    assert before == {"img_03_yellow.png": "img_03_yellow.png", "sub/img_10_brown.png": "sub/img_10_brown.png"}
    close(col)

    (image_folder / "img_00_red.png").unlink()  # lost
    (image_folder / "sub" / "img_11_cyan.png").unlink()  # lost
    Image.new("RGB", (37, 37), "navy").save(image_folder / "new.png")  # gained
    Image.new("RGB", (35, 35), "olive").save(image_folder / "sub" / "new2.png")  # gained
    Image.new("RGB", (34, 34), "teal").save(image_folder / "img_01_green.png")  # changed content
    counter = CountingEncoder(model)
    report = build_collection(image_folder, counter, idx, show_progress=False)  # engine taken from the index
    assert sorted(counter.encoded) == [(34, 34), (35, 35), (37, 37)]  # new.png, new2.png, the changed file only
    assert (report.added, report.removed, report.unchanged, report.index_size) == (3, 3, 9, 12)

    col = open_collection(idx)
    assert col.engine == engine
    want = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    assert sorted(col.index.ids()) == want
    retriever = col.retriever(model=model)
    for i in ("img_03_yellow.png", "sub/img_10_brown.png", "new.png", "sub/new2.png", "img_01_green.png"):
        assert retriever.search(image=image_folder / i, k=1).ids == [i], i  # same ids as before for unchanged files
    assert col.index.metadata("new.png")["path"] == "new.png"
    close(col)

    again = CountingEncoder(model)
    report = build_collection(image_folder, again, idx, show_progress=False)
    assert again.encoded == [] and (report.added, report.removed, report.unchanged) == (0, 0, 12)


def test_faiss_vectors_of_unchanged_files_are_kept(tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    keep = ["img_03_yellow.png", "sub/img_10_brown.png"]
    old = open_collection(tmp_path / "idx").index.reconstruct(keep)
    (image_folder / "img_00_red.png").unlink()
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    np.testing.assert_array_equal(open_collection(tmp_path / "idx").index.reconstruct(keep), old)
