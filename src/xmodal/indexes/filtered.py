"""Filtered FAISS search: an allow-mask over the index, run by the cheapest plan that keeps recall.

``FaissIndex.search(where=...)`` evaluates the filter on the columnar metadata store
(``metadata_store.MetadataStore``) into a boolean mask over item labels and hands it here. Three plans
(flat indexes always take the selector scan, which is exact and costs what an unfiltered scan costs):

- **post-filter** (HNSW, filters keeping >= ``POST_FRACTION`` of the items): the ordinary unfiltered
  search for ``k'`` results with a beam ``max(efSearch, k')`` wide, ``k'`` the fewest results among which
  ``k`` are allowed with probability ``1 - POST_SHORT`` if the filter is independent of the vectors
  (binomial tail; at 50%, k=10: 33 results, where ``2k/fraction`` asked for 40 and widened the beam 25%),
  disallowed ones dropped -- what vector databases do for broad filters. Chosen when that beam is no
  wider than the selector plan's (below): both walk the graph alike, and the post-filter needs no bitmap.
  Query rows left with fewer than ``k`` allowed results (about ``POST_SHORT`` of them, more when the filter
  follows the vectors) go through the plans below, so the results stay exact-filtered either way. Not for IVF-PQ: its refine stage would re-score ``k' * k_factor`` candidates (random
  reads of refine codes, 1/fraction times more), while the selector keeps disallowed items out of the
  candidates (measured at 50%, 100k x 512, fp16 refine: 4.3x unfiltered post-filtered, 1.2-1.6x with
  the selector, whose ``nprobe`` grows only 1.5x).
- **exact**: the allowed items' stored vectors scored exactly -- in place for float storage
  (``faiss.knn_inner_products_by_idx`` over HNSW's/flat refine's vectors), through the refine codes'
  own scan with an ``IDSelectorBitmap`` (SQ8/fp16 codes), or all IVF lists probed without refine codes.
- **ANN with a selector**: HNSW graph search with the bitmap, its beam (efSearch) widened by
  ``(1/fraction) ** WIDEN`` so it still meets enough allowed nodes; IVF-PQ with ``nprobe`` x
  ``(1/fraction) ** IVF_WIDEN`` (the nearest allowed items lie in more lists).

Exact vs ANN is a cost comparison, not a fixed item count (formerly 2,048 allowed items):

- HNSW, in graph distance computations: exact scores ``allowed`` vectors at ``EXACT_COST`` each; the
  graph search about ``ef * M / 6 + 10 * M`` (faiss' ``hnsw_stats.ndis`` on the benchmark's 100k x 512
  graph, M=16: 242 at ef 32, 464 at 128, 809 at 256 -- the walk is the same with or without a selector).
  One exactly scored vector, gathered from a cache-cold index, took 0.68 us (5,000 allowed of 100k x 512,
  in place) against 0.9 us per graph distance: ``EXACT_COST = 0.75``. At 100k items (efSearch 32, M 16)
  the crossover is near 1,200 allowed items: 500 allowed are scored exactly (recall 1.0; the widened
  graph search reached only 0.2-0.4 there), 5,000 go through the graph.
- IVF-PQ, in PQ codes scanned: ``nprobe * list length`` plus ``k * k_factor`` re-scored candidates;
  exact re-scores every allowed item. Re-scoring one vector from its refine codes (a random read of
  2 B/dim for fp16) costs ``RESCORE_CODES * dim / pq_m`` codes: measured ~4.7 us per fp16 vector vs
  ~0.05 us per PQ code (pq_m 128, dim 512), i.e. ~100. With the lists' selector, disallowed items are
  neither scanned into the candidates nor re-scored.

``WIDEN``: on that graph a 5% filter reached recall@10 0.82 at efSearch 128, 0.91 at 192 and 0.98 at
256 (0.95 unfiltered at 32): ``32 * 20 ** 0.7 = 260``; the former sqrt widening (143) gave 0.90.
``IVF_WIDEN``: IVF-PQ (fp16 refine, nprobe 16, k_factor 16; 0.978 unfiltered) at 5% reached 0.948 with
nprobe 64, 0.970 with 96 and 0.982 with 128: ``16 * 20 ** 0.6 = 97``; at 50% nprobe 16 already gave
0.980 (the former 1/fraction widening doubled the cost for nothing).

``benchmarks/filtered_search.py`` measures recall@10 against exact filtered search and latency
against unfiltered search (same run, interleaved) for these choices.
"""

from __future__ import annotations

import functools
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
POST_SHORT = 0.01  # post-filter: chance a query row gets fewer than k allowed results (then it is searched again)
WIDEN = 0.7  # HNSW efSearch grows by (1/fraction) ** WIDEN with a selector
IVF_WIDEN = 0.6  # IVF nprobe grows by (1/fraction) ** IVF_WIDEN with a selector
EXACT_COST = 0.75  # HNSW: one exactly scored allowed vector, relative to one graph distance (measured, see above)
RESCORE_CODES = 25.0  # IVF-PQ: re-scoring one vector (refine codes) costs this * dim / pq_m PQ codes scanned


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


class _Layout:
    """What the plans need to know of the wrapped FAISS index, read once per index version (swig calls cost
    ~10 us each, a noticeable share of a 0.2 ms query)."""

    def __init__(self, index: Any, full: np.ndarray) -> None:
        self.full, self.wrapper = full, index._index
        self.inner = faiss.downcast_index(index._index.index)
        self.refine = isinstance(self.inner, faiss.IndexRefine)
        self.ivf = faiss.downcast_index(self.inner.base_index) if self.refine else self.inner
        self.exact_target = _exact_target(index, self.inner)
        if index.kind == "ivfpq":
            self.nlist = int(self.ivf.nlist)
            self.list_len = self.ivf.ntotal / max(1, self.nlist)
            self.rescore = RESCORE_CODES * index.dim / int(self.ivf.pq.M)


def _layout(index: Any, full: np.ndarray) -> _Layout:
    cached = getattr(index, "_filter_layout", None)
    if cached is None or cached.full is not full or cached.wrapper is not index._index:
        cached = index._filter_layout = _Layout(index, full)
    return cached


def _costs(index: Any, lay: _Layout, k: int, fraction: float, allowed: int) -> tuple[float, float]:
    """(exact, ANN with selector) cost of one query, in comparable units (see the module docstring)."""
    p = index.params
    if index.kind == "hnsw":  # unit: one graph distance computation
        m = int(p["hnsw_m"])
        return allowed * EXACT_COST, _hnsw_ef(index, k, fraction) * m / 6 + 10 * m
    # IVF-PQ, unit: one PQ code scanned in an inverted list
    ann = _ivf_nprobe(lay.nlist, p, fraction) * lay.list_len + (k * float(p["k_factor"]) * lay.rescore if lay.refine else 0.0)
    exact = allowed * lay.rescore if lay.refine else lay.nlist * lay.list_len  # without refine codes: every list
    return exact, ann


def _hnsw_ef(index: Any, k: int, fraction: float) -> int:
    # the beam must meet about as many *allowed* nodes as an unfiltered search: widened by (1/fraction) ** WIDEN
    return int(min(max(len(index), k), math.ceil(max(int(index.params["ef_search"]), k) * (1.0 / fraction) ** WIDEN)))


@functools.lru_cache(maxsize=1024)
def _binomial_k(k: int, fraction: float, short: float = POST_SHORT) -> int:
    """The fewest results ``n`` with P(Binomial(n, fraction) < k) <= ``short``: among ``n`` unfiltered results
    of a filter independent of the vectors, at least ``k`` are allowed with probability ``1 - short``."""
    n = max(k, math.ceil(k / fraction) - 1)  # below the mean k / fraction the tail is ~1/2: start there
    while n < 64 * k / fraction:  # bounded: the tail shrinks geometrically once n > k / fraction
        if fraction >= 1:
            return n
        # P(X < k) = sum_{j<k} pmf(j); log pmf by the recurrence pmf(j+1) = pmf(j) (n-j)/(j+1) f/(1-f)
        j = np.arange(k - 1, dtype=np.float64)
        logs = n * math.log1p(-fraction) + np.concatenate(
            [[0.0], np.cumsum(np.log((n - j) / (j + 1)) + math.log(fraction / (1 - fraction)))])
        if np.exp(logs).sum() <= short:
            return n
        n += 1
    return n


def _post_k(k: int, fraction: float, stored: int) -> int:
    return int(min(stored, _binomial_k(int(k), round(float(fraction), 4))))


def _post_ef(index: Any, k: int, fraction: float, stored: int) -> int:
    # faiss keeps the beam at efSearch even when more results are asked: the post-filter's beam is >= k' wide.
    # Both HNSW plans walk the graph alike (a selector only decides what enters the results), so the
    # post-filter runs when its beam is no wider than the selector plan's (and saves building the bitmap).
    return max(int(index.params["ef_search"]), _post_k(k, fraction, stored))


def _ivf_nprobe(nlist: int, p: dict[str, Any], fraction: float) -> int:
    return int(min(nlist, math.ceil(int(p["nprobe"]) * (1.0 / fraction) ** IVF_WIDEN)))


def search_masked(index: Any, q: np.ndarray, k: int, label_mask: np.ndarray,
                  exact_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, labels) among labels where ``label_mask`` is True; label -1 where fewer exist.

    ``index`` is an ``xmodal.indexes.faiss_index.FaissIndex`` (its wrapped FAISS index, label map and settings).
    """
    pos_mask, full = _position_mask(index, np.asarray(label_mask, dtype=bool))  # full[pos]: label, full[-1] = -1
    allowed = int(np.count_nonzero(pos_mask))
    if allowed == 0:
        return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
    lay = _layout(index, full)
    fraction = allowed / max(1, len(pos_mask))  # of the stored vectors (removed ones count as disallowed)
    index._filter_plan = None  # which plan ran last ("post", "post+<fallback>", "exact", "ann"): for benchmarks/debugging
    if index.kind == "hnsw" and fraction >= POST_FRACTION and _post_ef(index, k, fraction, len(pos_mask)) <= _hnsw_ef(index, k, fraction):
        index._filter_plan = "post"
        scores, pos = _post_filter(index, lay, q, k, pos_mask, allowed, fraction, exact_items)
    else:
        scores, pos = _pre_filter(index, lay, q, k, pos_mask, allowed, fraction, exact_items)
    return scores, np.where(pos >= 0, full[pos], -1)


def _post_filter(index: Any, lay: _Layout, q: np.ndarray, k: int, pos_mask: np.ndarray, allowed: int, fraction: float,
                 exact_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """HNSW: unfiltered search for k' results, disallowed ones dropped; rows left short go to ``_pre_filter``."""
    kp = _post_k(k, fraction, len(pos_mask))
    scores, pos = lay.inner.search(q, kp, params=faiss.SearchParametersHNSW(efSearch=_post_ef(index, k, fraction, len(pos_mask))))
    ok = pos_mask[pos] & (pos >= 0)  # (position -1 reads the last entry, then is cleared)
    out_s = np.full((len(q), k), np.nan, dtype=np.float32)
    out_p = np.full((len(q), k), -1, dtype=np.int64)
    for i in range(len(q)):  # allowed results first, in their ranked order (a row loop: cheaper than take_along_axis x3)
        keep = np.flatnonzero(ok[i])[:k]
        out_s[i, :len(keep)], out_p[i, :len(keep)] = scores[i, keep], pos[i, keep]
    short = np.flatnonzero(ok.sum(axis=1) < min(k, allowed))
    if len(short):
        index._filter_plan = "post"  # _pre_filter appends its plan
        s2, p2 = _pre_filter(index, lay, q[short], k, pos_mask, allowed, fraction, exact_items)
        out_s[short], out_p[short] = s2, p2
    return out_s, out_p


def _pre_filter(index: Any, lay: _Layout, q: np.ndarray, k: int, pos_mask: np.ndarray, allowed: int, fraction: float,
                exact_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The allowed items only: exact scoring, or the ANN structure searched with a selector (cost-based)."""
    exact = False
    if index.kind != "flat":
        limit = EXACT_ITEMS if exact_items is None else exact_items
        if limit is None:
            cost_exact, cost_ann = _costs(index, lay, k, fraction, allowed)
            exact = cost_exact <= cost_ann
        else:
            exact = allowed <= limit
        if exact and lay.exact_target is not None:
            _note_plan(index, "exact")
            return _exact_subset(lay.exact_target, q, k, pos_mask, index.metric)
    _note_plan(index, "exact" if exact else "ann")
    sel, bits = _bitmap(pos_mask)
    if index.kind == "flat":
        target, params = lay.inner, faiss.SearchParameters(sel=sel)
        if index._quant.active:  # compact codes: re-scored, or (binary) scanned in their store (indexes/quantize.py)
            target, params = masked_target(index._quant, lay.inner, sel)
    elif index.kind == "hnsw":
        target, params = lay.inner, faiss.SearchParametersHNSW(sel=sel, efSearch=_hnsw_ef(index, k, fraction))
    else:
        target, params = lay.inner, _ivf_params(lay, sel, fraction, exact, index.params)
    params._keep = (sel, bits, getattr(params, "base_index_params", None))
    return target.search(q, k, params=params)


def _note_plan(index: Any, plan: str) -> None:
    index._filter_plan = plan if index._filter_plan is None else f"{index._filter_plan}+{plan}"


def _ivf_params(lay: _Layout, sel: Any, fraction: float, exact: bool, p: dict[str, Any]) -> Any:
    nprobe = lay.nlist if exact else _ivf_nprobe(lay.nlist, p, fraction)  # exact without refine codes: every list
    ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    if not lay.refine:
        return ivf_params
    params = faiss.IndexRefineSearchParameters(k_factor=p["k_factor"], base_index_params=ivf_params)
    params.sel = sel
    return params
