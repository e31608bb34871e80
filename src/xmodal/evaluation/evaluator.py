"""``RetrievalEvaluator``: R@1/5/10 in both directions, mean recall, MRR, nDCG, with optional reranking."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data.images import open_image
from ..data.types import ImageTextDataset
from ..errors import InvalidInputError
from ..io import atomic_write_json
from ..models.roles import MultiVectorEncoder, PairScorer, SingleVectorEncoder
from ..ops.maxsim import maxsim, pad
from .metrics import DEFAULT_KS, METRIC_UNITS, chunked_ranks, mean_recall, summarize

# Reranked candidates are lifted above every retrieved-only score by this offset, so a rerank keeps
# the "retrieve top-depth, then reorder them" semantics inside one score matrix.
_RERANK_OFFSET = 1e6


class RetrievalEvaluator:
    """Evaluate image<->text retrieval on one split like the reference papers do.

    t2i: every caption is a query; its image is the one positive (MUGE / Chinese-CLIP texts listing
    several images: each of them). i2t: every image with a caption is a query; all its captions (e.g. 5)
    are positives; images no caption belongs to (distractors in a MUGE gallery) are candidates only.
    Every score (R@K, MRR, nDCG@10, ``mean_recall``) is in percent, ``medR`` a 1-based rank;
    ``mean_recall`` (primary) is the mean of the six recalls.

    >>> ev = RetrievalEvaluator(dataset)                       # doctest: +SKIP
    >>> ev(model)                                              # retrieve only  # doctest: +SKIP
    >>> ev(model, reranker=cross, depth=20)                    # retrieve + rerank  # doctest: +SKIP
    >>> ev(None, reranker=cross)                               # cross-encoder over all pairs  # doctest: +SKIP
    """

    primary_metric = "mean_recall"

    def __init__(self, dataset: ImageTextDataset, ks: Sequence[int] = DEFAULT_KS, batch_size: int = 64,
                 chunk_size: int = 1024, name: str | None = None, show_progress: bool = False) -> None:
        if not dataset.captions or not dataset.images:
            raise InvalidInputError(f"dataset '{dataset.name}' split '{dataset.split}' has no captions or no images.")
        self.dataset = dataset
        self.ks = tuple(ks)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.name = name or f"{dataset.name}/{dataset.split}"
        self.show_progress = show_progress
        self.image_ids = dataset.image_ids
        col = {iid: j for j, iid in enumerate(self.image_ids)}
        missing = [c.image_id for c in dataset.captions if c.image_id not in col]
        if missing:
            raise InvalidInputError(f"{len(missing)} captions refer to unknown images, e.g. {missing[:3]}")
        self.texts = [c.text for c in dataset.captions]
        self.caption_image = np.array([col[c.image_id] for c in dataset.captions], dtype=np.int64)
        self._index_positives(dataset, col)

    def _index_positives(self, dataset: ImageTextDataset, col: dict[str, int]) -> None:
        """(caption, image) positive pairs, indexed both ways (CSR) so a chunk's relevance is built in O(pairs).

        A caption's positives are its image, or every image listed in ``extra["caption_images"]`` (MUGE /
        Chinese-CLIP texts may match several images; their official scorers count any of them as a hit).
        """
        multi = dataset.extra.get("caption_images")
        if multi is None:
            cap, img = np.arange(len(self.texts)), self.caption_image
        else:
            if len(multi) != len(self.texts):
                raise InvalidInputError("extra['caption_images'] needs one list of image ids per caption.")
            unknown = [i for ids in multi for i in ids if i not in col]
            if unknown:
                raise InvalidInputError(f"{len(unknown)} positives refer to unknown images, e.g. {unknown[:3]}")
            cap = np.repeat(np.arange(len(multi)), [len(ids) for ids in multi])
            img = np.array([col[i] for ids in multi for i in ids], dtype=np.int64)
        by_cap, by_img = np.lexsort((img, cap)), np.lexsort((cap, img))
        self._t2i_ptr = np.searchsorted(cap[by_cap], np.arange(len(self.texts) + 1))
        self._t2i_cols = img[by_cap]
        self._i2t_ptr = np.searchsorted(img[by_img], np.arange(len(self.image_ids) + 1))
        self._i2t_cols = cap[by_img]
        # image->text queries: the images some text lists (a MUGE gallery also holds images no text lists;
        # like Chinese-CLIP's image->text ground truth, those are candidates only)
        self.i2t_queries = np.flatnonzero(np.diff(self._i2t_ptr) > 0)

    @staticmethod
    def _csr_rows(ptr: np.ndarray, cols: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
        """Boolean relevance rows for the queries ``idx`` from a CSR (ptr, cols) index."""
        counts = ptr[idx + 1] - ptr[idx]
        rows = np.repeat(np.arange(len(idx)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        p = np.zeros((len(idx), width), dtype=bool)
        p[rows, cols[np.repeat(ptr[idx], counts) + within]] = True
        return p

    def _t2i_pos(self, a: int, b: int) -> np.ndarray:
        return self._csr_rows(self._t2i_ptr, self._t2i_cols, np.arange(a, b), len(self.image_ids))

    def _i2t_pos(self, a: int, b: int) -> np.ndarray:
        """Rows ``a..b`` of the image->text queries (``i2t_queries``)."""
        return self._csr_rows(self._i2t_ptr, self._i2t_cols, self.i2t_queries[a:b], len(self.texts))

    def embed(self, model: SingleVectorEncoder | MultiVectorEncoder) -> tuple[Any, Any]:
        """Text and image embeddings of the split (each encoded once).

        Single-vector models give two ``(n, d)`` arrays; a ``MultiVectorEncoder`` gives two lists of
        token/patch arrays.
        """
        txt = model.encode_text(self.texts, batch_size=self.batch_size, show_progress=self.show_progress)
        imgs = [self.dataset.images[i] for i in self.image_ids]
        img = model.encode_image(imgs, batch_size=self.batch_size, show_progress=self.show_progress)
        if isinstance(model, MultiVectorEncoder):
            return list(txt), list(img)
        return np.asarray(txt, dtype=np.float32), np.asarray(img, dtype=np.float32)

    def __call__(self, model: SingleVectorEncoder | MultiVectorEncoder | None = None, reranker: PairScorer | None = None,
                 depth: int | None = None) -> dict[str, float]:
        """Metrics dict. ``model`` alone: retrieve; + ``reranker`` and ``depth``: retrieve then rerank the top
        ``depth``; ``reranker`` alone (``model=None``): the cross-encoder scores every pair."""
        t0 = time.perf_counter()
        if model is None and reranker is None:
            raise InvalidInputError("give a model, a reranker, or both.")
        mode = "retrieve" if reranker is None else ("rerank_all" if model is None else "retrieve_rerank")
        if mode == "retrieve_rerank" and not depth:
            raise InvalidInputError("retrieve+rerank needs the candidate depth (e.g. depth=20).")
        n_t, n_i, q_img = len(self.texts), len(self.image_ids), self.i2t_queries
        if mode == "rerank_all":
            t2i_full = self._pair_scores(reranker, np.arange(n_t), np.tile(np.arange(n_i), (n_t, 1)))
            t2i_rows = lambda a, b: t2i_full[a:b]  # noqa: E731
            i2t_rows = lambda a, b: t2i_full.T[q_img[a:b]]  # noqa: E731
        else:
            txt, img = self.embed(model)
            if isinstance(model, MultiVectorEncoder):
                # late interaction: one pair score, MaxSim with the text's tokens as the query side (as trained),
                # read by rows for text->image and by columns for image->text
                (tv, tm), (iv, im) = pad(txt), pad(img)
                t2i_rows = lambda a, b: maxsim(tv[a:b], tm[a:b], iv, im).numpy()  # noqa: E731
                i2t_rows = lambda a, b: maxsim(tv, tm, iv[q_img[a:b]], im[q_img[a:b]]).numpy().T  # noqa: E731
            else:
                t2i_rows = lambda a, b: txt[a:b] @ img.T  # noqa: E731
                i2t_rows = lambda a, b: img[q_img[a:b]] @ txt.T  # noqa: E731
            if mode == "retrieve_rerank":
                t2i_rows = self._reranked(t2i_rows, n_t, reranker, depth, text_queries=True)
                i2t_rows = self._reranked(i2t_rows, len(q_img), reranker, depth, text_queries=False)
        r_t2i, nd_t2i = chunked_ranks(t2i_rows, n_t, self._t2i_pos, self.chunk_size)
        r_i2t, nd_i2t = chunked_ranks(i2t_rows, len(q_img), self._i2t_pos, self.chunk_size)
        metrics = {**summarize(r_t2i, nd_t2i, "t2i", self.ks), **summarize(r_i2t, nd_i2t, "i2t", self.ks)}
        metrics["mean_recall"] = mean_recall(metrics, self.ks)
        metrics["seconds"] = time.perf_counter() - t0
        self.last_mode = mode
        return metrics

    # ------------------------------------------------------------------ reranking
    def _pair_scores(self, reranker: PairScorer, text_idx: np.ndarray, image_idx: np.ndarray) -> np.ndarray:
        """Cross-encoder scores for text i against images image_idx[i, :] -> (len(text_idx), m)."""
        m = image_idx.shape[1]
        load = getattr(reranker, "load_image", open_image)  # region models read features, not pixels
        images = {j: load(self.dataset.images[self.image_ids[j]]) for j in np.unique(image_idx)}
        queries = [self.texts[i] for i in text_idx for _ in range(m)]
        cands = [images[j] for j in image_idx.ravel()]
        scores = np.asarray(reranker.score(queries, cands), dtype=np.float32)
        return scores.reshape(len(text_idx), m)

    def _reranked(self, rows: Any, n_queries: int, reranker: PairScorer, depth: int, text_queries: bool) -> Any:
        """Wrap a score function so each query's top-``depth`` is reordered by the reranker."""
        # no cache of the reranked blocks: chunked_ranks asks for each block once, and keeping them
        # all would hold the whole (n_queries, n) float64 matrix in memory.
        def reranked_rows(a: int, b: int) -> np.ndarray:
            # float64: near the 1e6 offset float32 steps are 0.0625 and would turn close reranker scores into ties
            s = rows(a, b).astype(np.float64)
            d = min(depth, s.shape[1])
            top = np.argsort(-s, axis=1, kind="stable")[:, :d]
            q_idx = np.arange(a, b) if text_queries else self.i2t_queries[a:b]
            if text_queries:
                r = self._pair_scores(reranker, q_idx, top)
            else:  # image queries: score (caption, image) pairs, same orientation as training
                r = self._pair_scores_i2t(reranker, q_idx, top)
            np.put_along_axis(s, top, _RERANK_OFFSET + r.astype(np.float64), axis=1)
            return s

        return reranked_rows

    def _pair_scores_i2t(self, reranker: PairScorer, image_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        m = text_idx.shape[1]
        load = getattr(reranker, "load_image", open_image)
        images = {j: load(self.dataset.images[self.image_ids[j]]) for j in image_idx}
        queries = [images[j] for j in image_idx for _ in range(m)]
        cands = [self.texts[t] for t in text_idx.ravel()]
        return np.asarray(reranker.score(queries, cands), dtype=np.float32).reshape(len(image_idx), m)


def format_table(results: dict[str, dict[str, float]], ks: Sequence[int] = DEFAULT_KS) -> str:
    """A plain-text table: one row per named run, R@K both directions and mean recall."""
    cols = [f"t2i_R@{k}" for k in ks] + [f"i2t_R@{k}" for k in ks] + ["mean_recall"]
    w = max(len(c) for c in cols) + 2  # every header is separated by at least two spaces
    nw = max([24, *(len(n) + 1 for n in results)])
    head = f"{'run':<{nw}}" + "".join(f"{c:>{w}}" for c in cols) + f"{'seconds':>{w}}"
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        lines.append(f"{name:<{nw}}" + "".join(f"{m[c]:>{w}.2f}" for c in cols) + f"{m.get('seconds', 0):>{w}.1f}")
    return "\n".join(lines)


def write_metrics(path: str | Path, results: dict[str, dict[str, float]]) -> Path:
    """A metrics JSON file: ``{"units": METRIC_UNITS, RUN_NAME: {metric: value}, ...}`` (scores in percent)."""
    if "units" in results:
        raise InvalidInputError("'units' is reserved in a metrics file; name the run differently.")
    return atomic_write_json(path, {"units": METRIC_UNITS, **results})
