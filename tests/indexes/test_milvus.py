"""Milvus Lite (started for real): the Index protocol equals FAISS exact search; incremental collections."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pymilvus")

from xmodal import FaissIndex, load_index  # noqa: E402
from xmodal.errors import IndexMismatchError  # noqa: E402
from xmodal.indexes.milvus import MilvusIndex  # noqa: E402


def test_round_trip_equals_faiss(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:5] + 0.1 * rng.standard_normal((5, 16)).astype(np.float32)
    ids = [f"item/{i}" for i in range(300)]
    mil = MilvusIndex(16, uri=str(tmp_path / "m.db"), collection="t", model_id="m")
    mil.add(ids, x, metadata=[{"n": i} for i in range(300)])
    ref = FaissIndex(16)
    ref.add(ids, x)
    s_m, i_m = mil.search(q, 10)
    s_f, i_f = ref.search(q, 10)
    assert i_m.tolist() == i_f.tolist()
    np.testing.assert_allclose(s_m, s_f, atol=1e-5)
    assert mil.remove(["item/0", "item/1", "nope"]) == 2 and len(mil) == 298
    assert "item/0" not in mil.search(q[:1], 5)[1][0]
    _, filtered = mil.search(q, 3, filter={"item/7", "item/8"})
    assert {i for i in filtered.ravel() if i is not None} <= {"item/7", "item/8"}
    mil.save(tmp_path / "idx")
    mil.close()
    again = load_index(tmp_path / "idx", model_id="m")
    assert isinstance(again, MilvusIndex) and len(again) == 298 and again.metadata("item/5") == {"n": 5}
    assert again.search(q, 10)[1].tolist() == mil_ids_after_remove(ref, q)
    with pytest.raises(IndexMismatchError):
        load_index(tmp_path / "idx", model_id="other")
    again.close()


def mil_ids_after_remove(ref, q):
    ref.remove(["item/0", "item/1"])
    return ref.search(q, 10)[1].tolist()


def test_incremental_collection_on_milvus(tiny_model, image_folder, tmp_path):
    from xmodal.collection import build_collection, open_collection

    first = build_collection(image_folder, tiny_model, tmp_path / "idx", engine="milvus", show_progress=False)
    assert first.added == 12
    (image_folder / "img_00_red.png").unlink()
    Image.new("RGB", (30, 30), "navy").save(image_folder / "new.png")
    second = build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    assert (second.added, second.removed, second.unchanged) == (1, 1, 11)
    col = open_collection(tmp_path / "idx")
    assert col.engine == "milvus" and len(col) == 12 and "new.png" in col.index and "img_00_red.png" not in col.index
    res = col.retriever(model=tiny_model).search(image=image_folder / "new.png", k=1)
    assert res.ids == ["new.png"]
    col.index.close()
