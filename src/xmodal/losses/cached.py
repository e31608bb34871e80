"""Cached-gradient contrastive training (GradCache): a large batch's negatives in a small batch's memory.

A contrastive loss couples every pair of the batch, so plain gradient accumulation over micro-batches
changes the loss (each micro-batch only sees its own negatives). GradCache (Gao et al., 2021) keeps the
loss exact in three passes:

1. embed the whole batch micro-batch by micro-batch **without** a graph (memory of one micro-batch);
2. compute the loss over all N x N pairs from those embeddings (leaf tensors) and backpropagate it into
   the embeddings only (plus the loss's own parameters, e.g. the temperature) -> d loss / d embedding;
3. embed each micro-batch again **with** a graph and backpropagate ``<embedding, cached gradient>``,
   which by the chain rule adds exactly that micro-batch's share of the full-batch parameter gradient.

The random state is replayed per micro-batch, so dropout masks in pass 3 equal those of pass 1.
Under ``torch.distributed`` the embeddings are gathered across ranks (``gather_with_grad``) before the
loss, so the negatives are the global batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from ..errors import InvalidInputError
from .contrastive import gather_with_grad


def split_batch(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Cut a collated batch (nested dicts of row-aligned tensors) into micro-batches of ``size`` rows."""
    n = len(batch["labels"])

    def rows(x: Any, a: int, b: int) -> Any:
        if isinstance(x, dict):
            return {k: rows(v, a, b) for k, v in x.items()}
        return x[a:b] if isinstance(x, torch.Tensor) else x

    return [rows(batch, a, min(a + size, n)) for a in range(0, n, size)]


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def supports_cached(loss: nn.Module) -> bool:
    """Losses that are a function of (text embeddings, image embeddings, labels) only."""
    return hasattr(loss, "loss_from_embeddings") and hasattr(loss, "model")


def cached_backward(loss: nn.Module, batch: dict[str, Any], micro_batch: int, *,
                    scale: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                    autocast: Callable[[], ContextManager] = nullcontext) -> float:
    """Accumulate into ``.grad`` the gradient of ``loss`` over the whole ``batch``, embedding ``micro_batch`` rows at a time.

    Args:
        loss: a loss with ``loss_from_embeddings(t, i, labels)`` (InfoNCE, SigLIP, VSE++, metric-learning adapter).
        batch: a collated batch (``text``, ``image``, ``labels``).
        scale: applied to the loss before backward (gradient accumulation factor, AMP grad scaler).
        autocast: a context for the embedding forwards (mixed precision).

    Returns the loss value (float).
    """
    if not supports_cached(loss):
        raise InvalidInputError(
            f"{type(loss).__name__} cannot be trained with --micro-batch (cached gradients need a loss computed from "
            "embeddings alone: infonce, siglip, vsepp); drop --micro-batch or use --grad-accum.")
    model = loss.model
    chunks = split_batch(batch, micro_batch)
    states, t_parts, i_parts = [], [], []
    with torch.no_grad():  # pass 1: embeddings only, no graph kept
        for c in chunks:
            states.append(_rng_state())
            with autocast():
                t_parts.append(model.text_embeddings(c["text"]).float())
                i_parts.append(model.image_embeddings(c["image"]).float())
    after = _rng_state()
    t = torch.cat(t_parts).requires_grad_(True)
    i = torch.cat(i_parts).requires_grad_(True)
    labels = batch["labels"].to(t.device)
    tg, ig = gather_with_grad(t), gather_with_grad(i)
    lg = gather_with_grad(labels.float()).long()
    value = loss.loss_from_embeddings(tg, ig, lg)  # pass 2: the full N x N loss
    scale(value).backward()  # -> t.grad, i.grad (and the loss's own parameters' grads)
    start = 0
    for c, state in zip(chunks, states):  # pass 3: per micro-batch, chain rule through the cached gradients
        n = len(c["labels"])
        _set_rng_state(state)
        with autocast():
            surrogate = (model.text_embeddings(c["text"]).float() * t.grad[start:start + n]).sum() + (
                model.image_embeddings(c["image"]).float() * i.grad[start:start + n]).sum()
        surrogate.backward()
        start += n
    _set_rng_state(after)
    return float(value.detach())
