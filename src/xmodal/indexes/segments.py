"""Append saves for ``FaissIndex``: a small update writes a segment, not the whole index (#20 item 1).

A saved FAISS index is a *base* (``index.faiss``, ``ids.arrow``: the items at the last full save) plus
zero or more *segments* listed in the manifest (``params["segments"]``): ``seg-<start>.npy`` (the
float32 vectors of labels ``start .. start+count-1``, added after the base) and ``seg-<start>.arrow``
(their ids and metadata); ``removed.npy`` lists every removed label (tombstones). Labels are positions:
the base's ids table followed by each segment's is the label -> id column, so nothing is renumbered.

In memory, items added after the base live in a ``Delta``: an exact (flat) FAISS index over their
vectors, searched beside the base index and merged by score. The base stays as loaded (memory-mapped
where FAISS allows) and removals are masks, so applying and saving an update costs in proportion to the
update: ``save`` writes the new segment, the tombstone list and the manifest, and keeps every other
file (their checksums and stats carried over, nothing re-read).

Compaction (``compact``): the delta's vectors are added to the base index (flat: removed items dropped
too), and the next save writes one new base. ``save`` compacts by itself when worthwhile
(``SegmentPolicy``): when the delta outgrows a share of the base (an exact scan over it would cost
more than it saves), when there are too many segments, or when many items were removed since the base.
A save that finds the folder changed by someone else (another process saved there) writes a full base.

Crash safety is the folder save's (``xmodal.io.atomic_folder``): new files under fresh names, the
manifest renamed in last; a save killed at any point leaves the previous version loadable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptIndexError, XmodalError
from .manifest import Manifest, atomic_folder, read_manifest, write_manifest

try:
    import faiss
except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
    raise ImportError("FAISS segments need faiss: `pip install faiss-cpu`") from e

if TYPE_CHECKING:  # pragma: no cover
    from .faiss_index import FaissIndex

SEGMENTS_FORMAT_VERSION = 2  # manifests listing segments: an older xmodal refuses them ("upgrade xmodal")
BASE_FILES = ("index.faiss", "ids.arrow")


@dataclass
class SegmentPolicy:
    """When ``save`` appends a segment and when it compacts into a new base instead.

    ``max_delta_fraction``: compact once the items added since the base exceed this share of the base
    (they are searched exactly, beside the base index). ``max_segments``: compact beyond this many
    segments. ``max_removed_fraction``: compact once the items removed since the base exceed this share
    (flat drops them; HNSW/IVF-PQ keep masking them). ``append=False``: every save writes a full base.
    """

    append: bool = True
    max_delta_fraction: float = 0.1
    max_segments: int = 8
    max_removed_fraction: float = 0.2


@dataclass
class SavedState:
    """What the folder this index was loaded from (or last saved to) holds."""

    path: str  # resolved folder
    files: dict[str, str]  # the manifest's logical -> stored file map at that version
    labels: int  # labels persisted (base + segments)
    base: int  # labels in the base
    removed_base: int  # tombstones at the last full save
    segments: list[dict[str, int]] = field(default_factory=list)  # [{"start", "count"}]
    meta_changed: bool = False  # metadata of persisted items changed since (update_metadata): next save is full


class Delta:
    """Items added after the base: labels ``start, start+1, ...`` and their float32 vectors, searched exactly."""

    def __init__(self, dim: int, metric: str, start: int) -> None:
        self.start, self.metric = start, metric
        flat = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        self.index = faiss.IndexIDMap2(flat)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels) and int(labels[0]) != self.start + len(self):
            raise XmodalError("internal error: delta labels must follow each other.")
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(labels, dtype=np.int64))

    def labels(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self), dtype=np.int64)

    def vectors(self, first: int = 0, count: int | None = None) -> np.ndarray:
        """Vectors of delta rows ``first .. first+count-1`` (row = label - start)."""
        count = len(self) - first if count is None else count
        if count <= 0:
            return np.zeros((0, self.index.d), dtype=np.float32)
        return faiss.downcast_index(self.index.index).reconstruct_n(first, count)

    def _matrix(self) -> np.ndarray:
        """The stored vectors as a numpy view (no copy) of the flat index's storage."""
        n, d = len(self), self.index.d
        cached = getattr(self, "_view", None)
        if cached is None or cached[0] != n:  # an add may move the storage: a new view
            flat = faiss.downcast_index(self.index.index)
            self._view = (n, faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32))
        return self._view[1]

    def _keep(self, removed: set[int], label_mask: np.ndarray | None) -> np.ndarray | None:
        """Live (and allowed) delta rows; the tombstone part is cached until the delta or the tombstones change."""
        key = (len(self), len(removed))
        cached = getattr(self, "_keep_cache", None)
        if cached is not None and cached[0] == key:
            keep = cached[1]
        else:
            keep = None
            if removed:
                rem = np.fromiter(removed, dtype=np.int64)
                rem = rem[(rem >= self.start) & (rem < self.start + len(self))] - self.start
                if len(rem):
                    keep = np.ones(len(self), dtype=bool)
                    keep[rem] = False
            self._keep_cache = (key, keep)
        if label_mask is not None:
            lab = self.labels()
            allowed = np.zeros(len(self), dtype=bool)
            inside = lab < len(label_mask)
            allowed[inside] = np.asarray(label_mask, dtype=bool)[lab[inside]]
            keep = allowed if keep is None else keep & allowed
        return keep

    def search(self, q: np.ndarray, k: int, removed: set[int],
               label_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` (FAISS-style scores: inner product, or squared L2; labels, -1 for none) among live
        delta items (and those ``label_mask`` allows). A numpy product over the (small) delta: no FAISS call,
        so no OpenMP region per query."""
        n = len(self)
        ip = self.metric == "ip"
        worst = np.float32(-np.inf if ip else np.inf)
        out_s = np.full((len(q), k), worst, dtype=np.float32)
        out_l = np.full((len(q), k), -1, dtype=np.int64)
        if n == 0:
            return out_s, out_l
        v = self._matrix()
        scores = q @ v.T
        if not ip:
            scores = (q * q).sum(1, keepdims=True) - 2 * scores + (v * v).sum(1)[None, :]
        keep = self._keep(removed, label_mask)
        if keep is not None:
            scores[:, ~keep] = worst
        kk = min(k, n)
        key = -scores if ip else scores
        part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(q), 1))
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1, kind="stable"), axis=1)
        top = np.take_along_axis(scores, order, axis=1)
        out_s[:, :kk] = top
        out_l[:, :kk] = np.where(np.isfinite(top), order + self.start, -1)
        return out_s, out_l


def merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int,
          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of two (FAISS scores, labels) result sets; label -1 ranks last."""
    scores = np.concatenate([a[0], b[0]], axis=1)
    labels = np.concatenate([a[1], b[1]], axis=1)
    key = -scores.astype(np.float64) if metric == "ip" else scores.astype(np.float64)
    key[labels < 0] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)


def tombstone_params(index: "FaissIndex") -> Any:
    """Search parameters for the index wrapped by ``IndexIDMap2`` that skip removed items: a bitmap over
    its positions, built once per change (O(n)) instead of a label set probed per candidate through the
    ID map (whose per-call OpenMP region made searches after any removal ~10-80x slower on a busy machine)."""
    p = index.params
    key = (len(index._removed), int(index._index.ntotal), id(index._index), p.get("ef_search"), p.get("nprobe"),
           p.get("k_factor"))
    cached = getattr(index, "_tombstone_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    labels = index._labels_by_position()[:-1]
    keep = ~np.isin(labels, np.fromiter(index._removed, dtype=np.int64))
    bits = np.packbits(keep, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bits))
    inner = faiss.downcast_index(index._index.index)
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=int(p["ef_search"]))
    elif isinstance(inner, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters(k_factor=p["k_factor"],
                                                   base_index_params=faiss.SearchParametersIVF(sel=sel, nprobe=int(p["nprobe"])))
        params.sel = sel
    elif isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(p["nprobe"]))
    else:
        params = faiss.SearchParameters(sel=sel)
    params._keep = (sel, bits, getattr(params, "base_index_params", None))
    index._tombstone_cache = (key, params)
    return params


# ------------------------------------------------------------------ saving
def _n_labels(index: "FaissIndex") -> int:
    return len(index._ids_list) if index._ids_list is not None else len(index._table)


def compaction_due(index: "FaissIndex") -> bool:
    st, delta, pol = index._saved, index._delta, index.segment_policy
    if st is None or delta is None:
        return True
    new_segment = _n_labels(index) > st.labels
    return (len(delta) > pol.max_delta_fraction * max(st.base, 1)
            or len(st.segments) + new_segment > pol.max_segments
            or len(index._removed) - st.removed_base > pol.max_removed_fraction * max(st.base, 1))


def try_append(index: "FaissIndex", path: Path) -> bool:
    """Save ``index`` into ``path`` as a new segment of the version it holds; False when a full save is needed."""
    st = index._saved
    if (not index.segment_policy.append or st is None or index._delta is None or st.meta_changed
            or st.path != str(path.resolve())):
        return False
    try:
        current = read_manifest(path, verify=False)
    except XmodalError:
        return False
    if current.files != st.files or "ids.arrow" not in current.files or compaction_due(index):
        return False  # another save changed the folder, an old-format base, or compaction is worthwhile
    import pyarrow as pa

    from .faiss_index import _id_column

    n = _n_labels(index)
    segments = [dict(s) for s in st.segments]
    kept = [name for name in current.files if name in BASE_FILES or name.startswith("seg-")]
    with atomic_folder(path) as tmp:
        files = ["removed.npy"]
        if n > st.labels:
            start, count = st.labels, n - st.labels
            np.save(tmp / f"seg-{start}.npy", index._delta.vectors(start - index._delta.start, count))
            ids = index._ids[start:n]
            meta = index._meta
            table = pa.table({"id": _id_column(ids),
                              "meta": pa.array([json.dumps(meta[i]) if i is not None and i in meta else None for i in ids],
                                               type=pa.large_string())})
            with pa.OSFile(str(tmp / f"seg-{start}.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            files += [f"seg-{start}.npy", f"seg-{start}.arrow"]
            segments.append({"start": start, "count": count})
        np.save(tmp / "removed.npy", np.array(sorted(index._removed), dtype=np.int64))
        if index._store is not None or (index._meta_map and "metadata.parquet" not in current.files):
            # the metadata columns (for where=) hold every item: rewritten, small beside the vectors
            index.metadata_store().compacted(index._live_labels()).save(tmp / "metadata.parquet")
            files.append("metadata.parquet")
        elif "metadata.parquet" in current.files:
            kept.append("metadata.parquet")
        manifest = Manifest(engine=index.engine, dimension=index.dim, count=len(index), metric=index.metric,
                            model_id=index.model_id, format_version=SEGMENTS_FORMAT_VERSION,
                            params=index._manifest_params() | {"segments": segments, "removed_base": st.removed_base})
        manifest.files = {name: current.files[name] for name in kept}
        write_manifest(tmp, manifest, files, kept=current)
    after = read_manifest(path, verify=False)
    st.files, st.labels, st.segments = dict(after.files), n, segments
    if "metadata.parquet" in after.files:
        index._store_path = str(after.path(path, "metadata.parquet"))
    return True


def compact(index: "FaissIndex") -> None:
    """Fold the delta into the base index (and, for flat, drop removed items); the next save writes a full base."""
    delta = index._delta
    if index._index is None:
        return
    labels = vectors = None
    if delta is not None and len(delta):
        labels, vectors = delta.labels(), delta.vectors()
    index._delta = None
    if index.kind == "flat" and index._removed and not index._quant.refines:  # flat deletes (a refine wrapper masks)
        # Removed rows go first (in place; the array keeps its capacity), so the delta's rows fill the freed room
        # instead of reallocating the whole array (which held two copies at once).
        removed = np.fromiter(index._removed, dtype=np.int64)
        index._writable()
        index._index.remove_ids(faiss.IDSelectorBatch(removed))
        if labels is not None:
            live = ~np.isin(labels, removed)
            labels, vectors = labels[live], vectors[live]
        index._removed = set()
    if labels is not None and len(labels):
        index._writable(capacity=int(index._index.ntotal) + len(labels))
        index._index.add_with_ids(vectors, labels)
    index._ids_arr = index._pos_ids = None
    index._apply_search_params()
    if index._saved is not None:
        index._saved = None  # the folder's segments no longer describe this index: the next save is full


def after_full_save(index: "FaissIndex", path: Path) -> None:
    """Remember what ``path`` now holds; later adds go to a delta so the next small save can append."""
    m = read_manifest(path, verify=False)
    n = _n_labels(index)
    index._saved = SavedState(path=str(path.resolve()), files=dict(m.files), labels=n, base=n,
                              removed_base=len(index._removed))
    index._delta = Delta(index.dim, index.metric, n) if index._index is not None else None


# ------------------------------------------------------------------ loading
def load_segments(index: "FaissIndex", m: Manifest, path: Path, info: dict[str, Any]) -> None:
    """After the base of a loaded index: attach its segments (ids table, delta vectors) and tombstones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    segments = list(info.get("segments") or [])
    base = len(index._table) if index._table is not None else len(index._ids)
    delta = Delta(index.dim, index.metric, base) if index._index is not None else None
    tables = [index._table]
    for seg in segments:
        start, count = int(seg["start"]), int(seg["count"])
        try:
            vecs = np.load(m.path(path, f"seg-{start}.npy"))
            t = pa.ipc.open_file(pa.memory_map(str(m.path(path, f"seg-{start}.arrow")))).read_all()
        except (OSError, ValueError, pa.ArrowException) as e:
            raise CorruptIndexError(f"index '{path}': segment seg-{start} is damaged ({e}). Rebuild the index.") from None
        expect = base + sum(len(x) for x in tables[1:])
        if start != expect or len(t) != count or vecs.shape != (count, index.dim) or delta is None:
            raise CorruptIndexError(f"index '{path}': segment seg-{start} does not fit the index (start {start}, "
                                    f"expected {expect}; {len(t)} ids, vectors {vecs.shape}). Rebuild the index.")
        delta.add(np.arange(start, start + count, dtype=np.int64), vecs)
        tables.append(t)
    if "segments" in info and index._table is not None:  # an appended version: base ids may be tombstoned
        kinds = {t.schema.field("id").type for t in tables}
        if len(kinds) > 1:  # some ids needed bytes (non-UTF-8 names): read all as bytes
            tables = [t.set_column(0, "id", t.column("id").cast(pa.large_binary())) for t in tables]
        table = pa.concat_tables(tables)
        if index._removed:  # ids of items removed after they were saved are nulled here, as a full save does
            dead = np.zeros(len(table), dtype=bool)
            rem = np.fromiter(index._removed, dtype=np.int64)
            dead[rem[rem < len(table)]] = True
            ids = pc.if_else(pa.array(dead), pa.scalar(None, table.column("id").type), table.column("id"))
            table = table.set_column(0, "id", ids)
        index._table = table
        index._n_live = len(table) - table.column("id").null_count
    n = _n_labels(index)
    index._saved = SavedState(path=str(path.resolve()), files=dict(m.files), labels=n, base=base,
                              removed_base=int(info.get("removed_base", len(index._removed))),
                              segments=[dict(s) for s in segments])
    index._delta = delta
