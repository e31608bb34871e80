"""Embedding losses for image-text pairs. Each is ``nn.Module(model, **hparams)`` with ``forward(batch)``.

A batch is ``{"text": tokenized dict, "image": preprocessed dict, "labels": (n,) long}`` of aligned
pairs (pair i = caption i with image i); ``labels`` names the image of each pair, so two captions
of one image in a batch are not treated as negatives of each other where a loss supports that.
With ``torch.distributed`` initialised, embeddings are gathered from all ranks (with gradients) so
the in-batch negatives are the global batch, as in CLIP's training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.maxsim import maxsim


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, differentiable (no-op outside distributed training)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def embed_pair(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global-batch text embeddings, image embeddings and labels."""
    t = gather_with_grad(model.text_embeddings(batch["text"]))
    i = gather_with_grad(model.image_embeddings(batch["image"]))
    labels = batch.get("labels")
    if labels is None:
        labels = torch.arange(len(t), device=t.device)
    else:
        labels = gather_with_grad(labels.to(t.device).float()).long()  # gather needs float for grad path
    return t, i, labels


def mined_negatives(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Embeddings and labels of the batch's mined negative images (``neg_image``; see ``train.mining``), gathered."""
    if "neg_image" not in batch:
        return None
    ni = gather_with_grad(model.image_embeddings(batch["neg_image"]))
    nl = gather_with_grad(batch["neg_labels"].to(ni.device).float()).long()
    return ni, nl


def symmetric_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CLIP's loss on a (text x image) logit matrix whose diagonal holds the pairs, in both directions.

    Duplicate images in a batch (same label): the other copies are masked out of the softmax, the diagonal kept.
    """
    same = labels[:, None] == labels[None, :]
    mask = same & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP) with a learnable temperature; same-image captions are not negatives."""

    def __init__(self, model: nn.Module, temperature: float = 0.07, learn_temperature: bool = True,
                 max_scale: float = 100.0) -> None:
        super().__init__()
        self.model = model
        self.max_scale = max_scale
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.log_scale.detach().exp().clamp(max=self.max_scale))

    def _scale(self) -> torch.Tensor:
        # a model that owns its temperature (a composed dual encoder saves it with its weights) trains that one
        own = getattr(getattr(self.model, "backbone", None), "trainable_logit_scale", None)
        return (own if own is not None else self.log_scale).exp().clamp(max=self.max_scale)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        t, i, labels = embed_pair(self.model, batch)
        mined = mined_negatives(self.model, batch)
        if mined is None:
            return self.loss_from_embeddings(t, i, labels)
        # mined negative images are extra columns of the text->image softmax (never one of the row's own images)
        ni, nl = mined
        scale = self._scale()
        extra = (scale * t @ ni.T).masked_fill(nl[None, :] == labels[:, None], float("-inf"))
        logits = scale * t @ i.T
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(t), dtype=torch.bool, device=t.device)
        t2i = torch.cat([logits.masked_fill(same, float("-inf")), extra], dim=1)
        target = torch.arange(len(t), device=t.device)
        return 0.5 * (F.cross_entropy(t2i, target) + F.cross_entropy(logits.masked_fill(same, float("-inf")).T, target))

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of (global) text and image embeddings; used directly by the cached-gradient driver."""
        return symmetric_cross_entropy(self._scale() * t @ i.T, labels)


class SigLIPLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP) with learnable scale and bias (init 10 and -10, as in the paper)."""

    def __init__(self, model: nn.Module, init_scale: float = 10.0, init_bias: float = -10.0) -> None:
        super().__init__()
        self.model = model
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(init_bias))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_from_embeddings(*embed_pair(self.model, batch))

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.log_scale.exp() * t @ i.T + self.bias
        sign = 2.0 * (labels[:, None] == labels[None, :]).float() - 1.0
        return -F.logsigmoid(sign * logits).sum() / len(t)


class VSEPPLoss(nn.Module):
    """VSE++ hinge triplet loss with margin; ``max_violation`` uses only the hardest negative (as in VSE++/TERN).

    ``warmup_steps``: the first training batches use the sum over all negatives before switching to the
    hardest one (as VSE-infinity does for its first epoch). From random weights the max-violation loss
    alone collapses every embedding onto one point, where it sits at ``2 * margin`` with no way out
    (measured: 0.4 % R@1 after 1,000 steps on the synthetic benchmark); fine-tuning pretrained towers
    does not need the warm-up (``warmup_steps=0``). The count is saved with the loss, so a resumed run
    switches at the same step.
    """

    def __init__(self, model: nn.Module, margin: float = 0.2, max_violation: bool = True, warmup_steps: int = 200) -> None:
        super().__init__()
        self.model, self.margin, self.max_violation, self.warmup_steps = model, margin, max_violation, warmup_steps
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_from_embeddings(*embed_pair(self.model, batch), mined=mined_negatives(self.model, batch))

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor,
                             mined: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        s = t @ i.T
        pos = s.diag()
        negatives = labels[:, None] != labels[None, :]
        cost_t2i = (self.margin + s - pos[:, None]).clamp(min=0) * negatives  # text as anchor, wrong images
        if mined is not None:  # mined negative images: extra candidates for each text's hardest wrong image
            ni, nl = mined
            extra = (self.margin + t @ ni.T - pos[:, None]).clamp(min=0) * (labels[:, None] != nl[None, :])
            cost_t2i = torch.cat([cost_t2i, extra], dim=1)
        cost_i2t = (self.margin + s - pos[None, :]).clamp(min=0) * negatives  # image as anchor, wrong texts
        warming_up = self.training and int(self.batches_seen) < self.warmup_steps
        if self.training:
            self.batches_seen += 1
        if self.max_violation and not warming_up:
            return cost_t2i.max(dim=1).values.mean() + cost_i2t.max(dim=0).values.mean()
        return (cost_t2i.sum() + cost_i2t.sum()) / len(t)


class MetricLearningLoss(nn.Module):
    """Adapter for any pytorch-metric-learning loss (and optional miner) over both modalities.

    Texts and images go in one embedding list; a pair's text and image share a label, so e.g.
    ``losses.TripletMarginLoss`` with a ``miners.TripletMarginMiner`` mines cross-modal triplets.
    """

    def __init__(self, model: nn.Module, loss: Any, miner: Any = None, cross_modal_only: bool = True) -> None:
        super().__init__()
        self.model, self.loss, self.miner, self.cross_modal_only = model, loss, miner, cross_modal_only

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_from_embeddings(*embed_pair(self.model, batch))

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = torch.cat([t, i])
        lab = torch.cat([labels, labels])
        tuples = self.miner(emb, lab) if self.miner is not None else None
        if self.cross_modal_only:
            tuples = self._cross_modal(tuples, lab, len(t))
        return self.loss(emb, lab, tuples)

    @staticmethod
    def _cross_modal(tuples: Any, lab: torch.Tensor, n_text: int) -> tuple[torch.Tensor, ...]:
        """Keep only text<->image pairs (rows < n_text are texts): retrieval never compares two texts."""
        from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

        if tuples is None:
            tuples = lmu.get_all_pairs_indices(lab)
        is_text = lambda x: x < n_text  # noqa: E731
        if len(tuples) == 3:  # (anchor, positive, negative)
            a, p, n = tuples
            keep = (is_text(a) != is_text(p)) & (is_text(p) == is_text(n))
            return a[keep], p[keep], n[keep]
        a1, p, a2, n = tuples
        kp, kn = is_text(a1) != is_text(p), is_text(a2) != is_text(n)
        return a1[kp], p[kp], a2[kn], n[kn]


def maxsim_scores(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """Differentiable all-pairs MaxSim ``(n_q, n_d)`` of a batch (``xmodal.ops.maxsim``, in one chunk)."""
    return maxsim(q, q_mask, d, d_mask, doc_chunk=max(len(d), 1))


class MaxSimInfoNCELoss(nn.Module):
    """In-batch contrastive loss on late-interaction (MaxSim) scores, as ColBERT/FLMR train their token vectors.

    Needs ``model.text_tokens`` / ``model.image_tokens`` (``LateInteractionEncoder``). Texts are the queries;
    the cross-entropy runs both ways over the same score matrix, and same-image captions are not negatives.
    Negatives are the process's own batch (token vectors are not gathered across DDP ranks).
    """

    def __init__(self, model: nn.Module, temperature: float = 0.1) -> None:
        super().__init__()
        if not hasattr(model, "text_tokens"):
            raise TypeError(f"{type(model).__name__} has no token vectors; MaxSim training needs a LateInteractionEncoder.")
        self.model, self.temperature = model, temperature

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        q, q_mask = self.model.text_tokens(batch["text"])
        d, d_mask = self.model.image_tokens(batch["image"])
        # per-token mean keeps the logit scale independent of caption length
        scores = maxsim_scores(q, q_mask, d, d_mask) / q_mask.sum(dim=1, keepdim=True).clamp(min=1)
        labels = batch.get("labels")
        labels = torch.arange(len(q), device=q.device) if labels is None else labels.to(q.device)
        return symmetric_cross_entropy(scores / self.temperature, labels)
