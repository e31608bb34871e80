"""A compressed multi-vector index for late interaction (PLAID-style), with exact MaxSim re-scoring.

Storage: k-means centroids over all document token vectors; each token is stored as its centroid
id (uint16/int32) plus ``nbits`` (1, 2, 4 or 8) per dimension for the residual, quantised with
per-dimension bucket cutoffs and reconstructed with per-bucket mean values, plus the float32 norm of the
decoded vector. At d=128 and nbits=2 that is 2 + 32 + 4 = 38 bytes per token instead of 512 (float32).

Search, all queries at once (torch): (1) centroid scores ``Q @ C^T``; (2) candidates = documents on the
inverted lists of each query token's ``nprobe`` best centroids (probes scoring below ``centroid_threshold``
pruned, PLAID-style), ranked by a sparse centroid interaction; (3) the best ``ninteract`` re-ranked by the
full centroid interaction (every token's centroid code, no residual decoding); (4) MaxSim on the best
``ncandidates`` documents' decoded vectors, scored without reconstructing them: per query a table of
(byte position, byte value) -> q . residual part, plus q . centroid, divided by the token's stored norm of
centroid + residual (4 bytes per token), or on float16 copies stored with ``full_vectors=True`` (2*dim more
bytes per token). ``nbits=None`` stores raw float32 vectors and searches by
brute force: it equals exact MaxSim ranking and serves as the reference.
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
        n_centroids: k-means centroids (default ``2**floor(log2(16 * sqrt(tokens)))``, PLAID's rule).
        nprobe: centroids probed per query token for candidate generation (default 32; chosen from the
            recall-vs-latency curve of benchmarks/late_interaction.py --data hard, see docs/late_interaction.md).
        ncandidates: documents whose (decoded) vectors are re-scored per query (default ``max(8k, 512)``).
        ninteract: candidates re-ranked by full centroid interaction before that (default ``3 * ncandidates``).
        centroid_threshold: probes whose centroid score is below it are pruned (each token keeps its best one).
        full_vectors: also store float16 token vectors; the final re-scoring then uses them instead of the codec.
    """

    engine = ENGINE
    _doclens = _stored("doclens")
    _raw = _stored("raw")  # nbits=None only
    _codes = _stored("codes")  # centroid id per token
    _packed = _stored("packed")  # nbits-bit residual buckets, packed
    _full = _stored("full")  # float16 token vectors, only with full_vectors=True
    _norms = _stored("norms")  # norm of each token's decoded centroid + residual (float32), nbits only

    def __init__(self, dim: int, nbits: int | None = 2, n_centroids: int | None = None, model_id: str | None = None,
                 nprobe: int = 32, ncandidates: int | None = None, kmeans_iters: int = 12, max_train_tokens: int = 200_000,
                 seed: int = 0, ninteract: int | None = None, centroid_threshold: float | None = None,
                 full_vectors: bool = False) -> None:
        if nbits not in (None, 1, 2, 4, 8):
            raise InvalidInputError(f"nbits must be 1, 2, 4, 8 or None (uncompressed); got {nbits}.")
        if nbits and check_dim(dim) % (8 // nbits):
            raise InvalidInputError(f"dimension {dim} must be a multiple of {8 // nbits} for nbits={nbits}.")
        self.dim, self.nbits, self.model_id = check_dim(dim), nbits, model_id
        self.params = {"n_centroids": n_centroids, "nprobe": nprobe, "ncandidates": ncandidates,
                       "kmeans_iters": kmeans_iters, "max_train_tokens": max_train_tokens, "seed": seed,
                       "ninteract": ninteract, "centroid_threshold": centroid_threshold,
                       "full_vectors": bool(full_vectors and nbits)}
        self._cols: dict[str, _Growable] = {}
        self._offsets_cache: np.ndarray | None = None
        self._ids: list[str] = []
        self._label: dict[str, int] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._doclens = np.zeros(0, dtype=np.int64)
        self._raw = np.zeros((0, dim), dtype=np.float32)  # nbits=None only
        self._codes = np.zeros(0, dtype=np.int32)  # centroid id per token
        self._packed = np.zeros((0, (dim * nbits // 8) if nbits else 0), dtype=np.uint8)
        self._full = np.zeros((0, dim), dtype=np.float16)
        self._norms = np.zeros(0, dtype=np.float32)
        self.centroids: np.ndarray | None = None
        self.cutoffs: np.ndarray | None = None  # (dim, 2**nbits - 1)
        self.weights: np.ndarray | None = None  # (dim, 2**nbits)
        self._ivf: dict[str, Any] | None = None  # search structures (inverted lists, torch views), built lazily

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
        return (self._codes.dtype.itemsize + self._packed.shape[1] + self._norms.dtype.itemsize
                + (2 * self.dim if self.params["full_vectors"] else 0))

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

    def _decoded_norms(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """Norms of the decoded (centroid + residual) vectors, before normalisation: stored per token so that
        search scores residuals through per-query lookup tables without reconstructing the vectors."""
        lut = self._lookup_table()
        out = np.empty(len(codes), dtype=np.float32)
        offs = np.arange(packed.shape[1], dtype=np.int32) * 256
        for s in range(0, len(codes), 65536):
            p = packed[s:s + 65536].astype(np.int32) + offs
            v = np.take(lut, p, axis=0).reshape(len(p), self.dim)
            v += np.take(self.centroids, codes[s:s + 65536].astype(np.intp), axis=0)
            out[s:s + 65536] = np.linalg.norm(v, axis=1)
        return out

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        per = 8 // self.nbits
        shifts = (np.arange(per) * self.nbits).astype(np.uint8)
        mask = np.uint8((1 << self.nbits) - 1)
        return ((packed[:, :, None] >> shifts) & mask).reshape(len(packed), -1)

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
            self._cols["norms"].append(self._decoded_norms(codes, packed))
            if self.params["full_vectors"]:
                self._cols["full"].append(tokens.astype(np.float16))
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
            self._codes, self._packed, self._norms = self._codes[keep_tok], self._packed[keep_tok], self._norms[keep_tok]
            if self.params["full_vectors"]:
                self._full = self._full[keep_tok]
        self._doclens = self._doclens[keep_doc]
        for pos in gone:
            self._meta.pop(self._ids[pos], None)
        self._ids = [i for i, k in zip(self._ids, keep_doc) if k]
        self._label = {i: n for n, i in enumerate(self._ids)}
        self._ivf = None
        return len(gone)

    # ------------------------------------------------------------------ search
    # Batched over queries (torch): (1) centroid scores S = Q C^T for all queries at once;
    # (2) candidates: the documents on the inverted lists of each query token's ``nprobe`` best
    # centroids (probes below ``centroid_threshold`` dropped, except each token's best one), scored by a
    # sparse centroid interaction (a token whose probed centroids a document lacks counts as its worst
    # probed score); (3) the best ``ninteract`` of them re-scored by the full centroid interaction over
    # all their tokens' codes (no residual decoding); (4) the best ``ncandidates`` decompressed (or their
    # stored float16 vectors read) and ranked by MaxSim. An allowed-documents mask is applied in (2).
    def _search_cache(self) -> dict[str, Any]:
        """Torch views the search needs, built once after each add/remove."""
        if self._ivf is None:
            n_docs = len(self._ids)
            cache: dict[str, Any] = {
                "lens": torch.from_numpy(self._doclens.astype(np.int64)),
                "offsets": torch.from_numpy(self._offsets()[:-1].astype(np.int64)),
            }
            if self.nbits is not None:
                k = self.centroids.shape[0]
                codes = self._codes.astype(np.int64)
                doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), self._doclens)
                pairs = np.unique(codes * n_docs + doc_of_token)  # (centroid, document) once each, sorted
                cache["ivf_indptr"] = torch.from_numpy(np.searchsorted(pairs // n_docs, np.arange(k + 1)).astype(np.int64))
                cache["ivf_docs"] = torch.from_numpy(pairs % n_docs)
                cache["centroids"] = torch.from_numpy(self.centroids)
                cache["lut"] = self._lookup_table()
                per = 8 // self.nbits
                cache["lut3"] = torch.from_numpy(cache["lut"]).reshape(self._packed.shape[1], 256, per)
            self._ivf = cache
        return self._ivf

    def _lookup_table(self) -> np.ndarray:
        """``(bytes_per_token * 256, 8 // nbits)``: the residual values a packed byte at each position decodes to,
        so decompression is one gather per byte instead of unpacking bits and gathering per dimension."""
        per = 8 // self.nbits
        nbytes = self.dim // per
        values = np.arange(256, dtype=np.uint8)
        buckets = (values[:, None] >> (np.arange(per, dtype=np.uint8) * self.nbits)) & np.uint8((1 << self.nbits) - 1)
        w = self.weights.reshape(nbytes, per, 2 ** self.nbits)  # dims j*per + p of byte j
        lut = w[np.arange(nbytes)[:, None, None], np.arange(per)[None, None, :], buckets[None, :, :]]  # (nbytes, 256, per)
        return np.ascontiguousarray(lut.reshape(nbytes * 256, per), dtype=np.float32)

    def _allowed_mask(self, filter: Iterable[str] | None, expr: Any = None) -> np.ndarray | None:
        """Documents a search may return, as a boolean mask over positions (None: all). The one place where
        id filters and metadata ``where`` filters turn into the candidate stage's mask."""
        positions = allowed_positions(self._ids, self._label, self._meta, as_id_filter(filter), expr, self)
        if positions is None:
            return None
        mask = np.zeros(len(self._ids), dtype=bool)
        mask[positions] = True
        return mask

    def _tokens_of(self, docs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token positions ``(..., L)`` of documents ``docs`` (any shape, -1 = none) and the real-token mask."""
        c = self._search_cache()
        safe = docs.clamp(min=0)
        lens = torch.where(docs >= 0, c["lens"][safe], 0)
        width = max(int(lens.max()) if lens.numel() else 1, 1)
        ar = torch.arange(width)
        mask = ar < lens[..., None]
        return torch.where(mask, c["offsets"][safe][..., None] + ar, 0), mask

    def _token_positions(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Token positions ``(..., L)`` of documents ``docs`` (any shape, -1 = none) and the real-token mask
        (None when every document has ``L`` tokens; padding points at token 0)."""
        safe = np.maximum(docs, 0)
        lens = np.where(docs >= 0, self._doclens[safe], 0)
        width = max(int(lens.max()) if lens.size else 1, 1)
        pos = self._offsets()[safe][..., None] + np.arange(width)
        if (lens == width).all():
            return pos, None
        mask = np.arange(width) < lens[..., None]
        return np.where(mask, pos, 0), mask

    def _vectors(self, pos: torch.Tensor) -> torch.Tensor:
        """Token vectors at positions ``pos`` (any shape): stored float16/float32 ones, or decompressed."""
        if self.nbits is None:
            return torch.from_numpy(self._raw)[pos]
        if self.params["full_vectors"]:
            return torch.from_numpy(self._full)[pos].float()
        c = self._search_cache()
        flat = pos.reshape(-1).numpy()
        # np.take is several times faster than fancy indexing (numpy or torch) for these row gathers
        packed = np.take(self._packed, flat, axis=0).astype(np.intp)  # (n, nbytes)
        packed += np.arange(packed.shape[1], dtype=np.intp) * 256
        resid = np.take(c["lut"], packed, axis=0).reshape(len(flat), self.dim)
        resid += np.take(self.centroids, np.take(self._codes, flat).astype(np.intp), axis=0)
        resid /= np.maximum(np.take(self._norms, flat), 1e-12)[:, None]
        return torch.from_numpy(resid).reshape(*pos.shape, self.dim)

    def decompress(self, token_idx: np.ndarray) -> np.ndarray:
        """Reconstructed (unit-normalised) vectors of the given token positions (never the stored float16 ones)."""
        if self.nbits is None:
            return self._raw[token_idx]
        b = self._unpack(self._packed[token_idx])
        v = self.centroids[self._codes[token_idx].astype(np.int64)] + self.weights[np.arange(self.dim)[None, :], b]
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def search(self, queries: Any, k: int, filter: Iterable[str] | None = None,
               where: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents per query (a list of ``(t_i, dim)`` arrays, or ``(n, t, dim)``), all queries at once.

        ``filter`` (ids) and ``where`` (a metadata filter expression) restrict candidate generation to
        the allowed documents (``filter_hook.allowed_positions``).
        """
        k = check_k(k)
        qs = _as_ragged(queries, self.dim)
        expr = parse_filter(where) if where is not None else None
        scores = np.full((len(qs), k), -np.inf, dtype=np.float32)
        ids = np.full((len(qs), k), None, dtype=object)
        if not self._ids or not qs:
            return scores, ids
        allowed = self._allowed_mask(filter, expr)
        q, qmask = pad(qs, self.dim)
        if self.nbits is None or self.params["full_vectors"]:
            # queries in chunks bound the (queries x tokens x candidates x doc tokens) intermediates to ~64 MB
            width = max(self._ncandidates(k), self._ninteract(k)) * int(self._doclens.max()) * q.shape[1]
        else:  # the codec path scores one query at a time; chunks bound the candidate stage to ~256k list entries
            c = self._search_cache()
            width = q.shape[1] * int(self.params["nprobe"]) * max(1, len(c["ivf_docs"]) // len(self.centroids)) * 64
        step = max(1, (1 << 24) // max(width, 1))
        for s in range(0, len(qs), step):
            sc, docs = self._search_batch(q[s:s + step], qmask[s:s + step], k, allowed)
            for n in range(len(docs)):
                ok = docs[n] >= 0
                scores[s + n, : ok.sum()] = sc[n][ok]
                ids[s + n, : ok.sum()] = [self._ids[j] for j in docs[n][ok]]
        return scores, ids

    def _ncandidates(self, k: int) -> int:
        # default from the measured hard-data curve (docs/late_interaction.md): 32:512:1536 is past the knee
        return int(self.params["ncandidates"] or max(8 * k, 512))

    def _ninteract(self, k: int) -> int:
        return int(self.params.get("ninteract") or 3 * self._ncandidates(k))

    def _search_batch(self, q: torch.Tensor, qmask: torch.Tensor, k: int,
                      allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and document positions ``(nq, <=k)`` (position -1 = no result) for padded queries."""
        n_docs = len(self._ids)
        if self.nbits is None:  # exact: every allowed document is a candidate
            docs = np.flatnonzero(allowed) if allowed is not None else np.arange(n_docs)
            cand = torch.from_numpy(docs).expand(len(q), len(docs)) if len(docs) else torch.full((len(q), 1), -1)
            return self._rank_exact(q, qmask, cand, k)
        scores = self._centroid_scores(q, qmask)
        if allowed is not None and allowed.sum() <= self._ncandidates(k):
            docs = np.flatnonzero(allowed)  # a selective filter: every allowed document is re-scored
            cand = torch.from_numpy(docs).expand(len(q), len(docs)) if len(docs) else torch.full((len(q), 1), -1)
        else:
            cand = self._candidates(scores, qmask, k, allowed)
            cand = self._centroid_rerank(scores, qmask, cand, self._ncandidates(k))
        if self.params["full_vectors"]:
            return self._rank_exact(q, qmask, cand, k)
        return self._rank_codes(q, qmask, scores, cand, k)

    def _centroid_scores(self, q: torch.Tensor, qmask: torch.Tensor) -> torch.Tensor:
        """``(nq, tq, K)`` scores, padding tokens 0: a transposed view of a contiguous ``(nq, K, tq)`` tensor,
        whose per-query ``(K, tq)`` slices are the centroid -> score-per-token tables of the later stages."""
        s = torch.matmul(self._search_cache()["centroids"], q.transpose(1, 2))  # (nq, K, tq)
        return s.masked_fill_(~qmask[:, None, :], 0.0).transpose(1, 2)

    def _candidates(self, s: torch.Tensor, qmask: torch.Tensor, k: int, allowed: np.ndarray | None) -> torch.Tensor:
        """``(nq, ninteract)`` candidate document positions (-1 = none) from the probed inverted lists;
        ``s`` = centroid scores ``(nq, tq, K)``. numpy (one thread) past the top-k: many mid-sized torch ops
        stalled on thread barriers when the cores are shared."""
        c = self._search_cache()
        n_docs, nq, tq = len(self._ids), s.shape[0], s.shape[1]
        nprobe = min(int(self.params["nprobe"]), s.shape[2])
        top_s, top_c = (t.numpy() for t in s.topk(nprobe, dim=2))  # (nq, tq, nprobe)
        qm = qmask.numpy()
        floor = np.where(qm, top_s[..., -1], 0.0).astype(np.float32)  # a document lacking every probe of a token
        keep = np.broadcast_to(qm[..., None], top_s.shape).copy()
        threshold = self.params.get("centroid_threshold")
        if threshold is not None:  # PLAID's centroid pruning; a token's best centroid is always probed
            keep[..., 1:] &= top_s[..., 1:] >= threshold
        e_q, e_t, e_p = np.nonzero(keep)
        e_c, e_s = top_c[e_q, e_t, e_p], top_s[e_q, e_t, e_p]
        indptr, ivf_docs = c["ivf_indptr"].numpy(), c["ivf_docs"].numpy()
        start, lens = indptr[e_c], indptr[e_c + 1] - indptr[e_c]
        which = np.repeat(np.arange(len(lens)), lens)  # entry of each list element
        docs = ivf_docs[start[which] + np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)]
        e_q, e_t, e_s = e_q[which], e_t[which], e_s[which]
        if allowed is not None:  # the filter hook: only allowed documents become candidates
            ok = allowed[docs]
            docs, e_q, e_t, e_s = docs[ok], e_q[ok], e_t[ok], e_s[ok]
        # score = sum over tokens of (best probe holding the document, else the floor); ranked within a query it
        # equals the sum of gains over the floor (the floors' sum is the same for every document of a query):
        # max per (query, document, token), then a sum per (query, document), over one stable sort
        key = (e_q * n_docs + docs) * tq + e_t
        order = np.argsort(key, kind="stable")
        key, gain = key[order], (e_s - floor[e_q, e_t])[order]
        if len(key):
            first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            best, pair_key = np.maximum.reduceat(gain, first), key[first] // tq
            first = np.flatnonzero(np.r_[True, pair_key[1:] != pair_key[:-1]])
            approx, pairs = np.add.reduceat(best, first), pair_key[first]  # sorted by query, then document
        else:
            approx, pairs = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        p_q, p_d = pairs // n_docs, pairs % n_docs
        counts = np.bincount(p_q, minlength=nq)
        width = max(int(counts.max()) if len(counts) else 0, 1)
        rank = np.arange(len(pairs)) - (np.cumsum(counts) - counts)[p_q]
        dense = np.full((nq, width), -np.inf, dtype=np.float32)
        dense[p_q, rank] = approx
        dense_docs = np.full((nq, width), -1, dtype=np.int64)
        dense_docs[p_q, rank] = p_d
        dense, dense_docs, counts = torch.from_numpy(dense), torch.from_numpy(dense_docs), torch.from_numpy(counts)
        best = _top(dense, self._ninteract(k))
        out = dense_docs.gather(1, best)
        short = (counts < k).nonzero().flatten().tolist()
        if short:  # too few candidates (a narrow filter, a tiny index): add other allowed documents
            pool = np.flatnonzero(allowed) if allowed is not None else np.arange(n_docs)
            need = max(out.shape[1], min(len(pool), max(k, self._ninteract(k))))
            grown = torch.full((nq, need), -1, dtype=torch.long)
            grown[:, : out.shape[1]] = out
            for n in short:
                have = out[n][out[n] >= 0].numpy()
                extra = pool[~np.isin(pool, have)][: need - len(have)]
                grown[n, : len(have) + len(extra)] = torch.from_numpy(np.concatenate([have, extra]))
            out = grown
        return out

    def _best_docs(self, cand: torch.Tensor, n: int, token_scores: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query, the best ``n`` of ``cand`` (positions, -1 = none) by MaxSim over token scores:
        ``token_scores(rows, pos)`` gives the score of each document token at ``pos`` (b, docs, L) against each
        query token of queries ``rows`` (b, docs, L, tq); padding query tokens score 0 and add nothing.
        Several queries and documents per step (few, large torch ops: small ones stall on thread barriers when
        the cores are shared), a running top-``n`` over document chunks (memory stays bounded)."""
        nq, n = len(cand), min(n, cand.shape[1])
        width = max(int(self._doclens.max()), 1)
        budget = 1 << 18  # document tokens scored per step
        dstep = max(1, min(cand.shape[1], budget // width))
        qstep = max(1, budget // (dstep * width))
        out_s, out_d = [], []
        for q0 in range(0, nq, qstep):
            rows = slice(q0, min(q0 + qstep, nq))
            best_s = torch.full((rows.stop - q0, 0), -torch.inf)
            best_d = torch.full((rows.stop - q0, 0), -1, dtype=torch.long)
            for d0 in range(0, cand.shape[1], dstep):
                part = cand[rows, d0:d0 + dstep]
                pos, mask = self._token_positions(part.numpy())  # (b, docs, L)
                tok = token_scores(rows, pos)  # (b, docs, L, tq)
                if mask is not None:
                    tok.masked_fill_(~torch.from_numpy(mask)[..., None], -torch.inf)
                sc = torch.from_numpy(_max_over_tokens(tok.flatten(0, 1)).numpy().sum(-1)).view(part.shape)
                sc.masked_fill_(part < 0, -torch.inf)
                best_s, best_d = torch.cat([best_s, sc], 1), torch.cat([best_d, part], 1)
                top = _top(best_s, n)  # stable: ties keep candidate order, however chunked
                best_s, best_d = best_s.gather(1, top), best_d.gather(1, top)
            out_s.append(best_s)
            out_d.append(best_d)
        return torch.cat(out_s), torch.cat(out_d)

    def _centroid_rerank(self, s: torch.Tensor, qmask: torch.Tensor, cand: torch.Tensor, n: int) -> torch.Tensor:
        """The best ``n`` of ``cand`` by centroid interaction over all their tokens' codes (PLAID's stage 3):
        each token's score is a row of its query's transposed centroid scores (one row gather per token)."""
        if cand.shape[1] <= n:
            return cand
        tables = s.transpose(1, 2)  # (nq, K, tq), contiguous: centroid -> its score per query token
        n_centroids = tables.shape[1]

        def token_scores(rows: slice, pos: np.ndarray) -> torch.Tensor:
            codes = np.take(self._codes, pos).astype(np.int64)
            codes += (np.arange(pos.shape[0]) * n_centroids)[:, None, None]  # into the stacked tables of ``rows``
            return torch.nn.functional.embedding(torch.from_numpy(codes), tables[rows].reshape(-1, tables.shape[2]))

        sc, docs = self._best_docs(cand, n, token_scores)
        return docs.masked_fill(torch.isinf(sc), -1)

    def _rank_codes(self, q: torch.Tensor, qmask: torch.Tensor, s: torch.Tensor, cand: torch.Tensor,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
        """MaxSim with the candidates' decoded vectors, computed from the codes without reconstructing them:
        q . normalize(c + r) = (q . c + sum over residual bytes of q . r_byte) / |c + r|. Per query a table
        maps (byte position, byte value) -> that byte's residual dot product with each query token, and a
        centroid id -> q . c (the centroid scores); one embedding-bag sum per token, divided by its stored norm."""
        c = self._search_cache()
        nbytes, per, tq = self._packed.shape[1], 8 // self.nbits, q.shape[1]
        offsets = np.arange(nbytes, dtype=np.int32) * 256
        centroid_tables = s.transpose(1, 2)  # (nq, K, tq)
        n_rows = nbytes * 256 + centroid_tables.shape[1]

        def tables(rows: slice) -> torch.Tensor:
            """The stacked (b * (bytes * 256 + K), tq) tables of queries ``rows`` (padding tokens: zero columns)."""
            qr = q[rows].reshape(-1, tq, nbytes, per).permute(0, 2, 3, 1)  # (b, bytes, per, tq)
            out = torch.empty(len(qr), n_rows, tq)
            torch.matmul(c["lut3"], qr, out=out[:, : nbytes * 256].view(len(qr), nbytes, 256, tq))
            out[:, nbytes * 256:] = centroid_tables[rows]
            return out.view(-1, tq)

        def token_scores(rows: slice, pos: np.ndarray) -> torch.Tensor:
            flat = pos.reshape(-1)
            idx = np.empty((len(flat), nbytes + 1), dtype=np.int32)
            np.add(np.take(self._packed, flat, axis=0), offsets, out=idx[:, :nbytes])
            idx[:, nbytes] = np.take(self._codes, flat)
            idx[:, nbytes] += nbytes * 256
            idx.reshape(pos.shape[0], -1)[:] += (np.arange(pos.shape[0], dtype=np.int32) * n_rows)[:, None]
            tok = torch.nn.functional.embedding_bag(torch.from_numpy(idx), tables(rows), mode="sum")
            tok.div_(torch.from_numpy(np.maximum(np.take(self._norms, flat), 1e-12))[:, None])
            return tok.view(*pos.shape, tq)

        sc, docs = self._best_docs(cand, k, token_scores)
        return sc.numpy(), docs.masked_fill(torch.isinf(sc), -1).numpy()

    def _rank_exact(self, q: torch.Tensor, qmask: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """MaxSim of each query with its candidates' (decompressed) token vectors; the top ``k``."""
        out_s = torch.full((len(q), min(k, cand.shape[1])), -torch.inf)
        out_d = torch.full(out_s.shape, -1, dtype=torch.long)
        step = max(1, 4096 // max(int(self._doclens.max()), 1))  # ~4k document tokens at a time
        for s0 in range(0, cand.shape[1], step):  # running top-k over candidate chunks (memory-bounded)
            part = cand[:, s0:s0 + step]
            pos, mask = self._tokens_of(part)
            vecs = self._vectors(pos)  # (nq, nc, L, d)
            sim = torch.einsum("qid,qnld->qinl", q, vecs).masked_fill(~mask[:, None], -torch.inf)
            sc = sim.amax(-1).masked_fill(~qmask[..., None], 0.0).sum(1).masked_fill(part < 0, -torch.inf)
            both_s, both_d = torch.cat([out_s, sc], 1), torch.cat([out_d, part], 1)
            top = _top(both_s, out_s.shape[1])
            out_s, out_d = both_s.gather(1, top), both_d.gather(1, top)
        out_d = out_d.masked_fill(torch.isinf(out_s), -1)
        return out_s.numpy(), out_d.numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_folder(path) as tmp:
            arrays = {"doclens": self._doclens}
            if self.nbits is None:
                arrays["raw"] = self._raw
            else:
                arrays.update(codes=self._codes, packed=self._packed, norms=self._norms, centroids=self.centroids,
                              cutoffs=self.cutoffs, weights=self.weights)
                if self.params["full_vectors"]:
                    arrays["full"] = self._full
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
            for name in ("codes", "packed", "norms", "centroids", "cutoffs", "weights", "full"):
                if f"{name}.npy" not in m.checksums:  # absent in an empty index (no centroids trained yet)
                    continue
                try:
                    arr = np.load(m.path(path, f"{name}.npy"), allow_pickle=False)
                except ValueError:  # older versions saved an empty index's missing centroids as an object array
                    if m.count:
                        raise CorruptIndexError(f"index '{path}': '{name}.npy' cannot be read. Rebuild the index.") from None
                    continue
                setattr(self, "_" + name if name in ("codes", "packed", "norms", "full") else name, arr)
            if len(self._norms) != len(self._codes):  # saved before norms were stored: computed once here
                self._norms = self._decoded_norms(self._codes, self._packed)
        self._ids = read_index_json(m.path(path, "ids.json"))
        self._label = {i: n for n, i in enumerate(self._ids)}
        self._meta = read_index_json(m.path(path, "metadata.json"))
        if len(self._ids) != m.count or len(self._doclens) != m.count:
            raise CorruptIndexError(f"index '{path}' lists {len(self._ids)} ids but its manifest says {m.count}.")
        return self


def _max_over_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(1)`` for ``(docs, L, t)``, as log2(L) elementwise maxima of halves in numpy: several times faster
    on CPU than torch's reduction over a middle dimension, and one thread (no barrier stalls on shared cores)."""
    a = x.numpy()
    while a.shape[1] > 1:
        h = a.shape[1] // 2
        head = np.maximum(a[:, :h], a[:, h:2 * h])
        if a.shape[1] % 2:
            head[:, :1] = np.maximum(head[:, :1], a[:, 2 * h:])
        a = head
    return torch.from_numpy(np.ascontiguousarray(a[:, 0]))


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Column indices of the ``n`` best scores per row; ties keep the earlier column (so a batched search
    ranks exactly like one query at a time, whatever else shares its batch)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]


def exact_maxsim_topk(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Brute-force MaxSim ranking (positions into ``docs``), the ground truth for recall measurements."""
    q, qm = pad(queries)
    d, dm = pad(docs)
    s = maxsim(q, qm, d, dm, doc_chunk=512)
    return torch.topk(s, k, dim=1).indices.numpy()


def create(dim: int, model_id: str | None, folder: Path, nbits: int | None = 2, **options: Any) -> MultiVectorIndex:
    """Engine factory: ``nbits=0`` (as on the command line) means uncompressed, like ``None``."""
    return MultiVectorIndex(dim, nbits=nbits or None, model_id=model_id, **options)
