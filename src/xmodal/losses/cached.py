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
from .contrastive import MinedEmbeddings, gather_flags, gather_with_grad


def split_batch(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Cut a collated batch (nested dicts of row-aligned tensors) into micro-batches of ``size`` rows."""
    n = len(batch["labels"])

    def rows(x: Any, a: int, b: int) -> Any:
        if isinstance(x, dict):
            return {k: rows(v, a, b) for k, v in x.items()}
        return x[a:b] if isinstance(x, torch.Tensor) else x

    return [rows(batch, a, min(a + size, n)) for a in range(0, n, size)]


# (batch key, tower) of everything a micro-batch embeds, in a fixed order (the RNG replay depends on it);
# neg_image / neg_text are the mined hard negatives (xmodal train --hard-negatives)
_PARTS = (("text", "text_embeddings"), ("image", "image_embeddings"),
          ("neg_image", "image_embeddings"), ("neg_text", "text_embeddings"))


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
        batch: a collated batch (``text``, ``image``, ``labels``; with mined hard negatives also ``neg_image`` /
            ``neg_text`` + ``neg_*_valid``, embedded micro-batch by micro-batch like the rest).
        scale: applied to the loss before backward (gradient accumulation factor, AMP grad scaler).
        autocast: a context for the embedding forwards (mixed precision).

    Returns the loss value (float).
    """
    if not supports_cached(loss):
        raise InvalidInputError(
            f"{type(loss).__name__} cannot be trained with --micro-batch (cached gradients need a loss computed from "
            "embeddings alone: infonce, siglip, vsepp); drop --micro-batch or use --grad-accum.")
    model = loss.model
    parts = [(key, tower) for key, tower in _PARTS if key in batch]
    if len(parts) > 2 and not getattr(loss, "accepts_mined", False):
        raise InvalidInputError(f"{type(loss).__name__} does not use mined hard negatives; drop --hard-negatives.")
    chunks = split_batch(batch, micro_batch)
    states, embedded = [], {key: [] for key, _ in parts}
    with torch.no_grad():  # pass 1: embeddings only, no graph kept
        for c in chunks:
            states.append(_rng_state())
            with autocast():
                for key, tower in parts:
                    embedded[key].append(getattr(model, tower)(c[key]).float())
    after = _rng_state()
    leaves = {key: torch.cat(v).requires_grad_(True) for key, v in embedded.items()}
    t, i = leaves["text"], leaves["image"]
    labels = batch["labels"].to(t.device)
    tg, ig = gather_with_grad(t), gather_with_grad(i)
    lg = gather_with_grad(labels.float()).long()
    extra = {}
    if len(parts) > 2:
        mined = MinedEmbeddings()
        if "neg_image" in leaves:
            mined.image = gather_with_grad(leaves["neg_image"])
            mined.image_valid = gather_flags(batch["neg_image_valid"].to(t.device))
        if "neg_text" in leaves:
            mined.text = gather_with_grad(leaves["neg_text"])
            mined.text_valid = gather_flags(batch["neg_text_valid"].to(t.device))
        extra["mined"] = mined
    value = loss.loss_from_embeddings(tg, ig, lg, **extra)  # pass 2: the full N x N loss
    scale(value).backward()  # -> leaf grads (and the loss's own parameters' grads)
    grads = {key: x.grad if x.grad is not None else torch.zeros_like(x) for key, x in leaves.items()}
    start = 0
    for c, state in zip(chunks, states):  # pass 3: per micro-batch, chain rule through the cached gradients
        n = len(c["labels"])
        _set_rng_state(state)
        with autocast():
            # every part is embedded again, in pass 1's order, so dropout masks line up
            surrogate = sum((getattr(model, tower)(c[key]).float() * grads[key][start:start + n]).sum()
                            for key, tower in parts)
        surrogate.backward()
        start += n
    _set_rng_state(after)
    return float(value.detach())
