"""FAISS backend: exact inner-product search by default, HNSW and IVF-PQ as options.

Items have string ids; FAISS sees dense int64 labels (positions in ``self._ids``). Removed items
are dropped from FAISS where the index type supports it (Flat, IVF) and masked with an
``IDSelector`` where it does not (HNSW), so results never contain a removed id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError
from .base import as_float32_matrix, as_id_filter, check_dim, check_k, check_new_ids, read_index_json
from .manifest import Manifest, atomic_folder, check_compatible, read_manifest, write_manifest
from .sizing import ivf_nlist
from . import quantize as quant
from .recall import Tuning, exact_topk, recall_at_k
from .filtered import search_masked
from .filters import parse_filter
from .metadata_store import MetadataStore
from . import segments as _segments

try:
    import faiss
except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
    raise ImportError("the FAISS backend needs faiss: `pip install faiss-cpu`") from e

KINDS = ("flat", "hnsw", "ivfpq")
# IVF-PQ refine codes: bytes per dimension (None: no refine stage). All are flat codes (memory-mappable).
REFINES: dict[str | None, int] = {None: 0, "sq8": 1, "fp16": 2, "flat": 4}


def refine_codes(refine: str | None) -> str | None:
    """The refine codes a name asks for (``"none"``, the CLI's spelling of no refine stage, is None); unknown names refused."""
    codes = None if refine == "none" else refine
    if codes not in REFINES:
        raise InvalidInputError(f"unknown refine {refine!r}; choose sq8, fp16, flat or none.")
    return codes


class FaissIndex:
    """A FAISS index over string ids.

    Args:
        dim: vector dimension.
        kind: ``"flat"`` (exact), ``"hnsw"`` (graph ANN), or ``"ivfpq"`` (inverted lists + product
            quantisation; needs training: the first ``add`` trains it on the vectors given).
        metric: ``"ip"`` (inner product; cosine on L2-normalised vectors) or ``"l2"``.
        model_id: name of the model that made the vectors; checked again on load.
        hnsw_m / ef_construction / ef_search: HNSW graph degree and beam widths.
        nlist / pq_m / pq_bits / nprobe: IVF-PQ lists, sub-quantisers, bits per code, lists probed.
        refine / k_factor: IVF-PQ re-scores ``k * k_factor`` candidates with finer codes: ``"sq8"``
            (8-bit scalar quantisation, 1 byte/dim: recall close to exact at a quarter of float32's
            memory on spread-out vectors), ``"fp16"`` (half floats, 2 bytes/dim: for tightly clustered
            vectors, whose near neighbours differ by less than SQ8's step -- measured in
            ``benchmarks/filtered_search.py``: SQ8 re-ranking caps recall@10 at ~0.6 there, fp16 ~0.97),
            ``"flat"`` (float32) or ``None`` (PQ distances only, smallest, least accurate).
        target_recall: HNSW/IVF-PQ: ``save`` first tunes the search settings to this recall@10 (``tune``),
            again whenever the index has grown or shrunk by more than 10% since the last tuning.
        tuning: the last ``tune`` outcome (restored from a manifest).
        quantize / rescore / rescore_factor: kind='flat' only: store ``fp16``, ``int8`` or ``binary`` codes
            instead of float32, re-scoring ``rescore_factor * k`` candidates against an ``fp16``/``int8`` copy
            (``"auto"``: int8 -> fp16, binary -> int8, fp16 -> none). See ``xmodal.indexes.quantize``.
    """

    engine = "faiss"

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        metric: str = "ip",
        model_id: str | None = None,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        nlist: int | None = None,
        pq_m: int | None = None,
        pq_bits: int = 8,
        nprobe: int = 32,
        refine: str | None = "sq8",
        k_factor: int = 8,
        target_recall: float | None = None,
        tuning: Mapping[str, Any] | None = None,
        quantize: str = "none",
        rescore: str | None = "auto",
        rescore_factor: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise InvalidInputError(f"unknown FAISS index kind '{kind}'; choose one of {KINDS}.")
        if metric not in ("ip", "l2"):
            raise InvalidInputError(f"metric must be 'ip' or 'l2'; got '{metric}'.")
        refine = refine_codes(refine)
        self.dim = check_dim(dim)
        self.kind = kind
        self.metric = metric
        self.model_id = model_id
        self.params: dict[str, Any] = {
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "nlist": nlist,
            "pq_m": pq_m,
            "pq_bits": pq_bits,
            "nprobe": nprobe,
            "refine": refine,
            "k_factor": k_factor,
            "target_recall": target_recall,
        }
        self._quant = quant.resolve(quantize, rescore, rescore_factor, kind)
        if self._quant.active:  # recorded (manifest) only when used: older readers see the params they know
            self.params.update(quantize=self._quant.quantize, rescore=self._quant.rescore or "none",
                               rescore_factor=self._quant.factor)
        if target_recall is not None and not 0 < target_recall <= 1:
            raise InvalidInputError(f"the target recall must be in (0, 1]; got {target_recall}.")
        # label -> id (None once removed), id -> label, id -> metadata. A loaded index keeps them as
        # Arrow columns (memory-mapped ids.arrow) and builds these Python objects only when asked
        # (add/remove/metadata), so opening and searching 10M items parses nothing per item.
        self._ids_list: list[str | None] | None = []
        self._label_map: dict[str, int] | None = {}
        self._meta_map: dict[str, dict[str, Any]] | None = {}
        self._table: Any = None  # pyarrow Table (id, meta) of a loaded index, until materialised
        self._n_live = 0
        self._mmap_path: str | None = None  # index.faiss memory-mapped from here (read-only until changed)
        self._mmap_file: _OpenFile | None = None  # that file, kept open: read into memory on the first change
        self._reserve = 0  # vectors to make room for when the FAISS index is created (reserve)
        self._removed: set[int] = set()  # labels masked at search time (HNSW cannot delete)
        self._index: faiss.Index | None = None
        self._ids_arr: np.ndarray | None = None  # cached object array for fast label->id lookup
        self._pos_ids: np.ndarray | None = None  # cached: label by position in the wrapped FAISS index
        self.tuning: Tuning | None = Tuning.from_dict(tuning)  # measured recall of the current search params
        self._store: MetadataStore | None = None  # columnar metadata for where= filters (built/loaded lazily)
        self._store_path: str | None = None  # metadata.parquet of a loaded index
        # Items added after the saved base (segments.Delta, searched beside it) and what the folder holds:
        # a small update's save appends a segment instead of rewriting the index (indexes/segments.py).
        self._delta: _segments.Delta | None = None
        self._saved: _segments.SavedState | None = None
        self.segment_policy = _segments.SegmentPolicy()

    # ------------------------------------------------------------------ id columns
    @property
    def _ids(self) -> list[str | None]:
        if self._ids_list is None:
            self._ids_list = _id_strings(self._table.column("id"))
        return self._ids_list

    @property
    def _label(self) -> dict[str, int]:
        if self._label_map is None:
            self._label_map = {i: lab for lab, i in enumerate(self._ids) if i is not None}
        return self._label_map

    @property
    def _meta(self) -> dict[str, dict[str, Any]]:
        if self._meta_map is None:
            metas = self._table.column("meta").to_pylist()
            self._meta_map = {i: json.loads(m) for i, m in zip(self._ids, metas) if i is not None and m}
        return self._meta_map

    def _ids_of(self, labels: np.ndarray) -> np.ndarray:
        """Item ids (object array, None for label -1) of an array of labels."""
        if self._ids_list is None:  # loaded and untouched: read the few ids from the Arrow column
            import pyarrow as pa

            flat = labels.ravel()
            col = self._table.column("id").take(pa.array(np.where(flat < 0, 0, flat)))
            out = np.array(_id_strings(col), dtype=object)
            out[flat < 0] = None
            return out.reshape(labels.shape)
        return self._lookup()[labels]

    def _writable(self, capacity: int = 0) -> None:
        """A memory-mapped FAISS index is read-only: read it into memory before the first change.

        Read from the file opened when the index was loaded (still that version even if a later save in
        place removed its name), after releasing the mapping: one copy of the index in memory. (A copy
        through ``serialize_index``/``deserialize_index`` held the mapped pages, a growing byte buffer, its
        numpy copy and the new index at once: peak RSS ~5x the index, 11 GiB for 1M x 512 flat.)
        ``capacity``: vectors to make room for at once (see ``reserve``).
        """
        if self._mmap_path is not None:
            mapped, self._index, self._tombstone_cache = self._index, None, None
            del mapped  # unmaps: the pages are read once more from the file (page cache), not copied twice
            try:
                self._index = _read_index_fd(self._mmap_file.fd)
            except RuntimeError as e:
                from ..errors import CorruptIndexError

                raise CorruptIndexError(f"'{self._mmap_path}' could not be read back into memory ({e}); "
                                        "reload the index.") from None
            self._mmap_path = None
            self._mmap_file = None
            self._pos_ids = None
            self._apply_search_params()
        if capacity:
            _reserve_codes(self._index, capacity)

    def reserve(self, total: int) -> None:
        """Make room for ``total`` vectors in the index's vector storage at once, before streaming ``add`` calls
        (e.g. the count of the embedding shards being indexed): the storage is then filled in place instead of
        reallocated as it grows (each growth step copied it, holding old and new copies at once)."""
        self._reserve = max(int(total), 0)
        if self._index is not None and self._delta is None:
            self._writable(self._reserve)

    # ------------------------------------------------------------------ building
    @property
    def _faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def _new_faiss_index(self, train_vectors: np.ndarray) -> faiss.Index:
        p = self.params
        if self._quant.active:
            return faiss.IndexIDMap2(quant.new_index(self.dim, self._faiss_metric, self._quant, train_vectors))
        if self.kind == "flat":
            base = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
            return faiss.IndexIDMap2(base)
        if self.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, p["hnsw_m"], self._faiss_metric)
            base.hnsw.efConstruction = p["ef_construction"]
            base.hnsw.efSearch = p["ef_search"]
            return faiss.IndexIDMap2(base)
        # IVF-PQ: choose sizes from the data when not given (about 4*sqrt(n) lists, >= 39 points per list).
        n = len(train_vectors)
        nlist = p["nlist"] or ivf_nlist(n)
        pq_m = p["pq_m"] or _largest_divisor_at_most(self.dim, max(1, self.dim // 4))
        if self.dim % pq_m:
            raise InvalidInputError(f"pq_m={pq_m} must divide the dimension {self.dim}.")
        if n < max(nlist, 2 ** p["pq_bits"]):
            raise InvalidInputError(
                f"IVF-PQ needs at least {max(nlist, 2 ** p['pq_bits'])} vectors in the first add() to train "
                f"(got {n}); add more vectors at once or use kind='flat'/'hnsw'."
            )
        quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
        ivf = faiss.IndexIVFPQ(quantizer, self.dim, nlist, pq_m, p["pq_bits"], self._faiss_metric)
        ivf.nprobe = p["nprobe"]
        index: faiss.Index = ivf
        if p["refine"]:
            if p["refine"] == "flat":
                fine = faiss.IndexFlat(self.dim, self._faiss_metric)
            else:  # per-dimension min/max trained SQ8 (QT_8bit; the uniform and quantile ranges measured worse), or fp16
                qt = faiss.ScalarQuantizer.QT_8bit if p["refine"] == "sq8" else faiss.ScalarQuantizer.QT_fp16
                fine = faiss.IndexScalarQuantizer(self.dim, qt, self._faiss_metric)
            index = faiss.IndexRefine(ivf, fine)
            index.k_factor = p["k_factor"]
        index.train(train_vectors)
        p.update(nlist=nlist, pq_m=pq_m)
        return faiss.IndexIDMap2(index)

    @property
    def _masks_removed(self) -> bool:
        # HNSW graphs and refine wrappers cannot delete: removed labels are masked at search time.
        # IVF cannot either, behind IndexIDMap2: IVF keeps the sequential ids it gave at add time, so
        # after remove_ids the wrapper's position -> label map no longer matched (wrong ids, IndexError)
        # and later adds reused live ids. Masking keeps labels and positions in step.
        return self.kind in ("hnsw", "ivfpq") or self._delta is not None or self._quant.refines  # delta: tombstones (segments)

    def _ivf(self) -> Any:
        inner = faiss.downcast_index(self._index.index)
        if isinstance(inner, faiss.IndexRefine):
            inner.k_factor = self.params["k_factor"]
            return faiss.downcast_index(inner.base_index)
        return inner

    def train(self, vectors: Any) -> None:
        """Train IVF-PQ on a sample before streaming ``add`` calls (other kinds need no training)."""
        vecs = as_float32_matrix(vectors, self.dim)
        if self._index is not None:
            raise InvalidInputError("the index is already trained/populated.")
        self._index = self._new_faiss_index(vecs)
        if self._reserve:
            _reserve_codes(self._index, self._reserve)

    def add(
        self,
        ids: Sequence[str],
        vectors: Any,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Add vectors under string ids (unique, not yet present)."""
        vecs = as_float32_matrix(vectors, self.dim)
        ids = check_new_ids(ids, self._label, len(vecs))
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidInputError(f"got {len(metadata)} metadata records for {len(ids)} ids.")
        if not ids:
            return
        if self._index is None:
            self._index = self._new_faiss_index(vecs)
            if self._reserve:
                _reserve_codes(self._index, self._reserve)
        start = len(self._ids)
        labels = np.arange(start, start + len(ids), dtype=np.int64)
        if self._delta is not None:  # after a save/load: the saved base stays as it is (and mapped)
            self._delta.add(labels, vecs)
        else:
            self._writable()
            self._index.add_with_ids(vecs, labels)
        self._ids.extend(ids)
        label, meta = self._label, self._meta
        for j, i in enumerate(ids):
            label[i] = start + j
            if metadata is not None:
                meta[i] = dict(metadata[j])
        self._n_live += len(ids)
        self._ids_arr = self._pos_ids = None
        if metadata is not None and (self._store is not None or self._store_path is not None):
            self.metadata_store().append(metadata, labels)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id; unknown ids are ignored. Returns how many were removed."""
        labels = [self._label.pop(str(i)) for i in ids if str(i) in self._label]
        if not labels:
            return 0
        self._n_live -= len(labels)
        for lab in labels:
            self._meta.pop(self._ids[lab], None)
            self._ids[lab] = None
        arr = np.asarray(labels, dtype=np.int64)
        if self._masks_removed:
            self._removed.update(labels)
        else:
            self._writable()
            self._index.remove_ids(faiss.IDSelectorBatch(arr))
        self._ids_arr = self._pos_ids = None
        return len(labels)

    # ------------------------------------------------------------------ querying
    def __len__(self) -> int:
        return self._n_live

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._label

    def ids(self) -> list[str]:
        return [i for i in self._ids if i is not None]

    def metadata(self, item_id: str) -> dict[str, Any]:
        if item_id not in self._label:
            raise KeyError(item_id)
        return self._meta.get(item_id, {})

    def update_metadata(self, item_ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        """Replace the metadata of items already in the index (their vectors stay as they are)."""
        item_ids = list(item_ids)
        if len(item_ids) != len(metadata):
            raise InvalidInputError(f"got {len(metadata)} metadata records for {len(item_ids)} ids.")
        missing = [i for i in item_ids if i not in self._label]
        if missing:
            raise InvalidInputError(f"unknown ids: {missing[:5]}")
        for i, m in zip(item_ids, metadata):
            self._meta[i] = dict(m)
        if self._saved is not None:
            self._saved.meta_changed = True  # saved records changed: the next save writes a full base
        if self._store is not None or self._store_path is not None:
            self.metadata_store().replace(metadata, [self._label[i] for i in item_ids])

    def metadata_store(self) -> MetadataStore:
        """The columnar metadata of every label (loaded from ``metadata.parquet``, else built from the records)."""
        if self._store is None:
            if self._store_path is not None:
                self._store = MetadataStore.load(self._store_path)
            else:
                meta = self._meta
                self._store = MetadataStore.from_records([meta.get(i) if i is not None else None for i in self._ids])
        return self._store

    def _n_labels(self) -> int:
        return len(self._table) if self._ids_list is None else len(self._ids_list)

    def _live_labels(self) -> np.ndarray:
        if self._ids_list is None:
            return np.asarray(self._table.column("id").is_valid())
        return np.fromiter((i is not None for i in self._ids_list), dtype=bool, count=len(self._ids_list))

    def reconstruct(self, item_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of the given ids (exact for flat/HNSW, decoded for IVF-PQ)."""
        if self._index is None:
            raise InvalidInputError("the index is empty.")
        missing = [i for i in item_ids if i not in self._label]
        if missing:
            raise InvalidInputError(f"unknown ids: {missing[:5]}")
        d = self._delta
        return np.stack([d.index.reconstruct(lab) if d is not None and lab >= d.start else self._index.reconstruct(lab)
                         for lab in (int(self._label[i]) for i in item_ids)]).astype(np.float32)

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None,
                          k_factor: int | None = None) -> None:
        new = {key: v for key, v in (("ef_search", ef_search), ("nprobe", nprobe), ("k_factor", k_factor)) if v is not None}
        if self.tuning is not None and any(self.params.get(key) != v for key, v in new.items()):
            self.tuning = None  # the measured recall belonged to the old settings
        self.params.update(new)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._index is None:
            return
        if self.kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = self.params["ef_search"]
        elif self.kind == "ivfpq":
            self._ivf().nprobe = self.params["nprobe"]  # _ivf() also sets the refine k_factor
        quant.apply_factor(self._index, self._quant)

    def _lookup(self) -> np.ndarray:
        if self._ids_arr is None:
            self._ids_arr = np.array(self._ids + [None], dtype=object)  # label -1 -> None
        return self._ids_arr

    def _labels_by_position(self) -> np.ndarray:
        """Label of each position in the index wrapped by IndexIDMap2 (last entry -1, for position -1)."""
        if self._pos_ids is None:
            self._pos_ids = np.concatenate([faiss.vector_to_array(self._index.id_map), np.array([-1], dtype=np.int64)])
        return self._pos_ids

    def _search_labels(self, q: np.ndarray, k: int, filter: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS scores and int64 labels (-1: no result) of the top-``k`` per query row (base + delta)."""
        found = self._search_base(q, k, filter)
        if self._delta is None or not len(self._delta):
            return found
        mask = None
        if filter is not None:
            mask = np.zeros(self._n_labels(), dtype=bool)
            mask[[self._label[i] for i in filter if i in self._label]] = True
        return _segments.merge(found, self._delta.search(q, k, self._removed, mask), k, self.metric)

    def _search_base(self, q: np.ndarray, k: int, filter: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if filter is None and not self._removed:
            # Search the wrapped index and map positions to labels here, as IndexIDMap2 would: its own
            # translation loop opens an OpenMP region on every call, which made a single-query HNSW
            # search ~10x slower than raw FAISS whenever other processes kept the cores busy.
            scores, pos = faiss.downcast_index(self._index.index).search(q, k)
            return scores, self._labels_by_position()[pos]
        if filter is None:  # tombstones only: a cached bitmap over positions, searched the same direct way
            tomb = _segments.tombstone_params(self)
            if self._quant.active:  # compact codes: their own target and params (binary: the re-scoring store)
                target, qparams = quant.masked_target(self._quant, faiss.downcast_index(self._index.index), tomb.sel)
                scores, pos = target.search(q, k, params=qparams)
            else:
                scores, pos = faiss.downcast_index(self._index.index).search(q, k, params=tomb)
            return scores, self._labels_by_position()[pos]
        params = self._search_params(filter)  # filter= only: built per call
        if isinstance(params, quant.StoreScan):  # binary codes take no id selector: scan their re-scoring store
            return params.search(self._index, q, k, self._labels_by_position())
        return self._index.search(q, k, params=params)

    def search(
        self, queries: Any, k: int, filter: Iterable[str] | None = None, where: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids and scores for each query row.

        ``filter``: only these ids may be returned (ids unknown to the index are ignored).
        ``where``: only items whose metadata satisfies this filter expression (``xmodal.indexes.filters``).
        Both are executed by FAISS with an ID selector (``indexes.filtered``): exact scan of the allowed
        vectors when few are allowed, so a selective filter still returns ``k`` results when there are ``k``.
        """
        k = check_k(k)
        q = as_float32_matrix(queries, self.dim, what="queries")
        expr = parse_filter(where) if where is not None else None
        if self._index is None or len(self) == 0:
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), None, dtype=object)
        filter = as_id_filter(filter)
        if filter is None and expr is None:
            scores, labels = self._search_labels(q, k)
        else:
            n = self._n_labels()
            mask = self.metadata_store().mask(expr, n) if expr is not None else np.ones(n, dtype=bool)
            if filter is not None:
                allowed = np.zeros(n, dtype=bool)
                allowed[[self._label[i] for i in filter if i in self._label]] = True
                mask &= allowed
            scores, labels = search_masked(self, q, k, mask)
            if self._delta is not None and len(self._delta):
                scores, labels = _segments.merge((scores, labels), self._delta.search(q, k, self._removed, mask), k,
                                                 self.metric)
        ids = self._ids_of(labels)
        missing = labels < 0
        if missing.any():
            scores = scores.copy()
            scores[missing] = -np.inf
        if self.metric == "l2":
            scores = -scores  # higher is better everywhere in xmodal
        return scores, ids

    # ------------------------------------------------------------------ recall tuning
    def _stored_chunks(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, vectors) of every live item, read back from the index (exact for flat/HNSW/flat refine)."""
        inner = faiss.downcast_index(self._index.index)
        labels = self._labels_by_position()[:-1]
        removed = np.fromiter(self._removed, dtype=np.int64) if self._removed else None
        for s in range(0, inner.ntotal, chunk):
            n = min(chunk, inner.ntotal - s)
            lab = labels[s:s + n]
            vecs = inner.reconstruct_n(s, n)
            if removed is not None:
                keep = ~np.isin(lab, removed)
                lab, vecs = lab[keep], vecs[keep]
            yield lab, vecs
        if self._delta is not None and len(self._delta):
            lab, vecs = self._delta.labels(), self._delta.vectors()
            keep = ~np.isin(lab, removed) if removed is not None else slice(None)
            yield lab[keep], vecs[keep]

    def _label_chunks(self, source: Callable[[], Iterable[tuple[Sequence[str], Any]]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vecs in source():
            lab = np.fromiter((self._label.get(str(i), -1) for i in ids), dtype=np.int64, count=len(ids))
            keep = lab >= 0
            yield lab[keep], np.asarray(vecs, dtype=np.float32)[keep]

    def _recall_at(self, params: dict[str, Any], q: np.ndarray, truth: np.ndarray, k: int) -> float:
        self.params.update(params)
        self._apply_search_params()
        found = np.concatenate([self._search_labels(q[s:s + 256], k)[1] for s in range(0, len(q), 256)])
        return recall_at_k(found, truth)

    def tune(self, target_recall: float = 0.95, *, k: int = 10, sample: int = 1000, seed: int = 0,
             source: Callable[[], Iterable[tuple[Sequence[str], Any]]] | None = None,
             max_ef_search: int = 4096, max_k_factor: int = 64) -> Tuning:
        """Choose the smallest search setting whose recall@k against exact search reaches ``target_recall``.

        Queries: ``sample`` of the index's own vectors. Ground truth: exact search over ``source()``
        (an iterable of ``(ids, vectors)`` chunks, e.g. the embedding shards the index was built
        from), or, without ``source``, over the vectors read back from the index (exact for flat
        and HNSW; SQ8/PQ-decoded for IVF-PQ, flagged ``exact_truth=False``). HNSW tunes
        ``ef_search``; IVF-PQ tunes ``nprobe`` and, with a refine stage, ``k_factor``. The outcome is
        kept (``self.tuning``), saved in the manifest and shown by ``describe_search()``.
        """
        if not 0 < target_recall <= 1:
            raise InvalidInputError(f"the target recall must be in (0, 1]; got {target_recall}.")
        k = check_k(k)
        if self._index is None or len(self) == 0:
            raise InvalidInputError("cannot tune an empty index; add vectors first.")
        rng = np.random.default_rng(seed)
        stored = self._labels_by_position()[:-1]
        if self._delta is not None:
            stored = np.concatenate([stored, self._delta.labels()])
        live = np.setdiff1d(stored, np.fromiter(self._removed, dtype=np.int64))
        qlab = np.sort(rng.choice(live, min(sample, len(live)), replace=False))
        exact_truth = source is not None or self.kind in ("flat", "hnsw") or self.params["refine"] == "flat"
        chunks = (lambda: self._label_chunks(source)) if source is not None else self._stored_chunks
        parts: dict[int, np.ndarray] = {}
        for lab, vecs in chunks():  # pass 1: the sampled items' own vectors are the queries
            hit = np.isin(lab, qlab)
            parts.update(zip(lab[hit].tolist(), vecs[hit]))
        if len(parts) < len(qlab):
            raise InvalidInputError(f"the vectors given for tuning miss {len(qlab) - len(parts)} of the index's items.")
        q = np.stack([parts[int(lab)] for lab in qlab]).astype(np.float32)
        truth = exact_topk(q, chunks(), k, self.metric)  # pass 2: exact top-k over everything
        tried: list[list[Any]] = []
        seen: dict[tuple, float] = {}

        def measure(params: dict[str, Any]) -> float:
            key = tuple(sorted(params.items()))
            if key not in seen:
                seen[key] = self._recall_at(params, q, truth, k)
                tried.append([dict(params), round(seen[key], 4)])
            return seen[key]

        note = ""
        if self.kind == "flat":
            chosen, rec = {}, measure({})
        elif self.kind == "hnsw":
            grid = sorted({max(k, e) for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
                                                3072, 4096) if e <= max_ef_search} | {max(k, 16)})
            chosen, rec = _smallest_meeting(grid, lambda e: measure({"ef_search": e}), target_recall, "ef_search")
            if rec < target_recall:
                note = (f"HNSW with M={self.params['hnsw_m']} reaches at most {rec:.3f}; rebuild with a larger hnsw_m "
                        f"(graph: {8 * self.params['hnsw_m']} bytes/vector at 2*M int32 links) or use kind='flat' "
                        f"(exact, {4 * self.dim * len(self) / 2**20:,.0f} MiB)")
        else:
            chosen, rec, note = self._tune_ivf(measure, target_recall, k, max_k_factor)
        self.params.update(chosen)
        self._apply_search_params()
        self.tuning = Tuning(target_recall=float(target_recall), recall=float(rec), met=bool(rec >= target_recall),
                             params=chosen, k=k, sample=len(q), items=len(self), exact_truth=bool(exact_truth),
                             note=note, tried=tried)
        return self.tuning

    def _tune_ivf(self, measure: Callable[[dict[str, Any]], float], target: float, k: int,
                  max_k_factor: int) -> tuple[dict[str, Any], float, str]:
        nlist = int(self._ivf().nlist)
        probes = sorted({min(nlist, 2 ** i) for i in range(0, int(np.ceil(np.log2(max(nlist, 1)))) + 1)})
        refine = self.params["refine"]
        if not refine:
            chosen, rec = _smallest_meeting(probes, lambda p: measure({"nprobe": p}), target, "nprobe")
            note = "" if rec >= target else (
                f"IVF-PQ codes alone reach at most {rec:.3f}; an SQ8 refine (refine='sq8', +{self.dim * len(self) / 2**20:,.0f} "
                f"MiB) re-scores candidates and usually reaches >0.95, or use kind='hnsw' "
                f"({(4 * self.dim + 8 * self.params['hnsw_m']) * len(self) / 2**20:,.0f} MiB)")
            return chosen, rec, note
        # Coordinate descent: the most candidates re-scored first (finds the nprobe the target needs),
        # then the fewest re-scored candidates at that nprobe, then one more pass over nprobe.
        factors = [f for f in (1, 2, 4, 8, 16, 32, 64, 128, 256) if f <= max_k_factor]
        kf = factors[-1]
        best, rec = _smallest_meeting(probes, lambda p: measure({"nprobe": p, "k_factor": kf}), target, "nprobe")
        if rec < target:
            extra = lambda r: f"+{(REFINES[r] - REFINES[refine]) * self.dim * len(self) / 2**20:,.1f} MiB"  # noqa: E731
            finer = {"sq8": f"refine='fp16' (half-float re-scoring, {extra('fp16')}), refine='flat' (float32, {extra('flat')})",
                     "fp16": f"refine='flat' (float32 re-scoring, {extra('flat')})"}.get(refine, "kind='flat'")
            note = (f"IVF-PQ with {refine} refine reaches at most {rec:.3f} (nprobe={nlist}, k_factor={kf}); "
                    f"more PQ bytes (pq_m > {self.params['pq_m']}), {finer} or kind='hnsw' "
                    f"({(4 * self.dim + 8 * self.params['hnsw_m']) * len(self) / 2**20:,.0f} MiB) would raise it")
            return {"nprobe": best["nprobe"], "k_factor": kf}, rec, note
        nprobe = best["nprobe"]
        got, rec_kf = _smallest_meeting([f for f in factors if f <= kf], lambda f: measure({"nprobe": nprobe, "k_factor": f}),
                                        target, "k_factor")
        kf, rec = got["k_factor"], rec_kf
        got, rec_np = _smallest_meeting([p for p in probes if p <= nprobe], lambda p: measure({"nprobe": p, "k_factor": kf}),
                                        target, "nprobe")
        if rec_np >= target:
            nprobe, rec = got["nprobe"], rec_np
        return {"nprobe": nprobe, "k_factor": kf}, rec, ""

    def describe_search(self) -> dict[str, Any]:
        """Search settings and, when tuned, the measured recall: what ``info`` reports."""
        keys = {"flat": (), "hnsw": ("ef_search",), "ivfpq": ("nprobe", "k_factor") if self.params["refine"] else ("nprobe",)}
        out: dict[str, Any] = {"kind": self.kind, "search_params": {key: self.params[key] for key in keys[self.kind]}}
        if self.tuning is not None:
            out["tuning"] = {key: v for key, v in self.tuning.to_dict().items() if key != "tried"}
            out["summary"] = self.tuning.describe()
        return out

    def _search_params(self, filter: Iterable[str] | None) -> Any:
        selector = None
        if filter is not None:
            allowed = np.asarray([self._label[i] for i in filter if i in self._label], dtype=np.int64)
            selector = faiss.IDSelectorBatch(allowed)
        elif self._removed:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._removed, dtype=np.int64)))
        if selector is None:
            return None
        # IndexIDMap translates the selector's external labels for the wrapped index.
        if self._quant.active:
            return quant.search_params(self._quant, selector)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.params["ef_search"])
        elif self.kind == "ivfpq" and self.params["refine"]:
            params = faiss.IndexRefineSearchParameters(
                k_factor=self.params["k_factor"],
                base_index_params=faiss.SearchParametersIVF(sel=selector, nprobe=self.params["nprobe"]),
            )
            params.sel = selector
        elif self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.params["nprobe"])
        else:
            params = faiss.SearchParameters(sel=selector)
        params._keep = (selector, getattr(params, "base_index_params", None))  # keep the selector alive as long as the params object
        return params

    # ------------------------------------------------------------------ persistence
    def _retune_if_stale(self) -> None:
        target = self.params.get("target_recall")
        if target is None or self.kind == "flat" or self._index is None or len(self) < 2:
            return
        t = self.tuning
        if t is not None and t.target_recall == target and abs(len(self) - t.items) <= 0.1 * max(t.items, 1):
            return
        self.tune(target)

    def _manifest_params(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params, "tuning": self.tuning.to_dict() if self.tuning else None}

    def compact(self) -> None:
        """Fold the items added since the last full save into the index (and drop removed ones where the
        kind allows); the next ``save`` writes one full index. ``save`` does this itself when worthwhile."""
        _segments.compact(self)

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically: ``index.faiss``, ``ids.arrow`` (ids + metadata columns),
        ``removed.npy``, then the manifest. After a small update of the version in ``path``, only a new
        segment, the tombstones and the manifest are written (``indexes/segments.py``)."""
        import pyarrow as pa

        path = Path(path)
        self._retune_if_stale()
        if _segments.try_append(self, path):
            return path
        _segments.compact(self)
        with atomic_folder(path) as tmp:
            files = ["ids.arrow", "removed.npy"]
            if self._index is not None:
                faiss.write_index(self._index, str(tmp / "index.faiss"))
                files.append("index.faiss")
            if self._ids_list is None and self._meta_map is None:
                table = self._table  # untouched since loading: write the columns back as they are
            else:
                meta = self._meta
                table = pa.table({"id": _id_column(self._ids),
                                  "meta": pa.array([json.dumps(meta[i]) if i in meta else None for i in self._ids],
                                                   type=pa.large_string())})
            with pa.OSFile(str(tmp / "ids.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            np.save(tmp / "removed.npy", np.array(sorted(self._removed), dtype=np.int64))
            if self._store is not None or self._store_path is not None or (self._meta_map is not None and self._meta_map):
                self.metadata_store().compacted(self._live_labels()).save(tmp / "metadata.parquet")
                files.append("metadata.parquet")
            manifest = Manifest(
                engine=self.engine,
                dimension=self.dim,
                count=len(self),
                metric=self.metric,
                model_id=self.model_id,
                params=self._manifest_params(),
            )
            write_manifest(tmp, manifest, files)
        _segments.after_full_save(self, path)
        return path

    @classmethod
    def load(
        cls, path: str | Path, *, model_id: str | None = None, dimension: int | None = None, verify: bool = True,
        mmap: bool = True,
    ) -> "FaissIndex":
        """Load an index folder; refuse it if ``model_id``/``dimension`` are given and do not match.

        ``mmap``: map ``index.faiss`` instead of reading it (flat/HNSW/SQ8 vectors and IVF lists stay in
        the page cache, shared between processes; opening is O(1) in the index size). The first
        ``add``/``remove`` reads it into memory. Ids and metadata are memory-mapped Arrow columns,
        turned into Python objects only when an operation needs them.
        """
        import pyarrow as pa

        path = Path(path)
        m = read_manifest(path, verify=verify)
        if m.engine != cls.engine:
            from ..errors import IndexMismatchError

            raise IndexMismatchError(f"'{path}' is a '{m.engine}' index, not a FAISS index; load it with xmodal.load_index().")
        check_compatible(m, path, model_id=model_id, dimension=dimension)
        params = dict(m.params)
        kind = params.pop("kind", "flat")
        seg_info = {key: params.pop(key) for key in ("segments", "removed_base") if key in params}
        self = cls(m.dimension, kind=kind, metric=m.metric, model_id=m.model_id, **params)
        if "ids.arrow" in m.checksums:
            from ..errors import CorruptIndexError

            try:
                self._table = pa.ipc.open_file(pa.memory_map(str(m.path(path, "ids.arrow")))).read_all()
            except (pa.ArrowException, OSError) as e:
                raise CorruptIndexError(f"index '{path}': ids.arrow is damaged ({e}). Rebuild the index.") from None
            if self._table.column_names[:2] != ["id", "meta"]:
                raise CorruptIndexError(f"index '{path}': ids.arrow has the wrong structure (columns "
                                        f"{self._table.column_names}, not id/meta). Rebuild the index.")
            self._ids_list = self._label_map = self._meta_map = None
            self._removed = set(np.load(m.path(path, "removed.npy")).tolist())
            self._n_live = len(self._table) - self._table.column("id").null_count
            if "metadata.parquet" in m.checksums:
                self._store_path = str(m.path(path, "metadata.parquet"))
        else:  # the format before ids.arrow: one JSON list of ids and a JSON line per metadata record
            raw = read_index_json(m.path(path, "ids.json"))
            try:
                self._ids_list, self._label_map = list(raw["ids"]), None
                self._removed = set(raw.get("removed", []))
                for rec in read_index_json(m.path(path, "metadata.jsonl"), lines=True):
                    self._meta[rec["id"]] = rec["meta"]
                self._n_live = len(self._label)
            except (KeyError, TypeError, AttributeError) as e:
                from ..errors import CorruptIndexError

                raise CorruptIndexError(f"index '{path}': ids.json or metadata.jsonl has the wrong structure ({e!r}).") from None
        if "index.faiss" in m.checksums:
            stored = str(m.path(path, "index.faiss"))
            self._index = None
            if mmap:  # flat codes (Flat, HNSW storage, SQ8 refine) are mapped; IVF lists are read
                try:
                    self._mmap_file = _OpenFile(stored)
                    self._index = faiss.read_index(stored, faiss.IO_FLAG_MMAP_IFC)
                    self._mmap_path = stored
                except (RuntimeError, OSError):  # a type FAISS cannot map: read it
                    self._index = self._mmap_file = None
            if self._index is None:
                self._index = faiss.read_index(stored)
            self._apply_search_params()
        _segments.load_segments(self, m, path, seg_info)
        if len(self) != m.count:
            from ..errors import CorruptIndexError

            raise CorruptIndexError(f"index '{path}' lists {len(self)} ids but its manifest says {m.count}.")
        return self


def _smallest_meeting(grid: Sequence[int], recall_of: Callable[[int], float], target: float,
                      name: str) -> tuple[dict[str, Any], float]:
    """First (smallest) value of an ascending grid whose recall reaches ``target``; else the last, with its recall."""
    rec = 0.0
    for value in grid:
        rec = recall_of(value)
        if rec >= target:
            return {name: int(value)}, rec
    return {name: int(grid[-1])}, rec


def _id_column(ids: list[str | None]) -> Any:
    """Ids as an Arrow column: strings, or (when a non-UTF-8 file name made an id with surrogate escapes,
    which Arrow strings cannot hold) the ids' original bytes; ``_id_strings`` reads both back exactly."""
    import pyarrow as pa

    try:
        return pa.array(ids, type=pa.large_string())
    except (UnicodeEncodeError, pa.ArrowException):
        return pa.array([None if i is None else i.encode("utf-8", "surrogateescape") for i in ids],
                        type=pa.large_binary())


def _id_strings(col: Any) -> list[str | None]:
    import pyarrow as pa

    values = col.to_pylist()
    if pa.types.is_large_binary(col.type) or pa.types.is_binary(col.type):
        return [None if v is None else v.decode("utf-8", "surrogateescape") for v in values]
    return values


class _OpenFile:
    """A read-only file descriptor closed when its owner is collected (no ResourceWarning, no leak)."""

    def __init__(self, path: str) -> None:
        import os
        import weakref

        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)


def _read_index_fd(fd: int) -> faiss.Index:
    """``faiss.read_index`` from an open descriptor (positioned reads: the descriptor is shared, not moved)."""
    import os

    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = os.pread(fd, n, pos)
        pos += len(chunk)
        return chunk

    return faiss.read_index(faiss.PyCallbackIOReader(read, 1 << 24))


def _code_stores(index: faiss.Index) -> list[Any]:
    """The FAISS indexes whose vector codes live in one growing array (flat, SQ, HNSW storage, refine stage)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    out = []
    while inner is not None:
        if isinstance(inner, faiss.IndexFlatCodes):
            out.append(inner)
            inner = None
        elif isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        elif isinstance(inner, faiss.IndexRefine):
            out += _code_stores(inner.refine_index)
            inner = None
        else:  # IVF lists grow per list; binary/other kinds: nothing to reserve
            inner = None
    return out


def _reserve_codes(index: faiss.Index, total: int) -> None:
    """Capacity for ``total`` vectors in each code array (std::vector keeps its capacity when shrunk: grow to the
    final size once, then back): later adds fill it in place, no reallocation copy."""
    for store in _code_stores(index):
        codes = store.codes
        if not codes.is_owned:
            continue
        have, need = codes.size(), int(total) * int(store.code_size)
        if need > have:
            codes.resize(need)
            codes.resize(have)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for d in range(min(cap, n), 0, -1):
        if n % d == 0:
            return d
    return 1
