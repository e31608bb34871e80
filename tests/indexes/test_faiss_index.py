"""FAISS backend: exactness against numpy, ANN recall, remove, persistence, and refusing mismatches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal import FaissIndex, load_index
from xmodal.errors import CorruptIndexError, IndexMismatchError, IndexNotFoundError, InvalidInputError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Random vectors around 100 random centres: the shape real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, d))
    return unit(centres[rng.integers(0, 100, n)] + 0.35 * rng.standard_normal((n, d)))


def brute_force(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def test_flat_search_equals_numpy_brute_force():
    rng = np.random.default_rng(1)
    x, q = unit(rng.standard_normal((500, 24))), unit(rng.standard_normal((7, 24)))
    ids = [f"item-{i}" for i in range(500)]
    index = FaissIndex(24)
    index.add(ids, x)
    scores, got = index.search(q, 10)
    ref_scores, ref = brute_force(q, x, 10)
    assert got.shape == (7, 10) and scores.dtype == np.float32
    assert [[ids[j] for j in row] for row in ref] == got.tolist()
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_remove_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((50, 8)))
    index = FaissIndex(8, model_id="m1")
    index.add([str(i) for i in range(50)], x, metadata=[{"path": f"{i}.png"} for i in range(50)])
    assert index.remove(["3", "7", "not-there"]) == 2
    assert len(index) == 48 and "3" not in index and "4" in index
    _, got = index.search(x[3], 50)
    assert "3" not in got[0].tolist() and got[0, -2:].tolist() == [None, None]
    index.save(tmp_path / "idx")
    again = load_index(tmp_path / "idx", model_id="m1", dimension=8)
    assert again.ids() == index.ids() and again.metadata("4") == {"path": "4.png"}
    np.testing.assert_array_equal(again.search(x[:5], 5)[1], index.search(x[:5], 5)[1])
    # the manifest records what a user needs to check compatibility
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["dimension"] == 8 and manifest["count"] == 48 and manifest["model_id"] == "m1"
    assert manifest["metric"] == "ip" and manifest["format_version"] == 1 and manifest["checksums"]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_ann_recall_at_10_against_exact(kind):
    x = clustered(20_000, 64)
    rng = np.random.default_rng(3)
    q = unit(x[rng.choice(len(x), 200, replace=False)] + 0.05 * rng.standard_normal((200, 64)))
    index = FaissIndex(64, kind=kind)
    index.add([str(i) for i in range(len(x))], x)
    _, got = index.search(q, 10)
    _, ref = brute_force(q, x, 10)
    recall = np.mean([len(set(map(int, got[i])) & set(ref[i].tolist())) / 10 for i in range(len(q))])
    assert recall >= 0.9, f"{kind} recall@10 = {recall:.3f}"


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_removed_items_never_returned_by_ann_kinds(kind, tmp_path):
    x = clustered(2_000, 16, seed=4)
    index = FaissIndex(16, kind=kind, nlist=16)
    index.add([str(i) for i in range(len(x))], x)
    index.remove([str(i) for i in range(0, 2_000, 2)])
    for idx in (index, FaissIndex.load(index.save(tmp_path / kind))):
        _, got = idx.search(x[:20], 10)
        assert all(int(i) % 2 == 1 for i in got.ravel() if i is not None)
        assert len(idx) == 1_000


def test_filter_restricts_results():
    x = unit(np.random.default_rng(5).standard_normal((100, 8)))
    index = FaissIndex(8)
    index.add([str(i) for i in range(100)], x)
    allowed = {"1", "2", "50"}
    _, got = index.search(x[:3], 5, filter=allowed)
    assert {i for i in got.ravel() if i is not None} <= allowed


def test_bad_inputs_have_clear_errors(tmp_path):
    index = FaissIndex(8)
    with pytest.raises(InvalidInputError, match="dimension 4"):
        index.add(["a"], np.ones((1, 4)))
    with pytest.raises(InvalidInputError, match="one id per vector"):
        index.add(["a", "b"], np.ones((1, 8)))
    index.add(["a"], np.ones((1, 8)))
    with pytest.raises(InvalidInputError, match="already in the index"):
        index.add(["a"], np.ones((1, 8)))
    with pytest.raises(InvalidInputError, match="NaN"):
        index.search(np.full((1, 8), np.nan), 3)
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search(np.ones((1, 8)), 0)
    with pytest.raises(InvalidInputError, match="kind"):
        FaissIndex(8, kind="lsh")


def test_load_refuses_mismatch_and_damage(tmp_path):
    index = FaissIndex(8, model_id="clip-a")
    index.add(["a", "b"], np.eye(2, 8))
    path = index.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="clip-a"):
        FaissIndex.load(path, model_id="clip-b")
    with pytest.raises(IndexMismatchError, match="8-d"):
        FaissIndex.load(path, dimension=16)
    with pytest.raises(IndexNotFoundError):
        FaissIndex.load(tmp_path / "missing")
    from xmodal.indexes.manifest import read_manifest

    with open(read_manifest(path).path(path, "index.faiss"), "ab") as f:
        f.write(b"junk")
    with pytest.raises(CorruptIndexError, match="does not match the manifest"):
        FaissIndex.load(path)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    index = FaissIndex(4)
    index.add(["a"], np.ones((1, 4)))
    path = index.save(tmp_path / "idx")
    before = (path / "manifest.json").read_text()
    import xmodal.indexes.faiss_index as fi

    def boom(*a, **k):
        raise OSError("disk full")

    index.add(["b"], np.ones((1, 4)))
    monkeypatch.setattr(fi.faiss, "write_index", boom)
    with pytest.raises(OSError):
        index.save(path)
    assert (path / "manifest.json").read_text() == before
    assert len(FaissIndex.load(path)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.tmp")]
    assert not [p for p in path.iterdir() if p.name.startswith(".xmodal-staging")]
