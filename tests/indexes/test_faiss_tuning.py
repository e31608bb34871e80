"""Recall tuning (``FaissIndex.tune``): the chosen setting meets the target, measured independently; reports persist."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal import FaissIndex, load_index
from xmodal.errors import InvalidInputError
from xmodal.indexes.recall import exact_topk, recall_at_k


def clustered(n: int, d: int, seed: int = 0, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d))
    x = centres[rng.integers(0, 50, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def independent_recall(index: FaissIndex, x: np.ndarray, ids: list[str], queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of index.search at its current settings, against numpy brute force over x."""
    truth = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]
    _, got = index.search(queries, k)
    return float(np.mean([len({ids[j] for j in t} & set(g)) / k for t, g in zip(truth, got.tolist())]))


def test_exact_topk_streams_chunks_like_brute_force():
    x = clustered(700, 16, seed=1)
    q = x[:20]
    chunks = [(np.arange(s, min(s + 128, 700)), x[s:s + 128]) for s in range(0, 700, 128)]
    got = exact_topk(q, chunks, 10)
    np.testing.assert_array_equal(got, np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10])
    assert recall_at_k(got, got) == 1.0 and recall_at_k(got[:, ::-1], got) == 1.0
    assert recall_at_k(np.full_like(got, -1), got) == 0.0


def test_hnsw_tuning_meets_target_and_persists(tmp_path):
    data = clustered(4200, 32)
    x, fresh_q = data[:4000], data[4000:]  # held-out queries: the tuned setting must generalise
    ids = [f"i{j}" for j in range(len(x))]
    index = FaissIndex(32, kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=10)
    index.add(ids, x)
    before = independent_recall(index, x, ids, fresh_q)
    t = index.tune(0.95, sample=300)
    assert t.met and t.recall >= 0.95 and t.exact_truth and t.sample == 300 and t.items == 4000
    assert t.params["ef_search"] == index.params["ef_search"] >= 10
    assert [p for p, _ in t.tried][-1] == t.params  # smallest setting: every one tried before fell short
    assert all(r < 0.95 for _, r in t.tried[:-1])
    after = independent_recall(index, x, ids, fresh_q)
    assert after >= 0.93 and after >= before
    info = index.describe_search()
    assert info["search_params"] == {"ef_search": t.params["ef_search"]} and info["tuning"]["recall"] == t.recall
    assert "meets the target 0.950" in info["summary"]
    index.save(tmp_path / "idx")
    again = load_index(tmp_path / "idx")
    assert again.tuning.to_dict() == t.to_dict() and again.params["ef_search"] == t.params["ef_search"]
    np.testing.assert_array_equal(again.search(fresh_q[:20], 10)[1], index.search(fresh_q[:20], 10)[1])
    again.set_search_params(ef_search=t.params["ef_search"] + 1)  # the measurement no longer applies
    assert again.tuning is None and "tuning" not in again.describe_search()


def test_ivfpq_refine_tuning_uses_source_vectors_as_exact_truth():
    x = clustered(3000, 32, seed=2)
    ids = [f"i{j}" for j in range(len(x))]
    index = FaissIndex(32, kind="ivfpq", nlist=64, pq_m=4, pq_bits=6, nprobe=1, k_factor=1)
    index.add(ids, x)
    t = index.tune(0.95, sample=200, source=lambda: [(ids[s:s + 1000], x[s:s + 1000]) for s in range(0, 3000, 1000)])
    assert t.met and t.exact_truth and set(t.params) == {"nprobe", "k_factor"}
    assert independent_recall(index, x, ids, x[::15]) >= 0.93
    # without a source, the truth is computed on the SQ8 copies: said so
    assert index.tune(0.9, sample=100).exact_truth is False


def test_unreachable_target_is_reported_with_what_would_meet_it():
    x = clustered(3000, 32, seed=3, noise=2.0)  # nearly uniform: 2-byte PQ codes cannot rank them
    index = FaissIndex(32, kind="ivfpq", nlist=32, pq_m=2, pq_bits=6, refine=None)
    ids = [str(j) for j in range(len(x))]
    index.add(ids, x)
    t = index.tune(0.99, sample=100, source=lambda: [(ids, x)])
    assert not t.met and t.recall < 0.99 and t.params == {"nprobe": 32}
    assert "refine='sq8'" in t.note and "kind='hnsw'" in t.note
    assert "does NOT meet" in t.describe()


def test_tune_refuses_bad_input():
    index = FaissIndex(8, kind="hnsw")
    with pytest.raises(InvalidInputError, match="empty"):
        index.tune(0.9)
    index.add(["a", "b"], clustered(2, 8))
    with pytest.raises(InvalidInputError, match="target recall"):
        index.tune(1.5)


def test_ivfpq_remove_then_add_keeps_ids_right():
    # regression: IVF behind IndexIDMap2 kept its own sequential ids, so remove_ids broke the
    # position -> label map (IndexError / wrong ids) and later adds reused live ids
    x = clustered(1200, 16, seed=4)
    index = FaissIndex(16, kind="ivfpq", refine=None, nlist=8, pq_m=16, pq_bits=6, nprobe=8)
    index.add([str(i) for i in range(1000)], x[:1000])
    index.remove([str(i) for i in range(0, 1000, 2)])
    index.add([str(i) for i in range(1000, 1200)], x[1000:])
    _, got = index.search(x[[1, 3, 1001, 1199]], 1)
    assert got[:, 0].tolist() == ["1", "3", "1001", "1199"]
    _, got = index.search(x[[0, 2]], 5)
    assert not {"0", "2"} & set(got.ravel().tolist())


def test_build_from_embeddings_tunes_to_the_target_and_saves_it(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from xmodal.distributed.embeddings import build_from_embeddings

    x = clustered(3000, 32, seed=5)
    (tmp_path / "emb").mkdir()
    for s in range(3):
        part = x[s * 1000:(s + 1) * 1000]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), 32)
        pq.write_table(pa.table({"id": [f"{s}-{j}" for j in range(1000)], "embedding": emb}),
                       tmp_path / "emb" / f"part-{s:05d}.parquet")
    index, _ = build_from_embeddings(tmp_path / "emb", tmp_path / "idx", kind="hnsw", target_recall=0.97)
    assert index.tuning.met and index.tuning.recall >= 0.97 and index.tuning.exact_truth
    saved = json.loads((tmp_path / "idx" / "manifest.json").read_text())["params"]
    assert saved["tuning"]["recall"] == index.tuning.recall and saved["ef_search"] == index.tuning.params["ef_search"]
    plain, _ = build_from_embeddings(tmp_path / "emb", tmp_path / "plain", kind="hnsw", target_recall=None)
    assert plain.tuning is None


def test_target_recall_given_at_construction_tunes_on_save_when_stale(tmp_path):
    data = clustered(3400, 32, seed=6)
    index = FaissIndex(32, kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=10, target_recall=0.95)
    index.add([str(j) for j in range(3000)], data[:3000])
    assert index.tuning is None
    index.save(tmp_path / "idx")
    first = index.tuning
    assert first.met and first.items == 3000
    index.add([str(j) for j in range(3000, 3100)], data[3000:3100])  # +3%: the measurement still holds
    index.save(tmp_path / "idx")
    assert index.tuning is first
    index.add([str(j) for j in range(3100, 3400)], data[3100:])  # +13% in all: measured again
    index.save(tmp_path / "idx")
    assert index.tuning is not first and index.tuning.items == 3400 and index.tuning.met
    assert load_index(tmp_path / "idx").params["target_recall"] == 0.95
    with pytest.raises(InvalidInputError, match="target recall"):
        FaissIndex(8, kind="hnsw", target_recall=0)
