"""Filtered FAISS search: a bitmap of allowed items, searched natively, exactly when that is cheaper.

``FaissIndex.search(where=...)`` evaluates the filter on the columnar metadata store
(``metadata_store.MetadataStore``) into a boolean mask over item labels and hands it here. The
mask becomes a ``faiss.IDSelectorBitmap`` over the positions of the wrapped index, and:

- flat: the flat scan skips items outside the bitmap (exact, as unfiltered flat search is);
- HNSW: graph search with the selector, its beam (efSearch) widened by 1/fraction so that it holds as
  many allowed nodes as an unfiltered search, while the filter keeps a large share of the items; below
  ``EXACT_FRACTION`` a graph search would wander through mostly excluded nodes (slow, and fewer than
  ``k`` results when the beam runs dry), so the HNSW storage itself (the float vectors) is scanned
  with the selector: exact, and cheap because only allowed vectors are scored;
- IVF-PQ: the inverted lists are probed with the selector and ``nprobe`` raised by 1/fraction (the
  allowed items nearest to the query lie farther away, in more lists); below ``EXACT_FRACTION`` the
  refine codes (SQ8/float) of the allowed items are scanned instead (without a refine stage: every
  list is probed).

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

EXACT_FRACTION = 0.1  # below this share of allowed items, scan the allowed vectors instead of the ANN structure


def _bitmap(mask: np.ndarray) -> tuple[Any, np.ndarray]:
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


def search_masked(index: Any, q: np.ndarray, k: int, label_mask: np.ndarray,
                  exact_fraction: float = EXACT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, labels) among labels where ``label_mask`` is True; label -1 where fewer exist.

    ``index`` is an ``xmodal.indexes.faiss_index.FaissIndex`` (its wrapped FAISS index, label map and settings).
    """
    pos_labels = index._labels_by_position()[:-1]
    label_mask = np.asarray(label_mask, dtype=bool)
    inside = pos_labels < len(label_mask)
    pos_mask = np.zeros(len(pos_labels), dtype=bool)
    pos_mask[inside] = label_mask[pos_labels[inside]]
    if index._removed:
        pos_mask &= ~np.isin(pos_labels, np.fromiter(index._removed, dtype=np.int64))
    allowed = int(pos_mask.sum())
    if allowed == 0:
        return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
    fraction = allowed / max(1, len(index))
    sel, bits = _bitmap(pos_mask)
    inner = faiss.downcast_index(index._index.index)
    p = index.params
    exact = fraction < exact_fraction
    if index.kind == "flat":
        target, params = inner, faiss.SearchParameters(sel=sel)
    elif index.kind == "hnsw":
        if exact:
            target, params = faiss.downcast_index(inner.storage), faiss.SearchParameters(sel=sel)
        else:
            # the beam must hold as many *allowed* nodes as an unfiltered search would: widen it by 1/fraction
            ef = int(min(max(len(index), k), np.ceil(max(int(p["ef_search"]), k) / fraction)))
            target, params = inner, faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
    else:
        target, params = _ivf_plan(inner, sel, k, fraction, exact, p)
    params._keep = (sel, bits, getattr(params, "base_index_params", None))
    scores, pos = target.search(q, k, params=params)
    labels = np.where(pos >= 0, np.concatenate([pos_labels, [-1]])[pos], -1)
    return scores, labels


def _ivf_plan(inner: Any, sel: Any, k: int, fraction: float, exact: bool, p: dict[str, Any]) -> tuple[Any, Any]:
    refine = isinstance(inner, faiss.IndexRefine)
    ivf = faiss.downcast_index(inner.base_index) if refine else inner
    if exact and refine:  # the refine codes of the allowed items, scanned with the selector
        return faiss.downcast_index(inner.refine_index), faiss.SearchParameters(sel=sel)
    nlist = int(ivf.nlist)
    nprobe = nlist if exact else int(min(nlist, np.ceil(int(p["nprobe"]) / max(fraction, 1e-9))))
    ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    if not refine:
        return inner, ivf_params
    params = faiss.IndexRefineSearchParameters(k_factor=p["k_factor"], base_index_params=ivf_params)
    params.sel = sel
    return inner, params
