"""Scale-out beyond single vectors: multi-vector shards, streaming late-interaction and Milvus builds from
shards, resume that notices changed/removed inputs, and indexes from shards that `xmodal index` then updates."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xmodal import load_index
from xmodal.collection import build_collection, open_collection
from xmodal.distributed import encode_collection, read_embedding_shards
from xmodal.distributed.encode import shard_metadata
from xmodal.errors import InvalidInputError
from xmodal.distributed.embeddings import build_from_embeddings, inspect_embeddings
from xmodal.indexes.autoindex import choose_multivector
from xmodal.pipelines import index_from_embeddings
from xmodal.indexes.multivector import MultiVectorIndex, exact_maxsim_topk
from xmodal.models.late import LateInteractionEncoder



@pytest.fixture(scope="module")
def late_model(tiny_model_dir):
    # What `encode --late-interaction` and `index --engine late-interaction` load from the dual-encoder folder.
    return LateInteractionEncoder.from_pretrained(tiny_model_dir)


def test_multi_vector_shards_hold_patch_vectors(image_folder, late_model, tmp_path):
    report = encode_collection(image_folder, late_model, tmp_path / "emb", images_per_shard=5, show_progress=False)
    assert report.shards_done == 3 and report.images_encoded == 12 and len(report.images_failed) == 1
    f = tmp_path / "emb" / "part-00001.parquet"  # part-00000 holds broken.jpg + 4 images
    typ = pq.read_schema(f).field("embedding").type
    assert pa.types.is_list(typ) and typ.value_type == pa.list_(pa.float32(), 128)
    meta = shard_metadata(f)
    assert meta["multi_vector"] is True and meta["model_id"] == late_model.model_id and meta["vectors"] == 5 * 26
    ids, docs = zip(*read_embedding_shards(tmp_path / "emb"))
    ids, docs = [i for part in ids for i in part], [d for part in docs for d in part]
    want = late_model.encode_image([image_folder / ids[3]])[0]
    assert docs[3].shape == (26, 128)  # (30/6)^2 patches + [CLS]
    np.testing.assert_allclose(docs[3], want, atol=1e-5)
    info = inspect_embeddings(tmp_path / "emb")
    assert (info.count, info.tokens, info.dim, info.multi_vector) == (12, 12 * 26, 128, True)


def test_late_interaction_index_from_shards_equals_exact_maxsim(image_folder, late_model, tmp_path):
    encode_collection(image_folder, late_model, tmp_path / "emb", images_per_shard=5, show_progress=False)
    exact, choice = build_from_embeddings(tmp_path / "emb", tmp_path / "exact", kind="flat")
    assert choice.params == {"nbits": None} and isinstance(exact, MultiVectorIndex) and len(exact) == 12
    ids = sorted(exact.ids())
    docs = late_model.encode_image([image_folder / i for i in ids])
    queries = [late_model.encode_image([image_folder / i])[0] for i in ids[:4]]
    ref = exact_maxsim_topk(queries, list(docs), 5)
    assert exact.search(queries, 5)[1].tolist() == [[ids[j] for j in row] for row in ref]
    compressed, choice = build_from_embeddings(tmp_path / "emb", tmp_path / "idx")
    assert choice.kind == "late-interaction" and choice.params["nbits"] == 2 and "budget" in choice.reason
    assert load_index(tmp_path / "idx").nbits == 2
    assert [row[0] for row in compressed.search(queries, 1)[1]] == ids[:4]


def write_multivector_shards(folder, n_shards=4, per_shard=100, dim=16, seed=0):
    """Each shard's documents talk about their own topics (token clusters no other shard uses), 10 documents
    per topic, so a topic query's exact top-10 is well defined."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_shards, 10, 4, dim))
    all_docs, all_ids = [], []
    for s in range(n_shards):
        docs = []
        for i in range(per_shard):
            t = topics[s, i % 10]
            m = int(rng.integers(6, 14))
            d = t[rng.integers(0, 4, m)] + 0.3 * rng.standard_normal((m, dim))
            docs.append((d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32))
        ids = [f"s{s}/{i}" for i in range(per_shard)]
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int32)
        emb = pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(docs).ravel()), dim))
        pq.write_table(pa.table({"id": ids, "embedding": emb}), folder / f"shard-{s}.parquet")
        all_docs += docs
        all_ids += ids
    queries = [(topics[s, t][[0, 1, 2]] / np.linalg.norm(topics[s, t][[0, 1, 2]], axis=1, keepdims=True)).astype(np.float32)
               for s in range(n_shards) for t in (0, 5)]
    return all_ids, all_docs, queries


def test_streaming_late_interaction_trains_on_every_shard(tmp_path):
    ids, docs, queries = write_multivector_shards(tmp_path)
    tokens = sum(len(d) for d in docs)
    # A training sample of ~1/4 of the tokens. Drawn from every shard, the centroids and residual buckets cover
    # all topics (recall 0.96 here); trained on the first shard alone (1/4 too) recall drops to 0.86.
    index, choice = build_from_embeddings(tmp_path, tmp_path / "idx", train_sample=tokens // 4)
    assert len(index) == 400 and sorted(index.ids()) == sorted(ids)
    assert choice.params["n_centroids"] == choose_multivector(400, tokens, 16, 1 << 30).params["n_centroids"]
    ref = exact_maxsim_topk(queries, docs, 10)
    got = index.search(queries, 10)[1]
    recall = np.mean([len({ids[j] for j in r} & set(g)) / 10 for r, g in zip(ref, got)])
    assert recall >= 0.93, recall


def test_budget_picks_fewer_bits_or_refuses():
    assert choose_multivector(10**6, 50 * 10**6, 128, 4 << 30).params["nbits"] == 2
    one = choose_multivector(10**6, 50 * 10**6, 128, 1200 << 20)  # 1 bit: 50M x 22 B/token = 1.1 GB
    assert one.params["nbits"] == 1 and one.estimated_bytes <= 1200 << 20
    with pytest.raises(InvalidInputError, match="raise the budget"):
        choose_multivector(10**6, 50 * 10**6, 128, 256 << 20)


def test_engine_must_match_the_shards(image_folder, late_model, tiny_model, tiny_model_dir, tmp_path):
    encode_collection(image_folder, late_model, tmp_path / "multi", show_progress=False)
    with pytest.raises(InvalidInputError, match="late-interaction"):
        build_from_embeddings(tmp_path / "multi", tmp_path / "x", engine="faiss")
    with pytest.raises(InvalidInputError, match="late-interaction"):
        build_from_embeddings(tmp_path / "multi", tmp_path / "x", engine="milvus")
    encode_collection(image_folder, tiny_model, tmp_path / "single", show_progress=False)
    with pytest.raises(InvalidInputError, match="multi-vector"):
        build_from_embeddings(tmp_path / "single", tmp_path / "x", engine="late-interaction")
    # the same folder cannot take embeddings of another model (the late encoder has its own model id)
    with pytest.raises(InvalidInputError, match="holds embeddings of model 'tiny-clip'"):
        encode_collection(image_folder, late_model, tmp_path / "single", show_progress=False)
    # nor, for one model name, single- and multi-vector shards
    encode_collection(image_folder, str(tiny_model_dir), tmp_path / "by-name", show_progress=False)
    with pytest.raises(InvalidInputError, match="holds single-vector embeddings"):
        encode_collection(image_folder, str(tiny_model_dir), tmp_path / "by-name", late_interaction=True, show_progress=False)


def test_decoding_threads_give_the_same_shards(image_folder, tiny_model, tmp_path):
    inline = encode_collection(image_folder, tiny_model, tmp_path / "a", images_per_shard=7, show_progress=False)
    threaded = encode_collection(image_folder, tiny_model, tmp_path / "b", images_per_shard=7, decode_workers=2,
                                 show_progress=False)
    assert threaded.images_failed == inline.images_failed and threaded.images_encoded == 12
    for (ia, va), (ib, vb) in zip(read_embedding_shards(tmp_path / "a"), read_embedding_shards(tmp_path / "b")):
        assert ia == ib  # same order
        np.testing.assert_allclose(va, vb, atol=1e-6)


def make_tar(path, colours, size=32):
    with tarfile.open(path, "w") as tar:
        for c in colours:
            buf = io.BytesIO()
            Image.new("RGB", (size, size), c).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{c}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))


def test_resume_re_encodes_changed_inputs_and_drops_removed_ones(tiny_model, tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tar(src / "a.tar", ["red", "green"])
    make_tar(src / "b.tar", ["blue", "yellow"])
    make_tar(src / "c.tar", ["white", "black"])
    out = tmp_path / "emb"
    first = encode_collection(str(src / "*.tar"), tiny_model, out, show_progress=False)
    assert first.shards_done == 3
    make_tar(src / "b.tar", ["blue", "yellow", "purple"])  # changed input (size differs)
    (src / "c.tar").unlink()  # input gone
    again = encode_collection(str(src / "*.tar"), tiny_model, out, show_progress=False)
    assert (again.shards_done, again.shards_skipped, again.shards_removed) == (1, 1, ["c"])
    ids = sorted(i for part, _ in read_embedding_shards(out) for i in part)
    assert ids == ["blue", "green", "purple", "red", "yellow"]
    other = tmp_path / "other-model"
    from xmodal import build_tiny_model

    build_tiny_model("siglip", other)
    with pytest.raises(InvalidInputError, match="holds embeddings of model"):
        encode_collection(str(src / "*.tar"), str(other), out, show_progress=False)
    # the same model given by folder name is fine
    assert encode_collection(str(src / "*.tar"), str(tiny_model_dir), out, show_progress=False).shards_skipped == 2


@pytest.mark.parametrize("engine", ["faiss", "milvus", "late-interaction"])
def test_index_from_shards_then_incremental_update(counting_encoder, engine, tiny_model_dir, image_folder, tmp_path):
    if engine == "milvus":
        pytest.importorskip("pymilvus")
    late = engine == "late-interaction"
    encode_collection(image_folder, str(tiny_model_dir), tmp_path / "emb", images_per_shard=5, late_interaction=late,
                      show_progress=False)
    index, _ = index_from_embeddings(tmp_path / "emb", tmp_path / "idx", engine=engine)  # index + collection.json
    assert len(index) == 12 and index.engine == engine
    if engine == "milvus":
        index.close()
    col = open_collection(tmp_path / "idx")
    assert col.engine == engine and col.root == image_folder.resolve() and [f for f, _ in col.failed] == ["broken.jpg"]
    hit = col.retriever().search(image=image_folder / "img_03_yellow.png", k=1)
    assert hit.ids == ["img_03_yellow.png"]
    if engine == "milvus":
        col.index.close()
    # The folder changes: `xmodal index FOLDER --out IDX` encodes only the difference.
    (image_folder / "img_00_red.png").unlink()
    Image.new("RGB", (31, 31), "navy").save(image_folder / "new.png")
    model = LateInteractionEncoder.from_pretrained(tiny_model_dir) if late else col.load_model()
    counter = counting_encoder(model)
    report = build_collection(image_folder, counter, tmp_path / "idx", show_progress=False)
    assert counter.encoded == 1 and (report.added, report.removed, report.unchanged) == (1, 1, 11)
    col = open_collection(tmp_path / "idx")
    assert len(col) == 12 and "new.png" in col.index and "img_00_red.png" not in col.index
    assert col.retriever(model=model).search(image=image_folder / "new.png", k=1).ids == ["new.png"]
    if engine == "milvus":
        col.index.close()


def test_milvus_from_shards_equals_faiss_and_reports_choice(tmp_path):
    pytest.importorskip("pymilvus")
    rng = np.random.default_rng(1)
    emb = tmp_path / "emb"
    emb.mkdir()
    vecs = rng.standard_normal((3, 200, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=2, keepdims=True)
    for s in range(3):
        pq.write_table(pa.table({"id": [f"{s}-{i}" for i in range(200)],
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs[s].ravel()), 16)}),
                       emb / f"p{s}.parquet")
    q = vecs[0, :5] + 0.05 * rng.standard_normal((5, 16)).astype(np.float32)
    flat, choice = build_from_embeddings(emb, tmp_path / "faiss")
    mil, mchoice = build_from_embeddings(emb, tmp_path / "milvus", engine="milvus")
    assert mchoice.kind == "flat" and mchoice.params["index_type"] == "FLAT" and len(mil) == 600
    assert mil.search(q, 10)[1].tolist() == flat.search(q, 10)[1].tolist()
    mil.close()
    with pytest.raises(InvalidInputError, match="already holds an index"):
        build_from_embeddings(emb, tmp_path / "milvus", engine="milvus")
    hnsw, hchoice = build_from_embeddings(emb, tmp_path / "milvus", engine="milvus", kind="hnsw", overwrite=True)
    assert hchoice.kind == "hnsw" and hchoice.params["index_type"] == "HNSW" and "Milvus HNSW" in hchoice.reason
    hnsw.close()
    again = load_index(tmp_path / "milvus")
    assert again.index_type == "HNSW" and len(again) == 600 and again.search_params["ef"] == 128
    assert again.search(q, 1)[1][:, 0].tolist() == flat.search(q, 1)[1][:, 0].tolist()
    again.close()
    # a budget below the float vectors' size: IVF-PQ, which Milvus Lite replaces by IVF_SQ8
    tiny, tchoice = build_from_embeddings(emb, tmp_path / "m2", engine="milvus", memory_budget_mb=0.01)
    assert tchoice.kind == "ivfpq" and tchoice.params["index_type"] == "IVF_SQ8" and "no IVF_PQ" in tchoice.reason
    assert len(tiny) == 600
    tiny.close()
    assert os.path.exists(tmp_path / "m2" / "milvus.db")
