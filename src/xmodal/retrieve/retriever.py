"""``Retriever``: retrieve fast with a dual encoder + index, optionally rerank smart with a cross-encoder."""

from __future__ import annotations

import inspect
import time
from typing import Any, Protocol, Sequence

import numpy as np

from ..data.images import open_image
from ..errors import InvalidInputError
from ..models.roles import MultiVectorEncoder, PairScorer, SingleVectorEncoder
from .fusion import check_mode, fuse
from .results import SearchResult

Reranker = PairScorer  # the role a reranker plays (kept under the name this module used first)


class Retriever:
    """Search an index with a dual encoder; rerank the top ``depth`` with a cross-encoder if one is given.

    Args:
        encoder: a ``SingleVectorEncoder`` (e.g. ``DualEncoder``) or a ``MultiVectorEncoder`` (late interaction).
        index: an ``Index`` built from the *other* modality's embeddings of the same encoder.
        reranker: optional ``PairScorer``; it needs the candidates' raw content, given by ``resolve``.
        depth: how many candidates the index returns for reranking.
        resolve: item id -> raw content (image path/PIL or text) for the reranker. Defaults to the
            index metadata's ``path`` (joined to ``root``) or ``text`` field.
        lexical: optional ``indexes.lexical.LexicalIndex`` (BM25 over the items' texts) for
            ``search(mode="lexical" | "hybrid")``.
    """

    def __init__(self, encoder: SingleVectorEncoder | MultiVectorEncoder, index: Any, reranker: PairScorer | None = None,
                 depth: int = 50,
                 resolve: Any = None, root: str | None = None, device: Any = None, dtype: Any = None,
                 lexical: Any = None) -> None:
        # device/dtype: move/cast the given encoder and reranker (None keeps each where it is)
        from ..runtime import move_model

        self.encoder = move_model(encoder, device, dtype)
        self.index = index
        self.reranker = move_model(reranker, device, dtype)
        self.depth = depth
        self.root = root
        self._resolve = resolve
        self.lexical = lexical

    def resolve(self, item_id: str) -> Any:
        if self._resolve is not None:
            return self._resolve(item_id)
        meta = self.index.metadata(item_id) if hasattr(self.index, "metadata") else {}
        if "text" in meta:
            return meta["text"]
        if "path" in meta:
            from pathlib import Path

            # a Path, not a str: rerankers read plain strings as texts
            return Path(self.root, meta["path"]) if self.root else Path(meta["path"])
        raise InvalidInputError(f"cannot rerank: no content known for item '{item_id}' (no 'path'/'text' metadata).")

    def _embed_query(self, text: str | None, image: Any) -> np.ndarray:
        if text is not None and not str(text).strip():
            raise InvalidInputError("the text query is empty.")
        if text is None and image is None:
            raise InvalidInputError("give a text query, an image query, or both.")
        load = getattr(self.encoder, "load_image", open_image)  # pixels, or region features for region models
        if isinstance(self.encoder, MultiVectorEncoder):  # late interaction: question tokens + image patches
            return self.encoder.encode_query(text=text, image=None if image is None else load(image))
        vecs = []
        if text is not None:
            vecs.append(self.encoder.encode_text([text], show_progress=False)[0])
        if image is not None:
            vecs.append(self.encoder.encode_image([load(image)], show_progress=False)[0])
        q = np.mean(vecs, axis=0)  # text+image query: mean of the two unit vectors, renormalised
        return (q / max(np.linalg.norm(q), 1e-12)).astype(np.float32)

    def search(self, text: str | None = None, image: Any = None, k: int = 10, rerank: bool | None = None,
               depth: int | None = None, filter: Any = None, mode: str = "dense", fusion: str = "rrf",
               alpha: float = 0.5, where: Any = None, offset: int = 0, min_score: float | None = None,
               dedup: float | None = None) -> SearchResult:
        """Top-``k`` items for a text and/or image query; reranked when a reranker is set (and ``rerank`` is not False).

        mode: ``"dense"`` (vectors), ``"lexical"`` (BM25 over the items' texts; needs a text query and an
            index built with texts) or ``"hybrid"`` (both, fused: the top ``max(k, depth)`` of each list).
        fusion / alpha: how hybrid lists are fused: ``"rrf"`` (reciprocal rank) or ``"weighted"``
            (normalised scores); ``alpha`` is the dense share (see ``retrieve.fusion.fuse``).
        filter: only these item ids may be returned.
        where: a metadata filter expression (``xmodal.indexes.filters``), e.g. ``'camera = "X100" and year >= 2020'``;
            run by the index engine itself (the lexical list gets the matching ids).
        offset: skip this many results first (paging: ``offset=k`` is the second page).
        min_score: drop results scoring below this (on the final stage's scale: index, fusion or reranker).
        dedup: drop a result whose vector has cosine similarity >= this with a higher-ranked result
            (near-identical images); needs an index that can return stored vectors (FAISS).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer; got {k!r:.40}.")
        check_mode(mode)
        if mode != "dense":
            self._check_lexical(text, mode)
        self._check_page(offset, min_score, dedup)
        timings: dict[str, float] = {}
        dense_kw: dict[str, Any] = {}
        lexical_filter = filter
        if where is not None:
            from ..indexes.filters import parse_filter

            expr = parse_filter(where)
            native = "where" in inspect.signature(self.index.search).parameters
            if mode != "dense" or not native:  # the lexical list (and engines without where=) get the matching ids
                lexical_filter = self._matching_ids(expr, filter)
            dense_kw = {"where": expr} if native else {"filter": lexical_filter}
        page = {"offset": offset, "min_score": min_score, "dedup": dedup}
        wanted = offset + k
        if mode == "lexical":
            return self._lexical_search(text, wanted, rerank, depth, lexical_filter, timings, page)
        t0 = time.perf_counter()
        q = self._embed_query(text, image)
        timings["encode"] = time.perf_counter() - t0
        use_rerank = self.reranker is not None and rerank is not False
        if rerank and self.reranker is None:
            raise InvalidInputError("reranking was asked for but this retriever has no reranker.")
        # reranking and fusion both work on a deeper candidate list than k
        depth = max(wanted, depth or self.depth) if use_rerank or mode == "hybrid" else wanted
        if dedup is not None:  # duplicates dropped after retrieval must not leave the page short
            depth = max(depth, 3 * wanted)
        # never ask the index for more than it holds: -k 1000000000 would allocate (q, k) result arrays
        size = len(self.index) if hasattr(self.index, "__len__") else None
        if size is not None:
            depth = max(1, min(depth, size))
        t0 = time.perf_counter()
        scores, ids = self.index.search([q] if q.ndim == 2 else q[None, :], depth,
                                        **{"filter": filter, **dense_kw})
        timings["retrieve"] = time.perf_counter() - t0
        hits = [(i, float(s)) for i, s in zip(ids[0], scores[0]) if i is not None]
        stage = "retrieve"
        if mode == "hybrid":  # the lexical list of the same depth, fused with the dense one
            t0 = time.perf_counter()
            lex_scores, lex_ids = self.lexical.search(text, depth, filter=lexical_filter)
            hits = fuse(hits, list(zip(lex_ids, lex_scores.tolist())), method=fusion, alpha=alpha)
            timings["lexical"] = time.perf_counter() - t0
            stage = "hybrid"
        return self._finish(hits, text, image, k, use_rerank, stage, timings, page)

    def _check_page(self, offset: Any, min_score: Any, dedup: Any) -> None:
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise InvalidInputError(f"offset must be a non-negative integer; got {offset!r:.40}.")
        if min_score is not None and not np.isfinite(min_score):
            raise InvalidInputError(f"min_score must be a finite number; got {min_score!r:.40}.")
        if dedup is not None and not 0 < dedup <= 1:
            raise InvalidInputError(f"dedup must be a cosine similarity in (0, 1]; got {dedup!r:.40}.")
        if dedup is not None and not hasattr(self.index, "reconstruct"):
            raise InvalidInputError(f"dedup needs stored vectors; the {getattr(self.index, 'engine', '')} index cannot "
                                    "return them (use a FAISS index).")

    def _matching_ids(self, expr: Any, filter: Any) -> set[str]:
        """Ids whose metadata satisfies ``expr`` (and that ``filter`` allows), for lists that take ids only."""
        from ..indexes.filters import matches

        store = getattr(self.index, "metadata_store", None)
        if store is not None and hasattr(self.index, "_n_labels"):  # FAISS: evaluated on its columns
            mask = store().mask(expr, self.index._n_labels())
            labels = np.flatnonzero(mask)
            allowed = {i for i in self.index._ids_of(labels).tolist() if i is not None}
        else:
            allowed = {i for i in self.index.ids() if matches(expr, self.index.metadata(i))}
        return allowed if filter is None else allowed & set(filter)

    def _check_lexical(self, text: str | None, mode: str) -> None:
        if self.lexical is None:
            raise InvalidInputError(f"mode={mode!r} needs a lexical (BM25) index, and this index has none: build it "
                                    "with texts (xmodal index --texts FILE --text-fields caption,title, or "
                                    "xmodal index-texts).")
        if text is None or not str(text).strip():
            raise InvalidInputError(f"mode={mode!r} needs a text query (BM25 matches words); use mode='dense' "
                                    "for an image-only query.")

    def _lexical_search(self, text: str, k: int, rerank: bool | None, depth: int | None, filter: Any,
                        timings: dict[str, float], page: dict[str, Any] | None = None) -> SearchResult:
        use_rerank = self.reranker is not None and rerank is not False
        if rerank and self.reranker is None:
            raise InvalidInputError("reranking was asked for but this retriever has no reranker.")
        t0 = time.perf_counter()
        scores, ids = self.lexical.search(text, max(k, depth or self.depth) if use_rerank else k, filter=filter)
        timings["lexical"] = time.perf_counter() - t0
        page = page or {}
        return self._finish(list(zip(ids, scores.tolist())), text, None, k - page.get("offset", 0), use_rerank,
                            "lexical", timings, page)

    def _finish(self, hits: list[tuple[str, float]], text: str | None, image: Any, k: int, use_rerank: bool,
                stage: str, timings: dict[str, float], page: dict[str, Any] | None = None) -> SearchResult:
        """Rerank the candidates (when asked), drop near-duplicates and low scores, cut the page
        (``offset``, ``k``), attach metadata."""
        if use_rerank and hits:
            if text is not None and image is not None:
                raise InvalidInputError("reranking supports a text or an image query, not both at once.")
            t0 = time.perf_counter()
            query = text if text is not None else getattr(self.reranker, "load_image", open_image)(image)
            cands = [self.resolve(i) for i, _ in hits]
            rs = np.asarray(self.reranker.score([query] * len(cands), cands), dtype=np.float32)
            order = np.argsort(-rs, kind="stable")
            hits = [(hits[j][0], float(rs[j])) for j in order]
            timings["rerank"] = time.perf_counter() - t0
            stage = "rerank"
        page = page or {}
        if page.get("dedup") is not None and hits:
            hits = _drop_near_duplicates(hits, self.index, page["dedup"])
        if page.get("min_score") is not None:
            hits = [(i, s) for i, s in hits if s >= page["min_score"]]
        offset = page.get("offset", 0)
        hits = hits[offset:offset + k]
        meta = [self.index.metadata(i) if hasattr(self.index, "metadata") else {} for i, _ in hits]
        return SearchResult([i for i, _ in hits], [s for _, s in hits], stage=stage, metadata=meta, timings=timings)


def _drop_near_duplicates(hits: list[tuple[str, float]], index: Any, threshold: float) -> list[tuple[str, float]]:
    """Keep a hit only if its cosine similarity to every higher-ranked kept hit is below ``threshold``."""
    vecs = np.asarray(index.reconstruct([i for i, _ in hits]), dtype=np.float32)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    kept: list[int] = []
    for j in range(len(hits)):
        if not kept or float(np.max(vecs[kept] @ vecs[j])) < threshold:
            kept.append(j)
    return [hits[j] for j in kept]
