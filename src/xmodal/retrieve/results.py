"""One result type for retrieval and reranking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SearchResult:
    """Ranked hits for one query.

    Attributes:
        ids: item ids, best first (length <= k).
        scores: one score per id (higher is better); the scale depends on ``stage``.
        stage: which stage produced this ranking: ``"retrieve"`` (index), ``"rerank"`` (cross-encoder)
            or ``"exact"`` (brute force over everything).
        metadata: per-id metadata (e.g. ``{"path": ...}``) where the index has it, else empty dicts.
        timings: seconds spent per stage, e.g. ``{"encode": .., "retrieve": .., "rerank": ..}``.
    """

    ids: list[str]
    scores: list[float]
    stage: str = "retrieve"
    metadata: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": list(self.ids),
            "scores": [float(s) for s in self.scores],
            "stage": self.stage,
            "metadata": list(self.metadata),
            "timings": dict(self.timings),
        }
