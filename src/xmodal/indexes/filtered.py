"""Filtered FAISS search: an allow-mask over the index, run by the cheapest plan that keeps recall.

``FaissIndex.search(where=...)`` evaluates the filter on the columnar metadata store
(``metadata_store.MetadataStore``) into a boolean mask over item labels and hands it here. Three plans
(flat indexes always take the selector scan, which is exact and costs what an unfiltered scan costs):

- **post-filter** (filters keeping >= ``POST_FRACTION`` of the items, HNSW and IVF-PQ): the ordinary
  unfiltered search for ``k' = k / fraction * POST_MARGIN`` results, disallowed ones dropped. The ANN
  structure is searched exactly as unfiltered (same beam/lists), so cost and recall stay those of
  unfiltered search; this is what vector databases do for broad filters. Query rows left with fewer
  than ``k`` allowed results (rare: binomial tail at margin 2) go through the plans below.
- **exact**: the allowed items' stored vectors scored exactly -- in place for float storage
  (``faiss.knn_inner_products_by_idx`` over HNSW's/flat refine's vectors), through the refine codes'
  own scan with an ``IDSelectorBitmap`` (SQ8/fp16 codes), or all IVF lists probed without refine codes.
- **ANN with a selector**: HNSW graph search with the bitmap, its beam (efSearch) widened by
  ``(1/fraction) ** WIDEN`` so it still meets enough allowed nodes; IVF-PQ with ``nprobe`` x
  ``(1/fraction) ** IVF_WIDEN`` (the nearest allowed items lie in more lists).

Exact vs ANN is a cost comparison in "vectors scored", not a fixed item count: exact scores
``allowed`` vectors; an HNSW search scores about ``ef * M / 6 + 10 * M`` (faiss' ``hnsw_stats.ndis``
on the benchmark's 100k x 512 graph, M=16: 242 at ef 32, 464 at 128, 809 at 256 -- the graph is walked
the same with or without a selector, the selector only decides what enters the results); an IVF-PQ
search about ``nprobe * (list length + 2**pq_bits) * pq_m / dim`` (code bytes scanned plus the
per-list lookup tables, in vector equivalents) plus its refine candidates. One exact-scored vector,
gathered from a cache-cold index, costs ``EXACT_COST`` of a graph distance: measured 0.68 us (5,000
allowed of 100k x 512, in place) vs 0.9 us per graph distance. At 100k items this puts the crossover
near 1,200 allowed items for HNSW (efSearch 32, M 16): 500 allowed are scored exactly (recall 1.0;
the widened graph search reached only 0.2-0.4 there), 5,000 go through the graph.

``WIDEN``: on that graph a 5% filter reached recall@10 0.82 at efSearch 128, 0.91 at 192 and 0.98 at
256 (0.95 unfiltered at 32): ``32 * 20 ** 0.7 = 260``; the former sqrt widening (143) gave 0.90.

``benchmarks/filtered_search.py`` measures recall@10 against exact filtered search and latency
against unfiltered search (same run, interleaved) for these choices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import faiss
except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
    raise ImportError("filtered FAISS search needs faiss: `pip install faiss-cpu`") from e

from .quantize import masked_target

EXACT_ITEMS: int | None = None  # None: the cost model chooses; an int forces "exact iff allowed <= EXACT_ITEMS" (0: never)
POST_FRACTION = 0.3  # filters keeping at least this share of the indexed vectors are post-filtered (> 1: never)
POST_MARGIN = 2.0  # post-filter asks for k / fraction * POST_MARGIN results
WIDEN = 0.7  # HNSW efSearch grows by (1/fraction) ** WIDEN with a selector
IVF_WIDEN = 1.0  # IVF nprobe grows by (1/fraction) ** IVF_WIDEN with a selector
EXACT_COST = 0.75  # one exactly scored allowed vector, relative to one graph/list distance (measured, see above)


def _bitmap(mask: np.ndarray) -> tuple[Any, np.ndarray]:
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


def _position_mask(index: Any, label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The allow-mask over positions of the wrapped FAISS index (labels differ from positions after flat removals)."""
    full = index._labels_by_position()  # cached by the index until it changes; last entry -1
    pos_labels = full[:-1]
    cache = getattr(index, "_filter_identity", None)
    if cache is None or cache[0] is not full:  # positions == labels unless a flat index had removals
        cache = (full, bool(np.array_equal(pos_labels, np.arange(len(pos_labels)))))
        index._filter_identity = cache
    if cache[1] and len(label_mask) >= len(pos_labels):
        pos_mask = label_mask[:len(pos_labels)].copy()
    else:
        inside = pos_labels < len(label_mask)
        pos_mask = np.zeros(len(pos_labels), dtype=bool)
        pos_mask[inside] = label_mask[pos_labels[inside]]
    if index._removed:  # HNSW/IVF keep removed vectors: mask them
        removed = np.fromiter(index._removed, dtype=np.int64)
        if cache[1]:
            pos_mask[removed[removed < len(pos_mask)]] = False
        else:
            pos_mask &= ~np.isin(pos_labels, removed)
    return pos_mask, full


def _exact_subset(target: Any, q: np.ndarray, k: int, pos_mask: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` positions among ``pos_mask`` of a flat (float) or scalar-quantised (SQ8/fp16) index."""
    if isinstance(target, faiss.IndexFlat):  # scored in place, no copy of the vectors
        positions = np.flatnonzero(pos_mask).astype(np.int64)
        vals = np.empty((len(q), k), dtype=np.float32)
        out = np.empty((len(q), k), dtype=np.int64)
        fn = faiss.knn_inner_products_by_idx if metric == "ip" else faiss.knn_L2sqr_by_idx
        fn(faiss.swig_ptr(q), target.get_xb(), faiss.swig_ptr(positions), target.d, len(q), target.ntotal,
           len(positions), k, faiss.swig_ptr(vals), faiss.swig_ptr(out), 0)
        return vals, out
    # scalar-quantised codes: their own scan, which skips the codes outside the bitmap before decoding
    sel, bits = _bitmap(pos_mask)
    params = faiss.SearchParameters(sel=sel)
    params._keep = (sel, bits)
    return target.search(q, k, params=params)


def _exact_target(index: Any, inner: Any) -> Any:
    """The float/SQ storage the exact plan scores (None: IVF-PQ without refine codes)."""
    if index.kind == "hnsw":
        return faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexRefine):
        return faiss.downcast_index(inner.refine_index)
    return None


def _ann_cost(index: Any, inner: Any, k: int, fraction: float) -> float:
    """Vectors an ANN search with the selector scores (see the module docstring)."""
    p = index.params
    if index.kind == "hnsw":
        m = int(p["hnsw_m"])
        return _hnsw_ef(index, k, fraction) * m / 6 + 10 * m
    refine = isinstance(inner, faiss.IndexRefine)
    ivf = faiss.downcast_index(inner.base_index) if refine else inner
    nprobe = _ivf_nprobe(ivf, p, fraction)
    pq_m, bits = int(ivf.pq.M), int(ivf.pq.nbits)
    per_list = (ivf.ntotal / max(1, ivf.nlist) + 2 ** bits) * pq_m / index.dim
    return nprobe * per_list + (k * float(p["k_factor"]) if refine else 0.0)


def _hnsw_ef(index: Any, k: int, fraction: float) -> int:
    # the beam must meet about as many *allowed* nodes as an unfiltered search: widened by (1/fraction) ** WIDEN
    return int(min(max(len(index), k), math.ceil(max(int(index.params["ef_search"]), k) * (1.0 / fraction) ** WIDEN)))


def _ivf_nprobe(ivf: Any, p: dict[str, Any], fraction: float) -> int:
    return int(min(ivf.nlist, math.ceil(int(p["nprobe"]) * (1.0 / fraction) ** IVF_WIDEN)))


def search_masked(index: Any, q: np.ndarray, k: int, label_mask: np.ndarray,
                  exact_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, labels) among labels where ``label_mask`` is True; label -1 where fewer exist.

    ``index`` is an ``xmodal.indexes.faiss_index.FaissIndex`` (its wrapped FAISS index, label map and settings).
    """
    pos_mask, full = _position_mask(index, np.asarray(label_mask, dtype=bool))  # full[pos]: label, full[-1] = -1
    allowed = int(np.count_nonzero(pos_mask))
    if allowed == 0:
        return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
    inner = faiss.downcast_index(index._index.index)
    fraction = allowed / max(1, len(pos_mask))  # of the stored vectors (removed ones count as disallowed)
    if index.kind != "flat" and fraction >= POST_FRACTION:
        scores, pos = _post_filter(index, inner, q, k, pos_mask, allowed, fraction, exact_items)
    else:
        scores, pos = _pre_filter(index, inner, q, k, pos_mask, allowed, fraction, exact_items)
    return scores, np.where(pos >= 0, full[pos], -1)


def _post_filter(index: Any, inner: Any, q: np.ndarray, k: int, pos_mask: np.ndarray, allowed: int, fraction: float,
                 exact_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Unfiltered search for k' results, disallowed ones dropped; rows left short are searched with the selector."""
    kp = int(min(len(pos_mask), math.ceil(k / fraction * POST_MARGIN)))
    if index.kind == "hnsw":  # faiss keeps the beam at efSearch even for k > efSearch: at least k' wide
        scores, pos = inner.search(q, kp, params=faiss.SearchParametersHNSW(efSearch=max(int(index.params["ef_search"]), kp)))
    else:  # IVF-PQ: its own nprobe; the refine stage re-scores k' * k_factor candidates
        scores, pos = inner.search(q, kp)
    ok = (pos >= 0) & pos_mask[np.maximum(pos, 0)]
    # stable: allowed results first, in their ranked order
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
    out_s = np.take_along_axis(scores, order, axis=1)
    out_p = np.where(np.take_along_axis(ok, order, axis=1), np.take_along_axis(pos, order, axis=1), -1)
    if kp < k:  # a tiny index: pad to k columns
        out_s = np.pad(out_s, ((0, 0), (0, k - kp)), constant_values=np.nan)
        out_p = np.pad(out_p, ((0, 0), (0, k - kp)), constant_values=-1)
    short = np.flatnonzero(ok.sum(axis=1) < min(k, allowed))
    if len(short):
        s2, p2 = _pre_filter(index, inner, q[short], k, pos_mask, allowed, fraction, exact_items)
        out_s[short], out_p[short] = s2, p2
    return out_s, out_p


def _pre_filter(index: Any, inner: Any, q: np.ndarray, k: int, pos_mask: np.ndarray, allowed: int, fraction: float,
                exact_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The allowed items only: exact scoring, or the ANN structure searched with a selector (cost-based)."""
    if index.kind != "flat":
        limit = EXACT_ITEMS if exact_items is None else exact_items
        exact = (allowed * EXACT_COST <= _ann_cost(index, inner, k, fraction)) if limit is None else allowed <= limit
        target = _exact_target(index, inner) if exact else None
        if target is not None:
            return _exact_subset(target, q, k, pos_mask, index.metric)
    else:
        exact = False
    sel, bits = _bitmap(pos_mask)
    if index.kind == "flat":
        target, params = inner, faiss.SearchParameters(sel=sel)
        if index._quant.active:  # compact codes: re-scored, or (binary) scanned in their store (indexes/quantize.py)
            target, params = masked_target(index._quant, inner, sel)
    elif index.kind == "hnsw":
        target, params = inner, faiss.SearchParametersHNSW(sel=sel, efSearch=_hnsw_ef(index, k, fraction))
    else:
        target, params = _ivf_plan(inner, sel, k, fraction, exact, index.params)
    params._keep = (sel, bits, getattr(params, "base_index_params", None))
    return target.search(q, k, params=params)


def _ivf_plan(inner: Any, sel: Any, k: int, fraction: float, exact: bool, p: dict[str, Any]) -> tuple[Any, Any]:
    refine = isinstance(inner, faiss.IndexRefine)
    ivf = faiss.downcast_index(inner.base_index) if refine else inner
    nprobe = int(ivf.nlist) if exact else _ivf_nprobe(ivf, p, fraction)  # exact without refine codes: every list
    ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    if not refine:
        return inner, ivf_params
    params = faiss.IndexRefineSearchParameters(k_factor=p["k_factor"], base_index_params=ivf_params)
    params.sel = sel
    return inner, params
