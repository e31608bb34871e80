"""Late interaction: exact MaxSim, the compressed multi-vector index, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmodal import load_index
from xmodal.errors import IndexMismatchError, InvalidInputError
from xmodal.indexes.maxsim import maxsim, maxsim_numpy_reference, pad
from xmodal.indexes.multivector import MultiVectorIndex, exact_maxsim_topk


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def corpus(n=400, d=32, seed=0, per_topic=10):
    """Documents about topics: each topic has a few token clusters, a document mostly draws its tokens from its
    topic's clusters (plus some off-topic tokens), and a query asks about one topic. So a query's exact top-10 is
    well defined (its topic's documents), as with real text, rather than a near-tie among unrelated documents."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((-(-n // per_topic), 6, d))
    docs = []
    for i in range(n):
        t = topics[i // per_topic]
        m = rng.integers(8, 20)
        on = t[rng.integers(0, 6, m)]
        off = rng.standard_normal((m, d))
        mix = np.where(rng.random((m, 1)) < 0.8, on, off)
        docs.append(unit(mix + 0.35 * rng.standard_normal((m, d))))
    queries = [unit(topics[t][rng.integers(0, 6, 4)] + 0.35 * rng.standard_normal((4, d)))
               for t in rng.choice(len(topics), 30)]
    return docs, queries


def test_maxsim_equals_definition_with_padding():
    docs, queries = corpus(n=25)
    q, qm = pad(queries)
    d, dm = pad(docs)
    got = maxsim(q, qm, d, dm, doc_chunk=7).numpy()
    ref = np.array([[maxsim_numpy_reference(a, b) for b in docs] for a in queries])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_uncompressed_index_equals_brute_force_ranking():
    docs, queries = corpus()
    index = MultiVectorIndex(32, nbits=None)
    index.add([f"d{i}" for i in range(len(docs))], docs)
    _, ids = index.search(queries, 10)
    ref = exact_maxsim_topk(queries, docs, 10)
    assert [[f"d{j}" for j in row] for row in ref] == ids.tolist()


@pytest.mark.parametrize("nbits, min_recall", [(1, 0.9), (2, 0.95), (4, 0.95), (8, 0.95)])
def test_compressed_recall_and_size(nbits, min_recall):
    docs, queries = corpus()
    index = MultiVectorIndex(32, nbits=nbits, n_centroids=64)
    index.add([str(i) for i in range(len(docs))], docs)
    _, ids = index.search(queries, 10)
    ref = exact_maxsim_topk(queries, docs, 10)
    recall = np.mean([len({int(x) for x in ids[i]} & set(ref[i].tolist())) / 10 for i in range(len(queries))])
    assert recall >= min_recall, recall
    assert index.bytes_per_token() == 2 + 32 * nbits / 8  # uint16 centroid id + packed residual
    # the first result is always one of the exact top 10 (within a topic the order is a near-tie)
    assert all(int(ids[i][0]) in set(ref[i].tolist()) for i in range(len(queries)))


def test_pack_unpack_round_trip():
    for nbits in (1, 2, 4, 8):
        index = MultiVectorIndex(16, nbits=nbits)
        b = np.random.default_rng(nbits).integers(0, 2 ** nbits, (50, 16)).astype(np.uint8)
        assert np.array_equal(index._unpack(index._pack(b)), b)


def test_incremental_add_remove_save_load(tmp_path):
    docs, queries = corpus(n=300)
    index = MultiVectorIndex(32, nbits=2, n_centroids=32, model_id="m")
    index.add([str(i) for i in range(200)], docs[:200], metadata=[{"n": i} for i in range(200)])
    centroids = index.centroids.copy()
    index.add([str(i) for i in range(200, 300)], docs[200:])  # assigned to existing centroids
    assert np.array_equal(index.centroids, centroids) and len(index) == 300
    assert index.remove(["5", "250", "missing"]) == 2
    _, ids = index.search([docs[5], docs[250], docs[6]], 3)
    assert "5" not in ids[0] and "250" not in ids[1] and ids[2][0] == "6"
    index.save(tmp_path / "mv")
    again = load_index(tmp_path / "mv", model_id="m", dimension=32)
    assert isinstance(again, MultiVectorIndex) and again.ids() == index.ids() and again.metadata("7") == {"n": 7}
    np.testing.assert_array_equal(again.search(queries, 5)[1], index.search(queries, 5)[1])
    with pytest.raises(IndexMismatchError):
        load_index(tmp_path / "mv", model_id="other")
    _, ids = again.search(queries[:2], 5, filter={"1", "2", "3"})
    assert {x for x in ids.ravel() if x is not None} <= {"1", "2", "3"}


def test_bad_inputs():
    index = MultiVectorIndex(8, nbits=2)
    with pytest.raises(InvalidInputError, match="tokens, 8"):
        index.add(["a"], [np.ones((3, 4))])
    with pytest.raises(InvalidInputError, match="nbits"):
        MultiVectorIndex(8, nbits=3)
    with pytest.raises(InvalidInputError, match="multiple"):
        MultiVectorIndex(6, nbits=2)


def test_maxsim_on_gpu_when_available():
    if not torch.cuda.is_available():
        pytest.skip("no GPU on this machine (CPU path is tested above)")
    docs, queries = corpus(n=20)
    q, qm = pad(queries)
    d, dm = pad(docs)
    np.testing.assert_allclose(maxsim(q, qm, d, dm, device="cuda").cpu().numpy(), maxsim(q, qm, d, dm).numpy(), atol=1e-4)


def test_reconstruction_error_shrinks_as_nbits_grows():
    """Issue #6: more residual bits -> strictly smaller reconstruction error; ``nbits=None`` is lossless."""
    docs, _ = corpus(n=200)
    tokens = np.concatenate(docs)
    ids = [f"d{i}" for i in range(len(docs))]
    all_tokens = np.arange(len(tokens))
    errors = {}
    for nbits in (1, 2, 4, 8):
        index = MultiVectorIndex(32, nbits=nbits, n_centroids=64)
        index.add(ids, docs)
        rec = index.decompress(all_tokens)
        assert rec.shape == tokens.shape and rec.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(rec, axis=1), 1.0, atol=1e-5)
        errors[nbits] = float(np.mean(np.sum((rec - tokens) ** 2, axis=1)))
    e = [errors[b] for b in (1, 2, 4, 8)]
    assert e[0] > e[1] > e[2] > e[3], errors
    # not just monotone: each step removes a real share of the error, and 8 bits is nearly exact
    assert all(b < 0.7 * a for a, b in zip(e, e[1:])), errors
    assert e[3] < 0.01 < e[0], errors
    # centroids alone (no residual) are worse than even 1 bit of residual
    index = MultiVectorIndex(32, nbits=1, n_centroids=64)
    index.add(ids, docs)
    cent = unit(index.centroids[index._codes.astype(np.int64)])
    assert float(np.mean(np.sum((cent - tokens) ** 2, axis=1))) > e[0]
    raw = MultiVectorIndex(32, nbits=None)
    raw.add(ids, docs)
    assert np.array_equal(raw.decompress(all_tokens), tokens)


def test_add_is_amortised_not_a_full_copy():
    # regression: every add() concatenated (copied) all stored tokens, so n adds cost O(n^2)
    from xmodal.indexes.multivector import MultiVectorIndex

    rng = np.random.default_rng(0)
    docs = [(lambda v: v / np.linalg.norm(v, axis=1, keepdims=True))(rng.standard_normal((4, 16))).astype(np.float32)
            for _ in range(400)]
    index = MultiVectorIndex(16, nbits=2, n_centroids=8)
    index.add([str(i) for i in range(100)], docs[:100])
    buffers = set()
    for i in range(100, 400):
        index.add([str(i)], [docs[i]])
        buffers.add(id(index._cols["codes"].buf))
    assert len(buffers) <= 4  # 300 adds reallocated the token store only a few times (capacity doubling)
    whole = MultiVectorIndex(16, nbits=2, n_centroids=8)
    whole.add([str(i) for i in range(100)], docs[:100])
    whole.add([str(i) for i in range(100, 400)], docs[100:])
    np.testing.assert_array_equal(index._codes, whole._codes)
    np.testing.assert_array_equal(index._packed, whole._packed)
    assert index.search(docs[:5], 3)[1].tolist() == whole.search(docs[:5], 3)[1].tolist()
    assert index.num_tokens == 1600 and len(index._doclens) == 400
