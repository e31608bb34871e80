"""Filtered FAISS search: a bitmap of allowed items, searched natively, exactly when that is cheaper.

``FaissIndex.search(where=...)`` evaluates the filter on the columnar metadata store
(``metadata_store.MetadataStore``) into a boolean mask over item labels and hands it here. The
mask becomes a ``faiss.IDSelectorBitmap`` over the positions of the wrapped index, and:

- flat: the flat scan skips items outside the bitmap (exact, as unfiltered flat search is);
- at most ``EXACT_ITEMS`` allowed items (HNSW, IVF-PQ): a graph search would wander through mostly
  excluded nodes (slow, and fewer than ``k`` results when the beam runs dry), so the allowed items'
  stored vectors are scored exactly instead: in place for float storage
  (``faiss.knn_inner_products_by_idx``), decoded for SQ8 refine codes (IVF-PQ without refine codes:
  every list probed);
- HNSW above that: graph search with the selector, its beam (efSearch) widened by
  ``(1/fraction) ** WIDEN`` so that it holds about as many allowed nodes as an unfiltered search;
- IVF-PQ above that: the inverted lists probed with the selector and ``nprobe`` widened by
  ``(1/fraction) ** IVF_WIDEN`` (the nearest allowed items lie farther away, in more lists).

``benchmarks/filtered_search.py`` measures recall@10 against exact filtered search and latency
against unfiltered search for these choices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import faiss
except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
    raise ImportError("filtered FAISS search needs faiss: `pip install faiss-cpu`") from e

from .quantize import masked_target

EXACT_ITEMS = 2048  # at most this many allowed items: score them all exactly instead of searching the ANN structure
WIDEN = 0.5  # HNSW efSearch grows by (1/fraction) ** WIDEN for the filters above EXACT_ITEMS
IVF_WIDEN = 1.0  # IVF nprobe grows by (1/fraction) ** IVF_WIDEN (measured: sqrt left recall@10 at 0.86 for a 50% filter)


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


def _exact_subset(target: Any, q: np.ndarray, k: int, positions: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over the given positions of a flat (float) or scalar-quantised index."""
    if isinstance(target, faiss.IndexFlat):  # scored in place, no copy of the vectors
        vals = np.empty((len(q), k), dtype=np.float32)
        out = np.empty((len(q), k), dtype=np.int64)
        fn = faiss.knn_inner_products_by_idx if metric == "ip" else faiss.knn_L2sqr_by_idx
        fn(faiss.swig_ptr(q), target.get_xb(), faiss.swig_ptr(positions), target.d, len(q), target.ntotal,
           len(positions), k, faiss.swig_ptr(vals), faiss.swig_ptr(out), 0)
        return vals, out
    codes = faiss.rev_swig_ptr(target.codes.data(), target.ntotal * target.code_size).reshape(target.ntotal, -1)
    vecs = target.sa_decode(np.ascontiguousarray(codes[positions]))
    if metric == "ip":
        s = q @ vecs.T
    else:
        s = -((q ** 2).sum(1)[:, None] + (vecs ** 2).sum(1)[None, :] - 2 * q @ vecs.T)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(s, top, axis=1).astype(np.float32)
    if metric != "ip":
        vals = -vals
    out = positions[top]
    if top.shape[1] < k:  # fewer allowed items than k
        vals = np.pad(vals, ((0, 0), (0, k - top.shape[1])), constant_values=-np.inf if metric == "ip" else np.inf)
        out = np.pad(out, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
    return vals, out


def search_masked(index: Any, q: np.ndarray, k: int, label_mask: np.ndarray,
                  exact_items: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, labels) among labels where ``label_mask`` is True; label -1 where fewer exist.

    ``index`` is an ``xmodal.indexes.faiss_index.FaissIndex`` (its wrapped FAISS index, label map and settings).
    """
    pos_mask, full = _position_mask(index, np.asarray(label_mask, dtype=bool))  # full[pos]: label, full[-1] = -1
    allowed = int(np.count_nonzero(pos_mask))
    if allowed == 0:
        return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
    fraction = allowed / max(1, len(index))
    inner = faiss.downcast_index(index._index.index)
    p = index.params
    exact = allowed <= (EXACT_ITEMS if exact_items is None else exact_items)
    widen = (1.0 / fraction) ** WIDEN
    sel = bits = None
    if exact and index.kind != "flat":
        if index.kind == "hnsw":
            target = faiss.downcast_index(inner.storage)
        elif isinstance(inner, faiss.IndexRefine):
            target = faiss.downcast_index(inner.refine_index)
        else:  # IVF-PQ without refine codes: every list probed, PQ distances
            target = None
        if target is not None:
            scores, pos = _exact_subset(target, q, k, np.flatnonzero(pos_mask).astype(np.int64), index.metric)
            return scores, np.where(pos >= 0, full[pos], -1)
    sel, bits = _bitmap(pos_mask)
    if index.kind == "flat":
        target, params = inner, faiss.SearchParameters(sel=sel)
        if index._quant.active:  # compact codes: re-scored, or (binary) scanned in their store (indexes/quantize.py)
            target, params = masked_target(index._quant, inner, sel)
    elif index.kind == "hnsw":
        # the beam must hold about as many *allowed* nodes as an unfiltered search: widened by 1/fraction**WIDEN
        ef = int(min(max(len(index), k), np.ceil(max(int(p["ef_search"]), k) * widen)))
        target, params = inner, faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
    else:
        target, params = _ivf_plan(inner, sel, k, (1.0 / fraction) ** IVF_WIDEN, exact, p)
    params._keep = (sel, bits, getattr(params, "base_index_params", None))
    scores, pos = target.search(q, k, params=params)
    labels = np.where(pos >= 0, full[pos], -1)
    return scores, labels


def _ivf_plan(inner: Any, sel: Any, k: int, widen: float, exact: bool, p: dict[str, Any]) -> tuple[Any, Any]:
    refine = isinstance(inner, faiss.IndexRefine)
    ivf = faiss.downcast_index(inner.base_index) if refine else inner
    nlist = int(ivf.nlist)
    nprobe = nlist if exact else int(min(nlist, np.ceil(int(p["nprobe"]) * widen)))
    ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    if not refine:
        return inner, ivf_params
    params = faiss.IndexRefineSearchParameters(k_factor=p["k_factor"], base_index_params=ivf_params)
    params.sel = sel
    return inner, params
