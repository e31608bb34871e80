"""Image-text matching (ITM) with hard negatives, and the joint embedding + ITM loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import InfoNCELoss


def select(batch: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every tensor in a tokenized/preprocessed batch."""
    return {k: v[index.to(v.device)] for k, v in batch.items()}


def mine_hard_negatives(sim: torch.Tensor, labels: torch.Tensor, sample: bool = True,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text a hard negative image and for each image a hard negative text.

    ``sim``: (n, n) text x image similarities (no gradient). With ``sample`` the negative is drawn
    from softmax(sim) over the non-matching items (ALBEF-style: hard but not always the hardest,
    which may be an unlabelled positive); otherwise it is the argmax.
    """
    same = labels[:, None] == labels[None, :]
    masked = sim.masked_fill(same, float("-inf"))
    if sample:
        neg_img = torch.multinomial(F.softmax(masked, dim=1), 1, generator=generator).squeeze(1)
        neg_txt = torch.multinomial(F.softmax(masked.T, dim=1), 1, generator=generator).squeeze(1)
    else:
        neg_img, neg_txt = masked.argmax(dim=1), masked.argmax(dim=0)
    return neg_img, neg_txt


class ITMLoss(nn.Module):
    """Binary matching loss on positives + mined hard negatives; needs ``model.match_logits(text, image)``.

    Per batch of n pairs it scores 3n pairs: n positives, n (text, hard image), n (hard text, image).
    """

    def __init__(self, model: nn.Module, sample_negatives: bool = True) -> None:
        super().__init__()
        if not hasattr(model, "match_logits"):
            raise TypeError(f"{type(model).__name__} has no match_logits(); ITM needs a cross-encoder head (JointModel).")
        self.model, self.sample_negatives = model, sample_negatives

    def forward(self, batch: dict[str, Any], sim: torch.Tensor | None = None) -> torch.Tensor:
        text, image = batch["text"], batch["image"]
        n = next(iter(text.values())).shape[0]
        labels = batch.get("labels", torch.arange(n))
        labels = labels.to(next(iter(text.values())).device)
        if n < 2:
            raise ValueError("ITM with in-batch hard negatives needs at least 2 pairs per batch.")
        if sim is None:
            with torch.no_grad():
                sim = self.model.text_embeddings(text) @ self.model.image_embeddings(image).T
        neg_img, neg_txt = mine_hard_negatives(sim.detach().float(), labels, self.sample_negatives)
        idx = torch.arange(n, device=labels.device)
        texts = torch.cat([idx, idx, neg_txt])
        images = torch.cat([idx, neg_img, idx])
        logits = self.model.match_logits(select(text, texts), select(image, images))
        target = torch.cat([torch.ones(n), torch.zeros(2 * n)]).to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), target)


class JointLoss(nn.Module):
    """Embedding loss + ITM loss on one shared-weight model (MMT-Retrieval's JOIN training)."""

    def __init__(self, model: nn.Module, embedding_loss: nn.Module | None = None, itm_weight: float = 1.0,
                 sample_negatives: bool = True) -> None:
        super().__init__()
        self.model = model
        self.embedding_loss = embedding_loss or InfoNCELoss(model)
        self.itm = ITMLoss(model, sample_negatives=sample_negatives)
        self.itm_weight = itm_weight

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.embedding_loss(batch) + self.itm_weight * self.itm(batch)
