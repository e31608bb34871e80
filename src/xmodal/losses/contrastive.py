"""Embedding losses for image-text pairs. Each is ``nn.Module(model, **hparams)`` with ``forward(batch)``.

A batch is ``{"text": tokenized dict, "image": preprocessed dict, "labels": (n,) long}`` of aligned
pairs (pair i = caption i with image i); ``labels`` names the image of each pair, so two captions
of one image in a batch are not treated as negatives of each other where a loss supports that.
With ``torch.distributed`` initialised, embeddings are gathered from all ranks (with gradients) so
the in-batch negatives are the global batch, as in CLIP's training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass
class MinedEmbeddings:
    """Each row's mined negatives (``xmodal.train.mining``), embedded and aligned with the (global) batch rows.

    ``image[j]``: a mined negative image of caption j (text->image); ``text[j]``: a mined negative caption of
    row j's image (image->text); ``*_valid[j]`` is False where row j has none. Mining removed every positive
    (images sharing the caption's text), and a row's mined negatives are used against that row only - as another
    row's negative one could be a positive (a duplicate caption) - so no false negative enters the loss.
    """

    image: torch.Tensor | None = None
    image_valid: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_valid: torch.Tensor | None = None


def gather_flags(x: torch.Tensor) -> torch.Tensor:
    return gather_with_grad(x.float()) > 0.5


def mined_negatives(model: nn.Module, batch: dict[str, Any]) -> MinedEmbeddings | None:
    """The batch's mined negatives (``neg_image`` / ``neg_text``, see ``train.data.PairCollator``), embedded and gathered."""
    if "neg_image" not in batch and "neg_text" not in batch:
        return None
    m = MinedEmbeddings()
    if "neg_image" in batch:
        m.image = gather_with_grad(model.image_embeddings(batch["neg_image"]))
        m.image_valid = gather_flags(batch["neg_image_valid"].to(m.image.device))
    if "neg_text" in batch:
        m.text = gather_with_grad(model.text_embeddings(batch["neg_text"]))
        m.text_valid = gather_flags(batch["neg_text_valid"].to(m.text.device))
    return m


def row_scores(anchor: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(n,) similarity of each row's anchor with that row's own mined negative."""
    return (anchor * negative).sum(dim=-1)


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

    accepts_mined = True  # uses mined hard negatives (xmodal train --hard-negatives)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_from_embeddings(*embed_pair(self.model, batch), mined=mined_negatives(self.model, batch))

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor,
                             mined: MinedEmbeddings | None = None) -> torch.Tensor:
        """The loss of (global) text and image embeddings; used directly by the cached-gradient driver.

        A row's mined negative image is one more column of its text->image softmax, its image's mined negative
        caption one more column of the image->text softmax.
        """
        scale = self._scale()
        if mined is None:
            return symmetric_cross_entropy(scale * t @ i.T, labels)
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(t), dtype=torch.bool, device=t.device)
        logits = (scale * t @ i.T).masked_fill(same, float("-inf"))
        t2i, i2t = logits, logits.T
        if mined.image is not None:
            extra = (scale * row_scores(t, mined.image)).masked_fill(~mined.image_valid, float("-inf"))
            t2i = torch.cat([t2i, extra[:, None]], dim=1)
        if mined.text is not None:
            extra = (scale * row_scores(i, mined.text)).masked_fill(~mined.text_valid, float("-inf"))
            i2t = torch.cat([i2t, extra[:, None]], dim=1)
        target = torch.arange(len(t), device=t.device)
        return 0.5 * (F.cross_entropy(t2i, target) + F.cross_entropy(i2t, target))


class SigLIPLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP) with learnable scale and bias (init 10 and -10, as in the paper)."""

    def __init__(self, model: nn.Module, init_scale: float = 10.0, init_bias: float = -10.0) -> None:
        super().__init__()
        self.model = model
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(init_bias))

    accepts_mined = True

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_from_embeddings(*embed_pair(self.model, batch), mined=mined_negatives(self.model, batch))

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor,
                             mined: MinedEmbeddings | None = None) -> torch.Tensor:
        """Mined negatives add one negative pair per row and direction: (text j, its mined image), (image j, its mined caption)."""
        logits = self.log_scale.exp() * t @ i.T + self.bias
        sign = 2.0 * (labels[:, None] == labels[None, :]).float() - 1.0
        total = -F.logsigmoid(sign * logits).sum()
        for anchor, neg, valid in ((t, getattr(mined, "image", None), getattr(mined, "image_valid", None)),
                                   (i, getattr(mined, "text", None), getattr(mined, "text_valid", None))):
            if neg is not None:
                z = self.log_scale.exp() * row_scores(anchor, neg) + self.bias
                total = total - (F.logsigmoid(-z) * valid).sum()
        return total / len(t)


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

    accepts_mined = True

    def loss_from_embeddings(self, t: torch.Tensor, i: torch.Tensor, labels: torch.Tensor,
                             mined: MinedEmbeddings | None = None) -> torch.Tensor:
        s = t @ i.T
        pos = s.diag()
        negatives = labels[:, None] != labels[None, :]
        cost_t2i = (self.margin + s - pos[:, None]).clamp(min=0) * negatives  # text as anchor, wrong images
        cost_i2t = (self.margin + s - pos[None, :]).clamp(min=0) * negatives  # image as anchor, wrong texts
        # mined negatives: one more candidate per row for the hardest wrong image / caption
        if mined is not None and mined.image is not None:
            extra = (self.margin + row_scores(t, mined.image) - pos).clamp(min=0) * mined.image_valid
            cost_t2i = torch.cat([cost_t2i, extra[:, None]], dim=1)
        if mined is not None and mined.text is not None:
            extra = (self.margin + row_scores(i, mined.text) - pos).clamp(min=0) * mined.text_valid
            cost_i2t = torch.cat([cost_i2t, extra[None, :]], dim=0)
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
