"""Exact MaxSim (ColBERT late interaction) on padded multi-vector tensors, batched and memory-bounded.

score(q, d) = sum over the query's real tokens i of max over the document's real tokens j of <q_i, d_j>.

The one implementation: the multi-vector index, ``LateInteractionEncoder.similarity``, the evaluator and
``MaxSimInfoNCELoss`` (it is differentiable) all call ``maxsim``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def pad(vectors: Sequence[np.ndarray] | np.ndarray, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A ragged list of ``(t_i, d)`` arrays -> padded ``(n, T, d)`` float32 tensor and ``(n, T)`` bool mask."""
    if isinstance(vectors, np.ndarray) and vectors.ndim == 3:
        return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), torch.ones(vectors.shape[:2], dtype=torch.bool)
    arrs = [np.asarray(v, dtype=np.float32) for v in vectors]
    d = dim or (arrs[0].shape[1] if arrs else 0)
    t = max((len(a) for a in arrs), default=0)
    out = torch.zeros(len(arrs), max(t, 1), d)
    mask = torch.zeros(len(arrs), max(t, 1), dtype=torch.bool)
    for i, a in enumerate(arrs):
        out[i, : len(a)] = torch.from_numpy(a)
        mask[i, : len(a)] = True
    return out, mask


def maxsim(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor,
           doc_chunk: int = 1024, device: str | torch.device | None = None) -> torch.Tensor:
    """``(nq, nd)`` MaxSim scores. Peak memory ~ ``nq * doc_chunk * Tq * Td`` floats (documents in chunks).

    Masks are ``True``/1 for real tokens. Differentiable (training uses it on the whole batch at once).
    """
    device = torch.device(device) if device is not None else q.device
    q, q_mask = q.to(device, torch.float32), q_mask.to(device).bool()
    out = torch.empty(q.shape[0], d.shape[0], device=device)
    for s in range(0, d.shape[0], doc_chunk):
        dc = d[s:s + doc_chunk].to(device, torch.float32)
        dm = d_mask[s:s + doc_chunk].to(device).bool()
        sim = torch.einsum("qid,njd->qnij", q, dc)  # (nq, nc, Tq, Td)
        sim = sim.masked_fill(~dm[None, :, None, :], float("-inf"))
        best = sim.max(dim=-1).values  # (nq, nc, Tq)
        best = best.masked_fill(~q_mask[:, None, :], 0.0)
        out[:, s:s + doc_chunk] = best.sum(dim=-1)
    return out


def maxsim_numpy_reference(q: np.ndarray, d: np.ndarray) -> float:
    """Plain definition for one (query, document) pair, used by tests as the independent reference."""
    return float((q @ d.T).max(axis=1).sum())
