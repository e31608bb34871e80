"""Every engine's ``where=`` returns exactly the ids of a brute-force filtered search (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.filters import matches
from xmodal.indexes.multivector import MultiVectorIndex

N, D, K = 1500, 16, 10
# from half of the items down to a handful (the exact-scan path) and none at all
WHERES = ['color = "red" or color = "blue"', 'year >= 2020 and color != "green"', 'tags = "rare"',
          'not exists(tags) and year < 2003', 'shape = "star" and year = 1999']


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((8, D)).astype(np.float32)
    ids = [f"img/{i:05d}.jpg" for i in range(N)]
    metas = []
    for i in range(N):
        m = {"color": ["red", "blue", "green", "white"][i % 4], "year": 2000 + (i * 7) % 25}
        if i % 3:
            m["tags"] = ["rare"] if i % 97 == 0 else ["common", "x"]
        metas.append(m)
    return x, q, ids, metas


def brute_force(x, q, ids, metas, where, k, live=None):
    keep = [j for j in range(len(ids)) if (live is None or ids[j] in live) and matches(where, metas[j])]
    if not keep:
        return [[] for _ in q]
    s = q @ x[keep].T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return [[ids[keep[t]] for t in row] for row in top]


def hits(found):
    return [[i for i in row if i is not None] for row in found.tolist()]


@pytest.mark.parametrize("kind, options", [("flat", {}), ("hnsw", {}),
                                           ("ivfpq", {"nlist": 16, "pq_m": 4, "pq_bits": 6, "refine": "flat", "k_factor": 64})])
@pytest.mark.parametrize("exact_items", [None, 0])  # default plan, and never the exact scan (graph/IVF with selector)
def test_faiss_where_equals_brute_force(kind, options, exact_items, tmp_path, monkeypatch):
    from xmodal.indexes import filtered

    if exact_items is not None:
        monkeypatch.setattr(filtered, "EXACT_ITEMS", exact_items)
    x, q, ids, metas = _data()
    index = FaissIndex(D, kind=kind, **options)
    index.add(ids, x, metadata=metas)
    removed = ids[::50]
    index.remove(removed)
    live = set(ids) - set(removed)
    for where in WHERES:
        assert hits(index.search(q, K, where=where)[1]) == brute_force(x, q, ids, metas, where, K, live), where
    # saved (metadata.parquet) and loaded: the same; an id allow-list and where together intersect
    index.save(tmp_path / "idx")
    again = FaissIndex.load(tmp_path / "idx")
    assert (tmp_path / "idx" / "metadata.parquet").exists() or any((tmp_path / "idx").glob("*metadata*"))
    for where in WHERES:
        assert hits(again.search(q, K, where=where)[1]) == brute_force(x, q, ids, metas, where, K, live), where
    allow = set(ids[:300])
    got = hits(again.search(q, K, filter=allow, where='color = "red"')[1])
    assert got == brute_force(x, q, ids, metas, 'color = "red"', K, live & allow)


def test_faiss_selective_filter_returns_k_results_on_hnsw():
    """A filter keeping 0.4% of the items: graph search alone would return fewer than k; exact scan returns all k."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, D)).astype(np.float32)
    ids = [str(i) for i in range(5000)]
    metas = [{"keep": i % 250 == 0} for i in range(5000)]
    index = FaissIndex(D, kind="hnsw", ef_search=16)
    index.add(ids, x, metadata=metas)
    _, found = index.search(x[:4], K, where="keep = true")
    assert all(len(r) == K for r in hits(found))
    assert hits(found) == brute_force(x, x[:4], ids, metas, "keep = true", K)


def test_faiss_metadata_update_without_new_vectors(tmp_path):
    x, q, ids, metas = _data()
    index = FaissIndex(D)
    index.add(ids, x, metadata=metas)
    index.save(tmp_path / "idx")
    again = FaissIndex.load(tmp_path / "idx")
    again.update_metadata([ids[3]], [{"color": "violet"}])
    assert hits(again.search(q, K, where='color = "violet"')[1]) == [[ids[3]]] * len(q)
    again.save(tmp_path / "idx")
    third = FaissIndex.load(tmp_path / "idx")
    assert third.metadata(ids[3]) == {"color": "violet"}
    assert hits(third.search(q, K, where='color = "violet"')[1]) == [[ids[3]]] * len(q)


def test_milvus_where_equals_brute_force(tmp_path):
    pytest.importorskip("pymilvus")
    from xmodal.indexes.milvus import MilvusIndex

    x, q, ids, metas = _data()
    mil = MilvusIndex(D, uri=str(tmp_path / "m.db"), collection="t")
    try:
        mil.add(ids, x, metadata=metas)
        for where in WHERES + ['tags not in ["common"]', 'not color = "red"']:
            assert hits(mil.search(q, K, where=where)[1]) == brute_force(x, q, ids, metas, where, K), where
        mil.update_metadata([ids[5]], [{"color": "violet"}])
        assert hits(mil.search(q, K, where='color = "violet"')[1]) == [[ids[5]]] * len(q)
    finally:
        mil.close()


@pytest.mark.parametrize("nbits", [None, 2])
def test_multivector_where_equals_brute_force(nbits):
    rng = np.random.default_rng(2)
    n, t = 300, 6
    docs = rng.standard_normal((n, t, D)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=2, keepdims=True)
    queries = rng.standard_normal((3, 4, D)).astype(np.float32)
    ids = [f"d{i}" for i in range(n)]
    metas = [{"color": ["red", "blue", "green"][i % 3], "rare": i % 40 == 0} for i in range(n)]
    index = MultiVectorIndex(D, nbits=nbits, n_centroids=16)
    index.add(ids, docs, metadata=metas)
    # the reference: exact MaxSim over the vectors the index holds (decompressed for nbits=2)
    offsets = index._offsets()
    stored = [index.decompress(np.arange(offsets[i], offsets[i + 1])) for i in range(n)]
    for where in ['rare = true', 'color = "red" and rare = false', 'not color = "blue"']:
        keep = [i for i in range(n) if matches(where, metas[i])]
        _, found = index.search(queries, K, where=where)
        for qi, row in zip(queries, hits(found)):
            scores = np.array([(qi @ stored[i].T).max(axis=1).sum() for i in keep])
            want = [ids[keep[j]] for j in np.argsort(-scores, kind="stable")[:K]]
            if nbits is None or len(keep) <= 64:  # all allowed documents re-scored exactly
                assert row == want, where
            else:  # candidate generation restricted to allowed documents: only allowed ids, k of them
                assert len(row) == K and set(row) <= {ids[i] for i in keep}
    index.update_metadata(["d1"], [{"color": "violet"}])
    assert hits(index.search(queries, K, where='color = "violet"')[1]) == [["d1"]] * 3


def test_non_utf8_file_names_in_metadata_save_and_filter(tmp_path):
    """Regression: a file name read from a non-UTF-8 directory entry carries surrogate escapes; Arrow
    refused it, so saving an index with such metadata crashed, and a filter on that name never matched."""
    import os

    odd = os.fsdecode(b"caf\xe9.png")  # "caf\udce9.png"
    vecs = np.eye(3, dtype=np.float32)
    index = FaissIndex(dim=3, kind="flat")
    index.add([odd, "b.png", "c.png"], vecs, metadata=[{"path": odd}, {"path": "b.png"}, {"path": "c.png"}])
    index.save(tmp_path / "idx")
    loaded = FaissIndex.load(tmp_path / "idx")
    _, ids = loaded.search(vecs[:1], k=3, where=f'path = "{odd}"')
    assert [i for i in ids[0] if i is not None] == [odd]
    assert loaded.metadata(odd) == {"path": odd}


def test_ivfpq_sq8_refine_exact_scan_of_few_allowed_items():
    """IVF-PQ with SQ8 refine codes: few allowed items are scored on their decoded SQ8 codes (near exact)."""
    x, q, ids, metas = _data()
    index = FaissIndex(D, kind="ivfpq", nlist=16, pq_m=4, pq_bits=6, refine="sq8")
    index.add(ids, x, metadata=metas)
    where = 'tags = "rare" or (year = 2001 and color = "red")'
    found = hits(index.search(q, K, where=where)[1])
    want = brute_force(x, q, ids, metas, where, K)
    allowed = {ids[j] for j in range(N) if matches(where, metas[j])}
    assert all(len(r) == min(K, len(allowed)) and set(r) <= allowed for r in found)
    assert np.mean([len(set(f) & set(w)) / len(w) for f, w in zip(found, want)]) >= 0.9


# ---------------------------------------------------------------- plans (indexes/filtered.py)
def _spy(monkeypatch, name):
    from xmodal.indexes import filtered

    calls = []
    real = getattr(filtered, name)

    def wrapped(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(filtered, name, wrapped)
    return calls


def test_broad_filter_on_hnsw_is_post_filtered_and_equals_brute_force(monkeypatch):
    """A filter keeping half of the items: one unfiltered search for k' results (binomial: k allowed among them with
    99% probability) with the disallowed ones dropped (no selector search), k allowed results per query, exactly
    the brute-force ids."""
    x, q, ids, metas = _data()
    index = FaissIndex(D, kind="hnsw")
    index.add(ids, x, metadata=metas)
    index.remove(ids[::50])
    pre = _spy(monkeypatch, "_pre_filter")
    where = 'color = "red" or color = "blue"'
    found = hits(index.search(q, K, where=where)[1])
    assert pre == []  # every row had k allowed among the k' unfiltered results
    assert all(len(r) == K for r in found)
    assert found == brute_force(x, q, ids, metas, where, K, set(ids) - set(ids[::50]))


def test_post_filter_asks_for_the_binomial_number_of_results():
    """k' is the fewest results holding k allowed ones with probability >= 99% for an independent filter (checked
    against the exact binomial tail with math.comb); at 50% and k=10 that is 33, so a beam of efSearch >= 33 is not
    widened (the old k' = 2k/fraction = 40 widened efSearch 32..39 for every broad-filtered query)."""
    from math import comb

    from xmodal.indexes import filtered

    def tail(n, k, f):  # P(Binomial(n, f) < k)
        return sum(comb(n, j) * f ** j * (1 - f) ** (n - j) for j in range(k))

    for k, f in [(10, 0.5), (10, 0.3), (1, 0.5), (25, 0.8), (5, 0.99), (10, 1.0)]:
        n = filtered._binomial_k(k, f)
        assert tail(n, k, f) <= filtered.POST_SHORT + 1e-12, (k, f, n)
        assert n == k or tail(n - 1, k, f) > filtered.POST_SHORT, (k, f, n)
    assert filtered._binomial_k(10, 0.5) == 33
    x, q, ids, metas = _data()
    index = FaissIndex(D, kind="hnsw", ef_search=36)
    index.add(ids, x, metadata=metas)
    assert filtered._post_ef(index, K, 0.5, N) == 36  # beam as unfiltered
    assert filtered._post_k(K, 0.5, N) == 33


def test_post_filter_falls_back_when_rows_are_left_short(monkeypatch):
    """40% allowed, but all of them far from the queries: the unfiltered top-k' holds none of them, so those rows
    are searched again over the allowed items only, and still return exactly the brute-force top-k."""
    rng = np.random.default_rng(5)
    n = 2000
    centre = rng.standard_normal(D).astype(np.float32)
    x = rng.standard_normal((n, D)).astype(np.float32) * 0.3
    far = np.arange(n) % 5 < 2  # 40% allowed, on the opposite side
    x[far] -= centre
    x[~far] += centre
    ids = [str(i) for i in range(n)]
    metas = [{"far": bool(f)} for f in far]
    index = FaissIndex(D, kind="hnsw", ef_search=32)
    index.add(ids, x, metadata=metas)
    q = x[~far][:6] + 0.01
    pre = _spy(monkeypatch, "_pre_filter")
    found = hits(index.search(q, K, where="far = true")[1])
    assert len(pre) == 1 and len(pre[0][2]) == len(q)  # one fallback search for the short rows
    assert found == brute_force(x, q, ids, metas, "far = true", K)


def test_exact_or_graph_is_a_cost_choice_not_an_item_count(monkeypatch):
    """2,500 allowed (25%, above the former fixed 2,048): a wide beam (efSearch 512) would score more vectors than
    the allowed items, so they are scored exactly (the brute-force ids); a narrow beam (16) searches the graph."""
    rng = np.random.default_rng(7)
    n = 10_000
    x = rng.standard_normal((n, 8)).astype(np.float32)
    ids = [str(i) for i in range(n)]
    metas = [{"b": i % 4} for i in range(n)]
    index = FaissIndex(8, kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=512)
    index.add(ids, x, metadata=metas)
    exact = _spy(monkeypatch, "_exact_subset")
    found = hits(index.search(x[:5], K, where="b = 1")[1])
    assert len(exact) == 1 and found == brute_force(x, x[:5], ids, metas, "b = 1", K)
    index.set_search_params(ef_search=16)
    found = hits(index.search(x[:5], K, where="b = 1")[1])
    assert len(exact) == 1 and all(len(r) == K for r in found)  # graph with the selector: no exact scoring
    # 5% of a few thousand items: exact whatever the beam, the brute-force ids
    few = index.search(x[:5], K, where="b = 1", filter=ids[:4000:5])[1]
    assert len(exact) == 2 and hits(few) == brute_force(x, x[:5], ids, metas, "b = 1", K, set(ids[:4000:5]))
