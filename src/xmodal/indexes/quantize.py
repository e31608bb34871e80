"""Compact embeddings for the FAISS backend: float16, int8 and binary codes, with float re-scoring.

``FaissIndex(dim, quantize=..., rescore=...)`` (``xmodal index --quantize``) stores each vector as

============  ==========================================  =========  ==========================
quantize      searched codes (faiss)                      bytes/dim  default re-scoring store
============  ==========================================  =========  ==========================
``none``      float32 (``IndexFlat``)                     4          --
``fp16``      ``IndexScalarQuantizer`` ``QT_fp16``         2          none (fp16 is near exact)
``int8``      ``IndexScalarQuantizer`` ``QT_8bit``         1          ``fp16``
``binary``    ``IndexLSH`` sign bits (thresholds trained)  1/8        ``int8``
============  ==========================================  =========  ==========================

int8 ranges are calibrated per dimension (min/max) on the first ``add``/``train``; binary thresholds are the
per-dimension medians of the same vectors (sign bits of the centred data). Later vectors outside the
calibrated range are clipped, so calibrate on a representative sample (``FaissIndex.train``) when you add
in small batches.

Re-scoring (why and where the float vectors live): the codes pick ``rescore_factor * k`` candidates,
which are then scored again with the float query against a finer copy -- fp16 (2 bytes/dim) or int8 --
and re-ordered (faiss ``IndexRefine``). That copy is part of ``index.faiss``; an index opened from disk
memory-maps it (``FaissIndex.load(mmap=True)``, the default), so a search reads only the candidates'
rows of it, while the searched codes are scanned in full. ``bytes_per_item`` reports both parts.
No float32 copy is kept anywhere (``benchmarks/quantize.py`` measures recall and bytes).

Binary needs its re-scoring store: Hamming distances rank candidates, the store gives the scores; a
filtered search (or one after ``remove``, which is masked) scans the re-scoring store's codes directly
(IndexLSH cannot take an id selector), so it is exact w.r.t. that store, and slower than the
unfiltered binary search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from ..errors import InvalidInputError

QUANTIZE = ("none", "fp16", "int8", "binary")
RESCORE = ("fp16", "int8")
DEFAULT_RESCORE: dict[str, str | None] = {"none": None, "fp16": None, "int8": "fp16", "binary": "int8"}
# candidates re-scored per requested result: measured with benchmarks/quantize.py (100k x 512): int8 -> fp16
# reaches its ceiling at 2, binary -> int8 at 16-20
DEFAULT_FACTOR = {"none": 1, "fp16": 4, "int8": 4, "binary": 20}
_SQ_TYPES = {"fp16": "QT_fp16", "int8": "QT_8bit"}
_BYTES_PER_DIM = {"none": 4.0, "fp16": 2.0, "int8": 1.0, "binary": 0.125}
_SMALL_SAMPLE = 10_000  # int8 ranges calibrated on fewer vectors than this get a margin (unseen values clip)


@dataclass(frozen=True)
class Quantization:
    """The resolved settings: ``quantize`` codes searched, ``rescore`` store (None: none), candidates per result."""

    quantize: str = "none"
    rescore: str | None = None
    factor: int = 1

    @property
    def active(self) -> bool:
        return self.quantize != "none"

    @property
    def refines(self) -> bool:
        """A faiss ``IndexRefine`` wraps the codes (it cannot delete: removals are masked)."""
        return self.rescore is not None

    def bytes_per_item(self, dim: int) -> dict[str, float]:
        """Bytes per item of the searched codes (scanned on every search) and of the re-scoring store
        (only the candidates' rows are read); ``IndexIDMap2`` adds 8 bytes/item of ids to either."""
        searched = _BYTES_PER_DIM[self.quantize] * dim
        store = _BYTES_PER_DIM[self.rescore] * dim if self.rescore else 0.0
        return {"searched": searched, "rescore_store": store, "total": searched + store}


def resolve(quantize: str | None, rescore: str | None, factor: int | None, kind: str) -> Quantization:
    """Check the options (one clear line each) and fill in the defaults; ``rescore="auto"`` = the default store."""
    quantize = quantize or "none"
    if quantize not in QUANTIZE:
        raise InvalidInputError(f"unknown quantize '{quantize}'; choose one of {', '.join(QUANTIZE)}.")
    if quantize == "none":
        if rescore not in (None, "auto", "none"):
            raise InvalidInputError("rescore needs quantized codes (quantize fp16, int8 or binary).")
        return Quantization()
    if kind != "flat":
        raise InvalidInputError(f"quantize='{quantize}' works with kind='flat' (compressed codes, exact scan); "
                                f"kind='{kind}' is not supported with it (ivfpq is already compressed: PQ codes + "
                                "an sq8 refine).")
    store = DEFAULT_RESCORE[quantize] if rescore in (None, "auto") else (None if rescore == "none" else rescore)
    if store is not None and store not in RESCORE:
        raise InvalidInputError(f"unknown rescore '{rescore}'; choose auto, none, {' or '.join(RESCORE)}.")
    if store is not None and _BYTES_PER_DIM[store] <= _BYTES_PER_DIM[quantize]:
        raise InvalidInputError(f"re-scoring {quantize} codes with a {store} store gains nothing: the store must be "
                                "finer than the codes (int8 -> fp16, binary -> int8 or fp16).")
    if quantize == "binary" and store is None:
        raise InvalidInputError("binary codes need a re-scoring store (Hamming distances are not scores): "
                                "use rescore='int8' (default) or 'fp16'.")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1):
        raise InvalidInputError(f"rescore_factor must be a positive integer; got {factor!r}.")
    return Quantization(quantize, store, int(factor) if factor else DEFAULT_FACTOR[quantize] if store else 1)


def _scalar(dim: int, qtype: str, metric: int, train: np.ndarray) -> Any:
    index = faiss.IndexScalarQuantizer(dim, getattr(faiss.ScalarQuantizer, qtype), metric)
    if qtype == "QT_8bit":
        # per-dimension [min, max] of the calibration vectors; a small sample is widened by 10% each side,
        # so values it did not see clip less (a single vector would otherwise give an empty range)
        index.sq.rangestat = faiss.ScalarQuantizer.RS_minmax
        index.sq.rangestat_arg = 0.0 if len(train) >= _SMALL_SAMPLE else 0.1
        if len(train) < 2:
            train = np.concatenate([train, -train, np.zeros_like(train)])  # a symmetric range around the lone vector
    index.train(train)
    return index


def _binary(dim: int, metric: int, train: np.ndarray) -> Any:
    lsh = faiss.IndexLSH(dim, dim, False, True)  # one sign bit per dimension, thresholds = trained medians
    lsh.train(train)
    # IndexRefine requires equal metrics; IndexLSH always ranks by Hamming distance whatever this says,
    # and the re-scoring store's metric gives the scores.
    lsh.metric_type = metric
    return lsh


def new_index(dim: int, metric: int, q: Quantization, train: np.ndarray) -> Any:
    """The faiss index holding ``q``'s codes (and re-scoring store), calibrated on ``train``; the caller wraps it
    in ``IndexIDMap2``."""
    train = np.ascontiguousarray(train, dtype=np.float32)
    base = _binary(dim, metric, train) if q.quantize == "binary" else _scalar(dim, _SQ_TYPES[q.quantize], metric, train)
    if not q.refines:
        return base
    store = _scalar(dim, _SQ_TYPES[q.rescore], metric, train)
    refine = faiss.IndexRefine(base, store)  # faiss' Python wrapper keeps base and store alive with it
    refine.k_factor = float(q.factor)
    return refine


def apply_factor(index: Any, q: Quantization) -> None:
    """Set the re-scoring candidates per result on a (possibly loaded) quantized index (``IndexIDMap2``)."""
    if q.refines and index is not None:
        faiss.downcast_index(index.index).k_factor = float(q.factor)


def search_params(q: Quantization, selector: Any) -> Any:
    """Search parameters carrying an id ``selector`` into the codes' search (``StoreScan`` for binary codes)."""
    params = faiss.SearchParameters(sel=selector)
    if not q.refines:
        return params
    if q.quantize == "binary":
        return StoreScan(selector)  # IndexLSH takes no selector
    out = faiss.IndexRefineSearchParameters(k_factor=float(q.factor), base_index_params=params)
    out.sel = selector
    out._keep = (selector, params)
    return out


def masked_target(q: Quantization, inner: Any, selector: Any) -> tuple[Any, Any]:
    """(index to search, params) for a selector over positions of the codes index ``inner`` (the index inside
    ``IndexIDMap2``): the refine wrapper with its own params, or for binary codes their re-scoring store."""
    if not q.refines:
        return inner, faiss.SearchParameters(sel=selector)
    if q.quantize == "binary":
        return faiss.downcast_index(inner.refine_index), faiss.SearchParameters(sel=selector)
    base = faiss.SearchParameters(sel=selector)
    params = faiss.IndexRefineSearchParameters(k_factor=float(q.factor), base_index_params=base)
    params.sel = selector
    params._keep = (selector, base)  # the C++ params only point at these
    return inner, params


@dataclass
class StoreScan:
    """A binary index's filtered search: the re-scoring store's codes scanned with an id selector."""

    selector: Any

    def search(self, index: Any, queries: np.ndarray, k: int,
               labels_by_position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and labels (-1: none) of the top ``k``; ``index`` is the ``IndexIDMap2``, whose position -> label
        map translates the selector (over labels) for the store (over positions)."""
        store = faiss.downcast_index(faiss.downcast_index(index.index).refine_index)
        translated = faiss.IDSelectorTranslated(index.id_map, self.selector)
        scores, pos = store.search(queries, k, params=faiss.SearchParameters(sel=translated))
        return scores, labels_by_position[pos]
