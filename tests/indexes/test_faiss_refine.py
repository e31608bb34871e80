"""IVF-PQ refine codes (#15): refine='fp16' (half floats, 2 B/dim) saves/loads (also memory-mapped), takes
append saves, removals and filters; on tightly clustered vectors it reaches a recall SQ8 cannot, and tuning
says so."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from xmodal import load_index
from xmodal.errors import InvalidInputError
from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.filters import matches

D, K = 32, 10
OPTS = {"nlist": 16, "pq_m": 8, "pq_bits": 6, "nprobe": 16, "k_factor": 64}  # every list, many candidates: refine decides


def tight(n, d=D, seed=0, centres=20, spread=0.3):
    """Unit vectors in tight clusters: near neighbours differ by less than an SQ8 step."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d)) / np.sqrt(d) * 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fp16_brute_force(x, q, ids, metas, where, live):
    """Exact top-k on the fp16-rounded vectors (what the refine codes hold) among live items matching ``where``."""
    keep = [j for j in range(len(ids)) if ids[j] in live and (where is None or matches(where, metas[j]))]
    s = q @ x.astype(np.float16).astype(np.float32)[keep].T
    return [[ids[keep[t]] for t in row] for row in np.argsort(-s, axis=1, kind="stable")[:, :K]]


def hits(found):
    return [[i for i in row if i is not None] for row in found.tolist()]


def test_fp16_refine_round_trip_mmap_append_save_removals_and_filters(tmp_path):
    x = tight(2200)
    ids = [f"img/{j}" for j in range(2200)]
    metas = [{"n": j % 10} for j in range(2200)]
    index = FaissIndex(D, kind="ivfpq", refine="fp16", **OPTS)
    index.add(ids[:2000], x[:2000], metadata=metas[:2000])
    refine = faiss.downcast_index(faiss.downcast_index(index._index.index).refine_index)
    assert isinstance(refine, faiss.IndexScalarQuantizer) and refine.sq.qtype == faiss.ScalarQuantizer.QT_fp16
    assert refine.code_size == 2 * D
    index.remove(ids[:40])
    live = set(ids[40:2000])
    q = x[100:108] + 0.001
    for where in (None, "n < 5", "n = 3", "n = 3 and n < 0"):
        assert hits(index.search(q, K, where=where)[1]) == fp16_brute_force(x, q, ids, metas, where, live), where
    index.save(tmp_path / "idx")
    mapped = load_index(tmp_path / "idx")  # memory-mapped by default
    assert mapped._mmap_path is not None and mapped.params["refine"] == "fp16"
    for where in (None, "n < 5", "n = 3"):
        assert hits(mapped.search(q, K, where=where)[1]) == fp16_brute_force(x, q, ids, metas, where, live), where
    # a small update is an append save (a segment next to the mapped base), then loads with the same results
    mapped.add(ids[2000:], x[2000:], metadata=metas[2000:])
    mapped.remove(ids[40:60])
    mapped.save(tmp_path / "idx")
    from xmodal.indexes.manifest import read_manifest

    assert read_manifest(tmp_path / "idx").params.get("segments")  # appended, the fp16 base kept as it was
    again = load_index(tmp_path / "idx")
    live = set(ids[60:])
    for where in (None, "n < 5"):
        want = mapped.search(q, K, where=where)[1].tolist()
        assert again.search(q, K, where=where)[1].tolist() == want
        assert all(set(r) <= live for r in hits(again.search(q, K, where=where)[1]))
    again.compact()  # the delta's vectors encoded into IVF-PQ + fp16 codes
    for where in (None, "n < 5"):
        assert hits(again.search(q, K, where=where)[1]) == fp16_brute_force(x, q, ids, metas, where, live), where


def test_fp16_refine_reaches_recall_that_sq8_cannot_on_tight_clusters_and_tuning_says_so():
    x = tight(3000, 64)
    ids = [str(j) for j in range(len(x))]
    q = x[:100]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :K]
    got = {}
    for refine in ("sq8", "fp16"):
        index = FaissIndex(64, kind="ivfpq", refine=refine, **OPTS)
        index.add(ids, x)
        found = index.search(q, K)[1]
        got[refine] = np.mean([len({int(i) for i in f} & set(t.tolist())) / K for f, t in zip(found, truth)])
        t = index.tune(0.98, sample=100, source=lambda: [(ids, x)])
        if refine == "sq8":
            assert not t.met and "refine='fp16'" in t.note and "refine='flat'" in t.note
        else:
            assert t.met, t.describe()
    assert got["fp16"] >= 0.97 and got["sq8"] <= 0.9, got


def test_unknown_refine_is_refused():
    with pytest.raises(InvalidInputError, match="fp16"):
        FaissIndex(8, kind="ivfpq", refine="fp8")


def test_refine_option_reaches_the_index_and_is_checked(tmp_path):
    """`xmodal index --refine` / index_folder(refine=): passed to FAISS IVF-PQ only; refused (one line) for other
    engines and kinds, unknown codes, and an existing index built with other refine codes."""
    from xmodal.indexes.registry import get_engine
    from xmodal.pipelines.index import check_refine

    faiss_spec = get_engine("faiss")
    index = faiss_spec.create(D, "m", tmp_path / "new", **faiss_spec.pick_options(kind="ivfpq", refine="fp16"))
    assert index.params["refine"] == "fp16"
    assert FaissIndex(D, kind="ivfpq", refine="none").params["refine"] is None  # the CLI's "none"
    check_refine(faiss_spec, tmp_path / "new", "ivfpq", "fp16")  # a new folder: fine
    check_refine(faiss_spec, tmp_path / "new", "flat", None)  # not given: nothing to check
    for spec, kind, refine, message in [(get_engine("late-interaction"), None, "fp16", "FAISS ivfpq option"),
                                        (faiss_spec, "hnsw", "fp16", "applies to --kind ivfpq"),
                                        (faiss_spec, None, "fp16", "applies to --kind ivfpq"),  # default kind: flat
                                        (faiss_spec, "ivfpq", "fp8", "unknown refine 'fp8'")]:
        with pytest.raises(InvalidInputError, match=message):
            check_refine(spec, tmp_path / "new", kind, refine)
    x = tight(600)
    built = FaissIndex(D, kind="ivfpq", nlist=8, pq_m=8, pq_bits=6, refine="sq8")
    built.add([str(j) for j in range(600)], x)
    built.save(tmp_path / "old")
    check_refine(faiss_spec, tmp_path / "old", None, "sq8")  # the same codes: fine (kind read from the manifest)
    with pytest.raises(InvalidInputError, match="re-scores with sq8 refine codes.*--refine fp16"):
        check_refine(faiss_spec, tmp_path / "old", None, "fp16")
