"""A compressed multi-vector index for late interaction (PLAID-style), with exact MaxSim re-scoring.

Storage: k-means centroids over all document token vectors; each token is stored as its centroid
id (uint16/int32) plus ``nbits`` (1, 2, 4 or 8) per dimension for the residual, quantised with
per-dimension bucket cutoffs and reconstructed with per-bucket mean values. At d=128 and nbits=2
that is 2 + 32 = 34 bytes per token instead of 512 (float32).

Search, per query: (1) centroid scores ``Q @ C^T``; (2) candidates = documents with a token in one
of each query token's ``nprobe`` best centroids; (3) approximate MaxSim from centroid scores alone
("centroid interaction"), keeping the best ``ncandidates``; (4) exact MaxSim on those documents'
decompressed vectors. ``nbits=None`` stores raw float32 vectors and searches by brute force: it
equals exact MaxSim ranking and serves as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import CorruptIndexError, IndexMismatchError, InvalidInputError
from .base import as_id_filter, check_dim, check_k, check_new_ids, read_index_json
from .manifest import Manifest, atomic_folder, check_compatible, read_manifest, write_manifest
from .filter_hook import allowed_positions
from .filters import parse_filter
from .maxsim import maxsim, pad
from .sizing import plaid_centroids

ENGINE = "late-interaction"


def _as_ragged(vectors: Any, dim: int) -> list[np.ndarray]:
    if isinstance(vectors, np.ndarray) and vectors.ndim == 3:
        vectors = list(vectors)
    out = []
    for i, v in enumerate(vectors):
        a = np.ascontiguousarray(np.asarray(v, dtype=np.float32))
        if a.ndim != 2 or a.shape[1] != dim or len(a) == 0:
            raise InvalidInputError(f"item #{i}: expected a non-empty (tokens, {dim}) array; got shape {a.shape}.")
        if not np.isfinite(a).all():
            raise InvalidInputError(f"item #{i} contains NaN or infinite values.")
        out.append(a)
    return out


class _Growable:
    """An array with spare capacity: appending costs O(appended) amortised (doubling), not a copy of everything."""

    def __init__(self, arr: np.ndarray) -> None:
        self.buf, self.n = arr, len(arr)

    @property
    def view(self) -> np.ndarray:
        return self.buf[: self.n]

    def append(self, more: np.ndarray) -> None:
        need = self.n + len(more)
        if need > len(self.buf):
            grown = np.empty((max(need, 2 * len(self.buf), 1024),) + self.buf.shape[1:], dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n:need] = more
        self.n = need


def _stored(name: str) -> property:
    """A token/document column kept in a ``_Growable``; assigning an array replaces it."""

    def get(self: "MultiVectorIndex") -> np.ndarray:
        return self._cols[name].view

    def set(self: "MultiVectorIndex", arr: np.ndarray) -> None:
        self._cols[name] = _Growable(arr)
        self._offsets_cache = None

    return property(get, set)


class MultiVectorIndex:
    """Late-interaction index over string ids (see module docstring).

    Args:
        dim: token vector dimension.
        nbits: residual bits per dimension (1, 2, 4, 8), or None for uncompressed exact search.
        n_centroids: k-means centroids (default ``2**floor(log2(4 * sqrt(tokens)))``, PLAID's rule scaled down).
        nprobe: centroids probed per query token for candidate generation.
        ncandidates: documents re-scored exactly per query (default ``max(8k, 64)``).
    """

    engine = ENGINE
    _doclens = _stored("doclens")
    _raw = _stored("raw")  # nbits=None only
    _codes = _stored("codes")  # centroid id per token
    _packed = _stored("packed")  # nbits-bit residual buckets, packed

    def __init__(self, dim: int, nbits: int | None = 2, n_centroids: int | None = None, model_id: str | None = None,
                 nprobe: int = 4, ncandidates: int | None = None, kmeans_iters: int = 12, max_train_tokens: int = 200_000,
                 seed: int = 0) -> None:
        if nbits not in (None, 1, 2, 4, 8):
            raise InvalidInputError(f"nbits must be 1, 2, 4, 8 or None (uncompressed); got {nbits}.")
        if nbits and check_dim(dim) % (8 // nbits):
            raise InvalidInputError(f"dimension {dim} must be a multiple of {8 // nbits} for nbits={nbits}.")
        self.dim, self.nbits, self.model_id = check_dim(dim), nbits, model_id
        self.params = {"n_centroids": n_centroids, "nprobe": nprobe, "ncandidates": ncandidates,
                       "kmeans_iters": kmeans_iters, "max_train_tokens": max_train_tokens, "seed": seed}
        self._cols: dict[str, _Growable] = {}
        self._offsets_cache: np.ndarray | None = None
        self._ids: list[str] = []
        self._label: dict[str, int] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._doclens = np.zeros(0, dtype=np.int64)
        self._raw = np.zeros((0, dim), dtype=np.float32)  # nbits=None only
        self._codes = np.zeros(0, dtype=np.int32)  # centroid id per token
        self._packed = np.zeros((0, (dim * nbits // 8) if nbits else 0), dtype=np.uint8)
        self.centroids: np.ndarray | None = None
        self.cutoffs: np.ndarray | None = None  # (dim, 2**nbits - 1)
        self.weights: np.ndarray | None = None  # (dim, 2**nbits)
        self._ivf: list[np.ndarray] | None = None  # centroid -> doc positions (lazy)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._label

    def ids(self) -> list[str]:
        return list(self._ids)

    def metadata(self, item_id: str) -> dict[str, Any]:
        if item_id not in self._label:
            raise KeyError(item_id)
        return self._meta.get(item_id, {})

    def update_metadata(self, item_ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        """Replace the metadata of documents already in the index (their vectors stay as they are)."""
        item_ids = list(item_ids)
        if len(item_ids) != len(metadata) or any(i not in self._label for i in item_ids):
            raise InvalidInputError("update_metadata needs one record per id, for ids already in the index.")
        for i, m in zip(item_ids, metadata):
            self._meta[i] = dict(m)
        self._meta_version = getattr(self, "_meta_version", 0) + 1

    @property
    def num_tokens(self) -> int:
        return int(self._doclens.sum())

    def _offsets(self) -> np.ndarray:
        if self._offsets_cache is None or len(self._offsets_cache) != len(self._doclens) + 1:
            self._offsets_cache = np.concatenate([[0], np.cumsum(self._doclens)])
        return self._offsets_cache

    def bytes_per_token(self) -> float:
        """Stored bytes per token (codes + residuals, or raw floats), excluding the shared centroids."""
        if self.nbits is None:
            return 4.0 * self.dim
        return self._codes.dtype.itemsize + self._packed.shape[1]

    # ------------------------------------------------------------------ compression
    def _train(self, tokens: np.ndarray) -> None:
        import faiss

        p = self.params
        rng = np.random.default_rng(p["seed"])
        sample = tokens if len(tokens) <= p["max_train_tokens"] else tokens[rng.choice(len(tokens), p["max_train_tokens"], replace=False)]
        k = p["n_centroids"] or plaid_centroids(len(tokens))
        k = int(min(k, len(sample)))
        km = faiss.Kmeans(self.dim, k, niter=p["kmeans_iters"], seed=p["seed"], spherical=True, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=10_000)
        km.train(np.ascontiguousarray(sample))
        self.centroids = km.centroids.astype(np.float32)
        self.params["n_centroids"] = k
        codes = self._assign(sample)
        resid = sample - self.centroids[codes]
        levels = 2 ** self.nbits
        qs = np.arange(1, levels) / levels
        self.cutoffs = np.quantile(resid, qs, axis=0).T.astype(np.float32)  # (dim, levels-1)
        weights = np.zeros((self.dim, levels), dtype=np.float32)
        for j in range(self.dim):
            b = np.searchsorted(self.cutoffs[j], resid[:, j])
            sums = np.bincount(b, weights=resid[:, j], minlength=levels)
            cnt = np.bincount(b, minlength=levels)
            edges = np.concatenate([[resid[:, j].min()], self.cutoffs[j], [resid[:, j].max()]])
            mids = (edges[:-1] + edges[1:]) / 2
            weights[j] = np.where(cnt > 0, sums / np.maximum(cnt, 1), mids)
        self.weights = weights

    def _assign(self, tokens: np.ndarray) -> np.ndarray:
        import faiss

        index = faiss.IndexFlatIP(self.dim)
        index.add(self.centroids)
        out = np.empty(len(tokens), dtype=np.int64)
        for s in range(0, len(tokens), 65536):
            out[s:s + 65536] = index.search(np.ascontiguousarray(tokens[s:s + 65536]), 1)[1][:, 0]
        return out

    def _compress(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = self._assign(tokens)
        resid = tokens - self.centroids[codes]
        buckets = np.empty(resid.shape, dtype=np.uint8)
        for j in range(self.dim):
            buckets[:, j] = np.searchsorted(self.cutoffs[j], resid[:, j])
        return codes.astype(self._code_dtype()), self._pack(buckets)

    def _code_dtype(self) -> type:
        return np.uint16 if (self.params["n_centroids"] or 0) <= 65536 else np.int32

    def _pack(self, buckets: np.ndarray) -> np.ndarray:
        per = 8 // self.nbits
        b = buckets.reshape(len(buckets), -1, per).astype(np.uint8)
        shifts = (np.arange(per) * self.nbits).astype(np.uint8)
        return np.bitwise_or.reduce(b << shifts, axis=2).astype(np.uint8)

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        per = 8 // self.nbits
        shifts = (np.arange(per) * self.nbits).astype(np.uint8)
        mask = np.uint8((1 << self.nbits) - 1)
        return ((packed[:, :, None] >> shifts) & mask).reshape(len(packed), -1)

    def decompress(self, token_idx: np.ndarray) -> np.ndarray:
        """Reconstructed (unit-normalised) vectors of the given token positions."""
        if self.nbits is None:
            return self._raw[token_idx]
        b = self._unpack(self._packed[token_idx])
        v = self.centroids[self._codes[token_idx].astype(np.int64)] + self.weights[np.arange(self.dim)[None, :], b]
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    # ------------------------------------------------------------------ add / remove
    def add(self, ids: Sequence[str], vectors: Any, metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add documents: ``vectors`` is a list of ``(tokens_i, dim)`` arrays or a padded ``(n, t, dim)`` array."""
        docs = _as_ragged(vectors, self.dim)
        ids = check_new_ids(ids, self._label, len(docs))
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidInputError(f"got {len(metadata)} metadata records for {len(ids)} ids.")
        if not docs:
            return
        tokens = np.concatenate(docs)
        if self.nbits is None:
            self._cols["raw"].append(tokens)
        else:
            if self.centroids is None:
                self._train(tokens)
                self._codes = self._codes.astype(self._code_dtype())
            codes, packed = self._compress(tokens)
            self._cols["codes"].append(codes)
            self._cols["packed"].append(packed)
        self._cols["doclens"].append(np.array([len(d) for d in docs], dtype=np.int64))
        for j, i in enumerate(ids):
            self._label[i] = len(self._ids)
            self._ids.append(i)
            if metadata is not None:
                self._meta[i] = dict(metadata[j])
        self._ivf = None

    def remove(self, ids: Iterable[str]) -> int:
        gone = sorted({self._label[i] for i in ids if i in self._label})
        if not gone:
            return 0
        keep_doc = np.ones(len(self._ids), dtype=bool)
        keep_doc[gone] = False
        keep_tok = np.repeat(keep_doc, self._doclens)
        if self.nbits is None:
            self._raw = self._raw[keep_tok]
        else:
            self._codes, self._packed = self._codes[keep_tok], self._packed[keep_tok]
        self._doclens = self._doclens[keep_doc]
        for pos in gone:
            self._meta.pop(self._ids[pos], None)
        self._ids = [i for i, k in zip(self._ids, keep_doc) if k]
        self._label = {i: n for n, i in enumerate(self._ids)}
        self._ivf = None
        return len(gone)

    # ------------------------------------------------------------------ search
    def _inverted_lists(self) -> list[np.ndarray]:
        if self._ivf is None:
            doc_of_token = np.repeat(np.arange(len(self._ids)), self._doclens)
            order = np.argsort(self._codes, kind="stable")
            codes_sorted = self._codes[order].astype(np.int64)
            bounds = np.searchsorted(codes_sorted, np.arange(self.params["n_centroids"] + 1))
            docs_sorted = doc_of_token[order]
            self._ivf = [np.unique(docs_sorted[bounds[c]:bounds[c + 1]]) for c in range(self.params["n_centroids"])]
        return self._ivf

    def _token_positions(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token positions of ``docs`` (concatenated) and each doc's start within that list."""
        offsets = self._offsets()
        lens = self._doclens[docs]
        starts_out = np.concatenate([[0], np.cumsum(lens)[:-1]])
        idx = np.repeat(offsets[docs] - starts_out, lens) + np.arange(lens.sum())
        return idx, starts_out

    def _exact(self, q: np.ndarray, docs: np.ndarray) -> np.ndarray:
        idx, starts = self._token_positions(docs)
        vecs = self.decompress(idx)
        sims = q @ vecs.T  # (tq, tokens)
        return np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)

    def search(self, queries: Any, k: int, filter: Iterable[str] | None = None,
               where: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents per query (a list of ``(t_i, dim)`` arrays, or ``(n, t, dim)``).

        ``filter`` (ids) and ``where`` (a metadata filter expression) restrict candidate generation to
        the allowed documents (``filter_hook.allowed_positions``).
        """
        k = check_k(k)
        qs = _as_ragged(queries, self.dim)
        expr = parse_filter(where) if where is not None else None
        scores = np.full((len(qs), k), -np.inf, dtype=np.float32)
        ids = np.full((len(qs), k), None, dtype=object)
        if not self._ids:
            return scores, ids
        allowed = allowed_positions(self._ids, self._label, self._meta, as_id_filter(filter), expr, self)
        for n, q in enumerate(qs):
            s, d = self._search_one(q, k, allowed)
            scores[n, : len(s)], ids[n, : len(d)] = s, [self._ids[j] for j in d]
        return scores, ids

    def _search_one(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n_docs = len(self._ids)
        if self.nbits is None:  # exact brute force, chunked over documents
            docs = allowed if allowed is not None else np.arange(n_docs)
            all_scores = np.concatenate([self._exact(q, docs[s:s + 2048]) for s in range(0, len(docs), 2048)]) if len(docs) else np.zeros(0)
            top = np.argsort(-all_scores, kind="stable")[:k]
            return all_scores[top], docs[top]
        if allowed is not None and len(allowed) <= (self.params["ncandidates"] or max(8 * k, 64)):
            docs = allowed  # a selective filter: every allowed document is re-scored exactly
            exact = self._exact(q, docs) if len(docs) else np.zeros(0, dtype=np.float32)
            top = np.argsort(-exact, kind="stable")[:k]
            return exact[top].astype(np.float32), docs[top]
        cscores = q @ self.centroids.T  # (tq, K)
        nprobe = min(self.params["nprobe"], cscores.shape[1])
        probe = np.unique(np.argpartition(-cscores, nprobe - 1, axis=1)[:, :nprobe])
        ivf = self._inverted_lists()
        cands = np.unique(np.concatenate([ivf[c] for c in probe])) if len(probe) else np.zeros(0, dtype=np.int64)
        if allowed is not None:
            cands = np.intersect1d(cands, allowed) if len(cands) else cands
            if len(cands) < k:
                cands = np.union1d(cands, allowed)
        if len(cands) == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        # approximate MaxSim with each token replaced by its centroid
        idx, starts = self._token_positions(cands)
        approx = np.maximum.reduceat(cscores[:, self._codes[idx].astype(np.int64)], starts, axis=1).sum(axis=0)
        ncand = self.params["ncandidates"] or max(8 * k, 64)
        if len(cands) > ncand:
            keep = np.argpartition(-approx, ncand - 1)[:ncand]
            cands = cands[keep]
        exact = self._exact(q, cands)
        top = np.argsort(-exact, kind="stable")[:k]
        return exact[top].astype(np.float32), cands[top]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_folder(path) as tmp:
            arrays = {"doclens": self._doclens}
            if self.nbits is None:
                arrays["raw"] = self._raw
            else:
                arrays.update(codes=self._codes, packed=self._packed, centroids=self.centroids, cutoffs=self.cutoffs,
                              weights=self.weights)
            files = []
            for name, arr in arrays.items():
                if arr is None:  # an empty index has no centroids yet: trained on the first add
                    continue
                np.save(tmp / f"{name}.npy", arr)
                files.append(f"{name}.npy")
            (tmp / "ids.json").write_text(json.dumps(self._ids))
            (tmp / "metadata.json").write_text(json.dumps(self._meta))
            files += ["ids.json", "metadata.json"]
            write_manifest(tmp, Manifest(engine=ENGINE, dimension=self.dim, count=len(self), metric="maxsim",
                                         model_id=self.model_id, params={"nbits": self.nbits, **self.params}), files)
        return path

    @classmethod
    def load(cls, path: str | Path, *, model_id: str | None = None, dimension: int | None = None,
             verify: bool = True) -> "MultiVectorIndex":
        path = Path(path)
        m = read_manifest(path, verify=verify)
        if m.engine != ENGINE:
            raise IndexMismatchError(f"'{path}' is a '{m.engine}' index, not a late-interaction index.")
        check_compatible(m, path, model_id=model_id, dimension=dimension)
        params = dict(m.params)
        self = cls(m.dimension, nbits=params.pop("nbits"), model_id=m.model_id, **params)
        self._doclens = np.load(m.path(path, "doclens.npy"))
        if self.nbits is None:
            self._raw = np.load(m.path(path, "raw.npy"))
        else:
            for name in ("codes", "packed", "centroids", "cutoffs", "weights"):
                if f"{name}.npy" not in m.checksums:  # absent in an empty index (no centroids trained yet)
                    continue
                try:
                    arr = np.load(m.path(path, f"{name}.npy"), allow_pickle=False)
                except ValueError:  # older versions saved an empty index's missing centroids as an object array
                    if m.count:
                        raise CorruptIndexError(f"index '{path}': '{name}.npy' cannot be read. Rebuild the index.") from None
                    continue
                setattr(self, "_" + name if name in ("codes", "packed") else name, arr)
        self._ids = read_index_json(m.path(path, "ids.json"))
        self._label = {i: n for n, i in enumerate(self._ids)}
        self._meta = read_index_json(m.path(path, "metadata.json"))
        if len(self._ids) != m.count or len(self._doclens) != m.count:
            raise CorruptIndexError(f"index '{path}' lists {len(self._ids)} ids but its manifest says {m.count}.")
        return self


def exact_maxsim_topk(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Brute-force MaxSim ranking (positions into ``docs``), the ground truth for recall measurements."""
    q, qm = pad(queries)
    d, dm = pad(docs)
    s = maxsim(q, qm, d, dm, doc_chunk=512)
    return torch.topk(s, k, dim=1).indices.numpy()


def create(dim: int, model_id: str | None, folder: Path, nbits: int | None = 2, **options: Any) -> MultiVectorIndex:
    """Engine factory: ``nbits=0`` (as on the command line) means uncompressed, like ``None``."""
    return MultiVectorIndex(dim, nbits=nbits or None, model_id=model_id, **options)
