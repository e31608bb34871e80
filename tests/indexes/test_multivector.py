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
    assert index.bytes_per_token() == 2 + 32 * nbits / 8 + 4  # uint16 centroid id + packed residual + float32 norm
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


def _hard(n=300, d=32, n_centres=40, seed=1):
    """Tokens around shared centres with noise as large as the centre (many near-ties, unlike ``corpus``)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_centres, d)))
    docs = [unit(centres[rng.integers(0, n_centres, rng.integers(6, 14))] + rng.standard_normal((1, d)) / np.sqrt(d)
                 * rng.standard_normal((1, 1))) for _ in range(n)]
    docs = [unit(x + rng.standard_normal(x.shape) / np.sqrt(d)) for x in docs]
    queries = [unit(docs[i][: 3] + rng.standard_normal((3, d)) / np.sqrt(d)) for i in rng.integers(0, n, 12)]
    return docs, queries


@pytest.mark.parametrize("nbits", [2, 4])
def test_generous_pruning_settings_equal_exact_maxsim_on_decoded_vectors(nbits):
    """Every document probed and re-scored: the staged search must give exactly the brute-force MaxSim ranking
    of the decoded vectors (the candidate stages lose nothing; only the codec differs from the raw vectors)."""
    docs, queries = _hard()
    index = MultiVectorIndex(32, nbits=nbits, n_centroids=16, nprobe=16, ncandidates=300, ninteract=300)
    index.add([str(i) for i in range(len(docs))], docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    decoded = [index.decompress(np.arange(offsets[i], offsets[i + 1])) for i in range(len(docs))]
    ref = exact_maxsim_topk(queries, decoded, 10)
    scores, ids = index.search(queries, 10)
    assert [[int(x) for x in row] for row in ids] == ref.tolist()
    want = np.array([[maxsim_numpy_reference(q, decoded[j]) for j in row] for q, row in zip(queries, ref)])
    np.testing.assert_allclose(scores, want, atol=1e-4)


def test_nprobe_and_centroid_threshold_prune_candidates():
    docs, queries = _hard()
    index = MultiVectorIndex(32, nbits=2, n_centroids=16, nprobe=16, ncandidates=300, ninteract=300)
    index.add([str(i) for i in range(len(docs))], docs)
    full = index.search(queries, 10)[1]
    scores = index._centroid_scores(*pad(queries, 32))
    qmask = pad(queries, 32)[1]
    n_all = (index._candidates(scores, qmask, 10, None) >= 0).sum()
    index.params.update(nprobe=2)  # fewer lists probed: fewer candidates (ninteract=300 caps nothing here)
    narrow = (index._candidates(scores, qmask, 10, None) >= 0).sum()
    index.params["centroid_threshold"] = 0.9  # only each token's best centroid survives
    pruned = (index._candidates(scores, qmask, 10, None) >= 0).sum()
    assert pruned < narrow < n_all
    index.params.update(ncandidates=40, ninteract=80)
    index.params["centroid_threshold"] = -1.0  # prunes nothing: same as no threshold
    same = index.search(queries, 10)[1]
    index.params["centroid_threshold"] = None
    assert index.search(queries, 10)[1].tolist() == same.tolist()
    assert all(len(set(row)) == 10 for row in same.tolist()) and same.tolist() != full.tolist()


@pytest.mark.parametrize("nbits", [None, 2])
def test_batched_search_equals_one_query_at_a_time(nbits):
    docs, queries = _hard()
    queries = queries + [queries[0][:1], queries[1][:2]]  # ragged: padded query tokens must add nothing
    index = MultiVectorIndex(32, nbits=nbits, n_centroids=16, nprobe=3, ncandidates=20)
    index.add([str(i) for i in range(len(docs))], docs)
    scores, ids = index.search(queries, 7)
    for n, q in enumerate(queries):
        s1, i1 = index.search([q], 7)
        assert i1[0].tolist() == ids[n].tolist()
        np.testing.assert_allclose(s1[0], scores[n], rtol=1e-5)


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_lookup_table_decoding_equals_bit_unpacking(nbits):
    docs, _ = _hard(n=40)
    index = MultiVectorIndex(32, nbits=nbits, n_centroids=8)
    index.add([str(i) for i in range(len(docs))], docs)
    pos = torch.arange(index.num_tokens)
    np.testing.assert_allclose(index._vectors(pos).numpy(), index.decompress(pos.numpy()), atol=1e-5)


def test_full_vectors_option_rescores_exactly_and_round_trips(tmp_path):
    docs, queries = _hard()
    index = MultiVectorIndex(32, nbits=2, n_centroids=16, nprobe=16, ncandidates=300, ninteract=300, full_vectors=True)
    index.add([str(i) for i in range(len(docs))], docs)
    assert index.bytes_per_token() == 2 + 8 + 4 + 2 * 32  # codes + 2-bit residuals + norm + float16 vectors
    half = [d.astype(np.float16).astype(np.float32) for d in docs]
    assert index.search(queries, 10)[1].tolist() == [[str(j) for j in row] for row in exact_maxsim_topk(queries, half, 10)]
    assert index.remove(["3"]) == 1
    index.save(tmp_path / "mv")
    again = MultiVectorIndex.load(tmp_path / "mv")
    assert again.params["full_vectors"] and again.search(queries, 10)[1].tolist() == index.search(queries, 10)[1].tolist()


def test_narrow_filter_still_fills_k_results():
    docs, queries = _hard()
    index = MultiVectorIndex(32, nbits=2, n_centroids=16, nprobe=1, ncandidates=8)
    index.add([str(i) for i in range(len(docs))], docs)
    allowed = {"5", "77", "123", "250"}
    scores, ids = index.search(queries, 3, filter=allowed)
    assert all(len(set(row)) == 3 and set(row) <= allowed for row in ids.tolist())
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_lookup_table_scoring_equals_maxsim_on_decoded_vectors(nbits):
    """The codec path scores residuals through per-query (byte position, byte value) tables and the stored
    per-token norms, never reconstructing vectors: every document's score must equal MaxSim with its decoded
    (normalised) vectors, and the ranking must be the same."""
    docs, queries = _hard(n=120)
    queries = queries + [queries[0][:1]]  # a ragged batch: the short query's padding must add nothing
    index = MultiVectorIndex(32, nbits=nbits, n_centroids=16)
    index.add([str(i) for i in range(len(docs))], docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    decoded = [index.decompress(np.arange(offsets[i], offsets[i + 1])) for i in range(len(docs))]
    q, qmask = pad(queries, 32)
    every = torch.arange(len(docs)).expand(len(queries), -1)
    scores, order = index._rank_codes(q, qmask, index._centroid_scores(q, qmask), every, len(docs))
    want = np.array([[maxsim_numpy_reference(qq, decoded[j]) for j in row] for qq, row in zip(queries, order)])
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all() and sorted(order[0].tolist()) == list(range(len(docs)))
    ref = exact_maxsim_topk(queries, decoded, 10)
    top = order[:, :10]
    # same top 10 (ties within float tolerance aside): the reference's 10th score is reached by every pick
    assert all(np.isin(top[n], ref[n]).mean() >= 0.9 for n in range(len(queries)))


def test_index_saved_without_norms_loads_searches_and_saves_them(tmp_path):
    """Indexes saved before the per-token norms were stored: loading computes them, search is unchanged, and
    the next save writes them (the folder keeps loading with this code and with older code)."""
    import json

    docs, queries = _hard()
    index = MultiVectorIndex(32, nbits=2, n_centroids=16, nprobe=4, ncandidates=40)
    index.add([str(i) for i in range(len(docs))], docs)
    index.remove(["7"])  # norms stay aligned with the remaining tokens
    want = index.search(queries, 10)
    index.save(tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    stored = manifest.get("files", {}).pop("norms.npy", "norms.npy")
    del manifest["checksums"]["norms.npy"]
    (tmp_path / "old" / stored).unlink()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    old = MultiVectorIndex.load(tmp_path / "old")
    np.testing.assert_allclose(old._norms, index._norms, rtol=1e-6)
    got = old.search(queries, 10)
    assert got[1].tolist() == want[1].tolist()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    old.save(tmp_path / "again")
    assert "norms.npy" in json.loads((tmp_path / "again" / "manifest.json").read_text())["checksums"]
    np.testing.assert_array_equal(MultiVectorIndex.load(tmp_path / "again")._norms, old._norms)


@pytest.mark.parametrize("length", [1, 2, 5, 7, 32, 33])
def test_max_over_tokens_equals_amax(length):
    from xmodal.indexes.multivector import _max_over_tokens

    x = torch.randn(6, length, 3)
    x[0, -1] = torch.inf  # the odd last token must count
    assert torch.equal(_max_over_tokens(x), x.amax(1))
