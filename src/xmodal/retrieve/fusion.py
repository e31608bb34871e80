"""Fusing ranked lists of different retrievers (dense vectors, BM25): reciprocal-rank or weighted scores.

Both take rankings as ``[(id, score), ...]`` best first and return one fused ranking, best first.

- ``reciprocal_rank``: score(id) = sum over lists of ``weight / (rrf_k + rank)`` (rank from 1). Uses
  ranks only, so it needs no calibration between cosine similarities and BM25 scores (Cormack et al. 2009).
- ``weighted``: each list's scores min-max normalised to [0, 1], then ``alpha * dense + (1 - alpha) * lexical``;
  an id missing from a list gets 0 there. Keeps score gaps (a far better BM25 match counts more).
Ties go to the item more lists found.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..errors import InvalidInputError

Ranking = Sequence[tuple[str, float]]
RRF_K = 60  # the constant of the original RRF paper; larger flattens the rank curve


def _ranked(fused: dict[str, float], seen: dict[str, int]) -> list[tuple[str, float]]:
    # ties: an item found by more retrievers first, then first-seen (dense) order (sorted is stable)
    return sorted(fused.items(), key=lambda kv: (-kv[1], -seen[kv[0]]))


def reciprocal_rank(rankings: Sequence[Ranking], weights: Sequence[float] | None = None,
                    rrf_k: int = RRF_K) -> list[tuple[str, float]]:
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    fused: dict[str, float] = {}
    seen: dict[str, int] = {}
    for ranking, w in zip(rankings, weights):
        for rank, (item, _) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + w / (rrf_k + rank)
            seen[item] = seen.get(item, 0) + 1
    return _ranked(fused, seen)


def _normalised(ranking: Ranking) -> dict[str, float]:
    if not ranking:
        return {}
    scores = [s for _, s in ranking]
    lo, hi = min(scores), max(scores)
    span = hi - lo
    return {i: (s - lo) / span if span > 0 else 1.0 for i, s in ranking}


def weighted(rankings: Sequence[Ranking], weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    weights = list(weights) if weights is not None else [1.0 / len(rankings)] * len(rankings)
    fused: dict[str, float] = {}
    seen: dict[str, int] = {}
    for ranking, w in zip(rankings, weights):
        for item, s in _normalised(ranking).items():
            fused[item] = fused.get(item, 0.0) + w * s
            seen[item] = seen.get(item, 0) + 1
    return _ranked(fused, seen)


FUSIONS: dict[str, Callable[..., list[tuple[str, float]]]] = {"rrf": reciprocal_rank, "weighted": weighted}
MODES = ("dense", "lexical", "hybrid")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r:.40}; use one of: {', '.join(MODES)}.")
    return mode


def fuse(dense: Ranking, lexical: Ranking, method: str = "rrf", alpha: float = 0.5) -> list[tuple[str, float]]:
    """One ranking from a dense and a lexical one. ``alpha`` is the dense share (0..1): the weight of the
    dense list (the lexical one gets ``1 - alpha``), for both methods."""
    if method not in FUSIONS:
        raise InvalidInputError(f"unknown fusion {method!r:.40}; use one of: {', '.join(FUSIONS)}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha (the dense share of a hybrid score) must be in [0, 1]; got {alpha!r:.40}.")
    weights = (alpha, 1.0 - alpha) if method == "weighted" else (2 * alpha, 2 * (1.0 - alpha))
    return FUSIONS[method]([dense, lexical], weights)
