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


def test_milvus_lite_has_no_multi_vector_maxsim(tmp_path):
    """Backs the statement in xmodal.indexes.milvus: Milvus Lite cannot store or MaxSim-search arrays of vectors.

    If this fails, Milvus Lite has gained multi-vector support: revisit using it for late interaction.
    """
    from pymilvus import DataType, MilvusClient
    from pymilvus.client.embedding_list import EmbeddingList

    client = MilvusClient(str(tmp_path / "mv.db"))
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
    tokens = MilvusClient.create_struct_field_schema()
    tokens.add_field("tok", DataType.FLOAT_VECTOR, dim=4)
    schema.add_field("tokens", DataType.ARRAY, element_type=DataType.STRUCT, struct_schema=tokens, max_capacity=16)
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection("mv", schema=schema, index_params=params)
    fields = [f["name"] for f in client.describe_collection("mv")["fields"]]
    assert "tokens" not in fields  # the array-of-struct field is dropped
    with pytest.raises(Exception, match="unexpected field"):
        client.insert("mv", [{"id": "a", "vector": [1, 0, 0, 0], "tokens": [{"tok": [1, 0, 0, 0]}, {"tok": [0, 1, 0, 0]}]}])
    client.insert("mv", [{"id": "a", "vector": [1, 0, 0, 0]}])
    query = EmbeddingList()
    query.add(np.array([1, 0, 0, 0], np.float32))
    query.add(np.array([0, 1, 0, 0], np.float32))
    with pytest.raises(Exception, match="not supported"):
        client.search("mv", data=[query], anns_field="tokens[tok]", limit=1, search_params={"metric_type": "MAX_SIM_IP"})
    client.close()


def test_no_local_mirror_answers_come_from_milvus(tmp_path, monkeypatch):
    """#20: MilvusIndex keeps no copy of ids/metadata; a reopened index (or a second client) asks Milvus."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    uri = str(tmp_path / "m.db")
    writer = MilvusIndex(8, uri=uri, collection="t", model_id="m")
    writer.add([f"a{i}" for i in range(50)], x, metadata=[{"n": i} for i in range(50)])
    writer.save(tmp_path / "idx")
    reader = load_index(tmp_path / "idx", model_id="m")
    assert not any(isinstance(v, (dict, list, set)) and len(v) for k, v in vars(reader).items()
                   if k not in ("index_params", "search_params"))  # nothing per item held locally
    assert len(reader) == 50 and "a7" in reader and "zz" not in reader and reader.metadata("a7") == {"n": 7}
    assert sorted(reader.ids(), key=lambda s: int(s[1:])) == [f"a{i}" for i in range(50)]
    assert dict(reader.metadata_items())["a3"] == {"n": 3}
    # changes made through the other client are seen at once (a mirror loaded at open would miss them)
    writer.add(["b0"], x[:1] * 2, metadata=[{"n": -1}])
    writer.remove(["a0"])
    assert len(reader) == 50 and "b0" in reader and "a0" not in reader and reader.metadata("b0") == {"n": -1}
    with pytest.raises(KeyError):
        reader.metadata("a0")
    from xmodal.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="already in the index"):
        reader.add(["a5"], x[:1])
    assert reader.remove(["a1", "nope"]) == 1 and len(writer) == 49
    # metadata of search hits comes with the search: no round trip per hit
    _, ids = reader.search(x[10:11], 5)
    calls = []
    real_get = reader.client.get
    monkeypatch.setattr(reader.client, "get", lambda *a, **k: calls.append(a) or real_get(*a, **k))
    assert [reader.metadata(i)["n"] for i in ids[0]] == [-1 if i == "b0" else int(i[1:]) for i in ids[0]]
    assert calls == [] and "a10" in ids[0]
    reader.update_metadata(["a10"], [{"n": 100}])  # a10 is its own nearest hit, now cached
    assert reader.metadata("a10") == {"n": 100}  # the cached hit was dropped
    writer.close()
    reader.close()
