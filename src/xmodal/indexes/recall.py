"""Measured recall for ANN indexes: exact top-k ground truth (streamed), recall@k, and the tuning record.

An ANN index is only as good as its search parameters; defaults tuned on one data set give 0.2-0.7
recall on another. ``FaissIndex.tune`` uses these helpers to pick the smallest ``efSearch`` /
``nprobe`` / refine factor that meets a recall target on a sample of the collection's own vectors,
and records the outcome as a :class:`Tuning` (stored in the manifest, shown by ``info``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np


@dataclass
class Tuning:
    """Outcome of a recall tuning run (what was asked, what was chosen, what was measured)."""

    target_recall: float
    recall: float  # measured recall@k against exact search at the chosen params
    met: bool
    params: dict[str, Any]  # chosen search parameters, e.g. {"ef_search": 64}
    k: int = 10
    sample: int = 0  # number of query vectors the recall was measured on
    items: int = 0  # index size when measured (adds/removes since then can shift recall a little)
    exact_truth: bool = True  # False: ground truth computed on the index's stored (compressed) vectors
    note: str = ""  # when the target was not met: what would meet it
    tried: list[list[Any]] = field(default_factory=list)  # [params, recall] per measured setting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Tuning | None":
        if not d:
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items()) or "exact search"
        verdict = "meets" if self.met else "does NOT meet"
        text = (f"recall@{self.k} {self.recall:.3f} ({self.sample:,} sample queries, {self.items:,} items) at {params} "
                f"({verdict} the target {self.target_recall:.3f})")
        return text + (f"; {self.note}" if self.note else "")


def _blocks(chunks: Iterable[tuple[np.ndarray, np.ndarray]], block: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """The chunks cut into at most ``block`` vectors: the score matrix and its top-k temporaries are
    ``queries x block`` (a 50k-vector shard against 1,000 queries made ~1.2 GB of them at once)."""
    for labels, vecs in chunks:
        if len(labels) == 0:
            continue
        labels = np.asarray(labels, dtype=np.int64)
        for s in range(0, len(labels), block):
            yield labels[s:s + block], np.asarray(vecs[s:s + block], dtype=np.float32)


def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int,
               metric: str = "ip", block: int = 8192) -> np.ndarray:
    """Exact top-``k`` labels per query over ``(labels, vectors)`` chunks, one chunk in memory at a time
    (scored ``block`` vectors at a time).

    Returns an ``(n_queries, k)`` int64 array (``-1`` where fewer than ``k`` vectors exist).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_l = np.full((len(q), k), -1, dtype=np.int64)
    for labels, v in _blocks(chunks, block):
        s = q @ v.T
        if metric == "l2":  # higher is better: -||q - v||^2 up to the per-query constant ||q||^2
            s = 2 * s - (v * v).sum(axis=1)[None, :]
        s = np.concatenate([best_s, s.astype(np.float32)], axis=1)
        lab = np.concatenate([best_l, np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(q), len(labels)))], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)[:, :k]
        best_s, best_l = np.take_along_axis(s, top, 1), np.take_along_axis(lab, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_l, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ignoring ``-1``/None slots) present in the same row of ``found``."""
    hits = total = 0
    for f, t in zip(found.tolist(), truth.tolist()):
        want = {x for x in t if x is not None and x != -1}
        hits += len(want & set(f))
        total += len(want)
    return hits / total if total else 1.0
