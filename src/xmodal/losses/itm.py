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


def concat_rows(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows of ``a`` then ``b`` (tokenized/preprocessed batches); a shorter second dimension (tokens, regions)
    is zero-padded, which masks stay correct under (0 = padding)."""
    out = {}
    for k, x in a.items():
        y = b[k].to(x.device)
        if x.ndim >= 2 and x.shape[1] != y.shape[1]:
            width = max(x.shape[1], y.shape[1])
            pad = lambda z: F.pad(z, [0, 0] * (z.ndim - 2) + [0, width - z.shape[1]])  # noqa: E731
            x, y = pad(x), pad(y)
        out[k] = torch.cat([x, y])
    return out


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
    """Binary matching loss on positives + hard negatives; needs ``model.match_logits(text, image)``.

    Per batch of n pairs it scores 3n pairs: n positives, n (text, hard image), n (hard text, image). The hard
    negatives are the batch's mined ones (``neg_image`` / ``neg_text``, from ``xmodal train --hard-negatives``:
    never a positive, images sharing the caption's text excluded) where a row has one, otherwise sampled
    from the in-batch similarity (ALBEF-style).
    """

    accepts_mined = True

    def __init__(self, model: nn.Module, sample_negatives: bool = True) -> None:
        super().__init__()
        if not hasattr(model, "match_logits"):
            raise TypeError(f"{type(model).__name__} has no match_logits(); ITM needs a cross-encoder head (JointModel).")
        self.model, self.sample_negatives = model, sample_negatives

    def forward(self, batch: dict[str, Any], sim: torch.Tensor | None = None) -> torch.Tensor:
        text, image = batch["text"], batch["image"]
        n = next(iter(text.values())).shape[0]
        device = next(iter(text.values())).device
        labels = batch.get("labels", torch.arange(n)).to(device)
        idx = torch.arange(n, device=device)
        has_img = batch["neg_image_valid"].to(device) if "neg_image" in batch else torch.zeros(n, dtype=torch.bool, device=device)
        has_txt = batch["neg_text_valid"].to(device) if "neg_text" in batch else torch.zeros(n, dtype=torch.bool, device=device)
        neg_img, neg_txt = idx, idx
        if not (has_img.all() and has_txt.all()):  # some rows need an in-batch negative
            if n < 2:
                raise ValueError("ITM with in-batch hard negatives needs at least 2 pairs per batch.")
            if sim is None:
                with torch.no_grad():
                    sim = self.model.text_embeddings(text) @ self.model.image_embeddings(image).T
            neg_img, neg_txt = mine_hard_negatives(sim.detach().float(), labels, self.sample_negatives)
        # mined negatives sit after the batch's own rows (row j of neg_image -> index n + j)
        if "neg_image" in batch:
            image, neg_img = concat_rows(image, batch["neg_image"]), torch.where(has_img, n + idx, neg_img)
        if "neg_text" in batch:
            text, neg_txt = concat_rows(text, batch["neg_text"]), torch.where(has_txt, n + idx, neg_txt)
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
        self.accepts_mined = getattr(self.embedding_loss, "accepts_mined", False)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.embedding_loss(batch) + self.itm_weight * self.itm(batch)
