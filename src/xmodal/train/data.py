"""Turning an ``ImageTextDataset`` into training batches for a model's own tokenizer and image processor."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.types import ImageTextDataset


class PairDataset(Dataset):
    """Index -> (image source, caption text, image label). One item per caption."""

    def __init__(self, dataset: ImageTextDataset) -> None:
        self.dataset = dataset
        self.label_of = {iid: n for n, iid in enumerate(dataset.images)}

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def __getitem__(self, i: int) -> tuple[Any, str, int]:
        c = self.dataset.captions[i]
        return self.dataset.images[c.image_id], c.text, self.label_of[c.image_id]


class PairCollator:
    """Decode images and tokenize texts with the model's backbone (picklable for DataLoader workers)."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def __call__(self, items: list[tuple[Any, str, int]]) -> dict[str, Any]:
        images = [self.backbone.load_image(src) for src, _, _ in items]
        return {
            "text": self.backbone.tokenize([t for _, t, _ in items]),
            "image": self.backbone.preprocess(images),
            "labels": torch.tensor([lab for _, _, lab in items], dtype=torch.long),
        }
