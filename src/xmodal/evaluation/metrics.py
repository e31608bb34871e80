"""Retrieval metrics with several positives per query, computed in memory-bounded chunks.

Tie policy (pessimistic, as in clip_benchmark's and most papers' evaluation code paths that use
``>=``): a negative whose score *equals* the best positive's score is counted as ranked above it.
So a model that gives every candidate the same score gets R@K = 0, never a lucky hit.

The first-hit rank of a query is the 0-based position of its best-ranked positive; it equals the
number of negatives scoring at least as high as the highest-scoring positive.

Units: every score metric xmodal reports (R@K, MRR, nDCG@10, mean recall, pseudo recall, MUGE scores) is a
**percentage (0-100)**, the unit papers and the official MUGE / Chinese-CLIP scorers report recall in;
``medR`` is a 1-based rank and ``seconds`` a duration. ``METRIC_UNITS`` states this, and metrics files
written by ``write_metrics`` carry it under ``"units"``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)

# the unit of each metric family, written into every metrics file (see the module docstring)
METRIC_UNITS = {"R@K": "percent", "MRR": "percent", "nDCG@10": "percent", "mean_recall": "percent",
                "PRecall@K": "percent", "medR": "rank (1 = first)", "seconds": "seconds"}


def first_hit_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based rank of the best positive per row. ``scores``/``positives``: ``(q, n)``; each row needs a positive.

    Counts, per row, the negatives scoring ``>=`` the best positive's score, without sorting and without
    copying the score block: only a ``(q, n)`` boolean temporary and ``O(#positives)`` index arrays.
    """
    rows, cols = np.nonzero(positives)
    q = scores.shape[0]
    if not np.bincount(rows, minlength=q).all():
        raise ValueError("every query needs at least one positive candidate")
    pos_scores = scores[rows, cols]
    best = np.full(q, -np.inf, dtype=np.float64)
    np.maximum.at(best, rows, pos_scores)
    best = best.astype(scores.dtype, copy=False)
    at_least = np.count_nonzero(scores >= best[:, None], axis=1)
    pos_at_least = np.bincount(rows, weights=(pos_scores >= best[rows]), minlength=q).astype(np.int64)
    return (at_least - pos_at_least).astype(np.int64)


def _top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` columns of ``argsort(-scores, kind="stable")`` per row, via argpartition.

    Candidates tied with the k-th best score are taken lowest column first, as a stable sort would.
    """
    n = scores.shape[1]
    if k >= n:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    del part
    above = scores > kth
    n_eq_needed = k - np.count_nonzero(above, axis=1, keepdims=True)
    eq = scores == kth
    take = above | (eq & (np.cumsum(eq, axis=1, dtype=np.int32) <= n_eq_needed))
    del above, eq
    cols = np.nonzero(take)[1].reshape(scores.shape[0], k)  # ascending column order within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def ndcg_at_k(scores: np.ndarray, positives: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """Binary-relevance nDCG@k per row (ties broken by candidate order, i.e. stable sort).

    Works ``block`` rows at a time with argpartition, so temporaries are ``O(block * n)``.
    """
    k = min(k, scores.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.empty(scores.shape[0], dtype=np.float64)
    for a in range(0, scores.shape[0], block):
        s, p = scores[a:a + block], positives[a:a + block]
        order = _top_k_stable(s, k)
        gains = np.take_along_axis(p, order, axis=1).astype(np.float64)
        dcg = (gains * discounts).sum(axis=1)
        ideal = np.array([discounts[: min(int(n), k)].sum() for n in np.count_nonzero(p, axis=1)])
        out[a:a + block] = dcg / np.maximum(ideal, 1e-12)
    return out


def summarize(ranks: np.ndarray, ndcg: np.ndarray | None, prefix: str, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """R@K, MRR and nDCG@10 (all percent, as papers report recall) and the median rank from first-hit ranks."""
    out = {f"{prefix}_R@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}
    out[f"{prefix}_MRR"] = float(100.0 * np.mean(1.0 / (ranks + 1)))
    out[f"{prefix}_medR"] = float(np.median(ranks + 1))
    if ndcg is not None:
        out[f"{prefix}_nDCG@10"] = float(100.0 * np.mean(ndcg))
    return out


def chunked_ranks(
    score_rows: Callable[[int, int], np.ndarray],
    n_queries: int,
    positives_of: Callable[[int, int], np.ndarray],
    chunk: int = 1024,
    ndcg_k: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """First-hit ranks and nDCG for ``n_queries`` rows, ``chunk`` rows at a time.

    ``score_rows(a, b)`` returns the ``(b-a, n)`` scores of queries ``a..b``; ``positives_of(a, b)``
    their boolean relevance. Per chunk this holds the score block, its relevance and one boolean
    temporary: about ``chunk * n * (itemsize + 2)`` bytes (float32, 1024 x 25k: ~154 MB); nDCG works
    on 64-row blocks of it. No full sort of the block is made.
    """
    ranks, ndcg = [], []
    for a in range(0, n_queries, chunk):
        b = min(a + chunk, n_queries)
        s, p = score_rows(a, b), positives_of(a, b)
        ranks.append(first_hit_ranks(s, p))
        ndcg.append(ndcg_at_k(s, p, ndcg_k))
        del s, p  # free this block before the next one is made
    if not ranks:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(ranks), np.concatenate(ndcg)


def mean_recall(metrics: dict[str, float], ks: Sequence[int] = DEFAULT_KS) -> float:
    """Mean of R@K over both directions (the "mR" of Multi30k/MUGE-style reports)."""
    return float(np.mean([metrics[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in ks]))


def pseudo_recall(retrieved_texts: Sequence[Sequence[str]], answers: Sequence[Iterable[str]],
                  ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """FLMR's pseudo recall: a hit when any of the top-K retrieved passages contains an answer string.

    Matching is case-insensitive substring matching, as in the OK-VQA retrieval evaluations.
    """
    if len(retrieved_texts) != len(answers):
        raise ValueError("one list of answers per query is required")
    out = {}
    for k in ks:
        hits = []
        for passages, ans in zip(retrieved_texts, answers):
            ans = [a.lower() for a in ans if a and a.strip()]
            hits.append(any(a in p.lower() for p in passages[:k] for a in ans))
        out[f"PRecall@{k}"] = float(100.0 * np.mean(hits)) if hits else 0.0
    return out
