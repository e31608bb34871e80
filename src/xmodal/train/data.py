"""Turning an ``ImageTextDataset`` into training batches for a model's own tokenizer and image processor."""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.types import ImageTextDataset


class PairDataset(Dataset):
    """Index -> (image source, caption text, image label). One item per caption.

    With ``image_cache`` + ``slots`` (one slot per image, in ``dataset.images`` order) the image comes back as
    cached ``(size, size, 3)`` uint8 pixels instead of its source, so workers never decode it again.
    ``hard_negatives`` (caption index -> image ids, from ``xmodal.train.mining``) adds one mined negative
    image per caption, drawn at random from its list (seeded by the item index and the epoch).
    """

    def __init__(self, dataset: ImageTextDataset, image_cache: Any = None, slots: Sequence[int] | None = None,
                 hard_negatives: dict[int, list[str]] | None = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.label_of = {iid: n for n, iid in enumerate(dataset.images)}
        self.cache, self.slots = image_cache, slots
        self.hard_negatives, self.seed, self.epoch = hard_negatives, seed, 0

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def _image(self, image_id: str) -> Any:
        if self.cache is not None:
            return self.cache[self.slots[self.label_of[image_id]]]
        return self.dataset.images[image_id]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        c = self.dataset.captions[i]
        item = (self._image(c.image_id), c.text, self.label_of[c.image_id])
        if self.hard_negatives is not None:
            pool = self.hard_negatives.get(i) or []
            neg = random.Random(self.seed * 1_000_003 + self.epoch * 7919 + i).choice(pool) if pool else None
            item += (self._image(neg) if neg is not None else None, self.label_of[neg] if neg is not None else -1)
        return item


class PairCollator:
    """Decode images and tokenize texts with the model's backbone (picklable for DataLoader workers).

    Cached items are uint8 arrays (already resized); ``augment`` (``train.image_cache.Augment``) is applied
    to every image before the backbone's own preprocessing.
    """

    def __init__(self, backbone: Any, augment: Any = None) -> None:
        self.backbone, self.augment = backbone, augment

    def _load(self, src: Any) -> Any:
        img = Image.fromarray(src) if isinstance(src, np.ndarray) else self.backbone.load_image(src)
        return self.augment(img) if self.augment is not None else img

    def __call__(self, items: list[tuple[Any, ...]]) -> dict[str, Any]:
        batch = {
            "text": self.backbone.tokenize([it[1] for it in items]),
            "image": self.backbone.preprocess([self._load(it[0]) for it in items]),
            "labels": torch.tensor([it[2] for it in items], dtype=torch.long),
        }
        if len(items[0]) > 3:  # mined hard negatives: one image per caption (rows without one repeat their positive)
            negs = [it[3] if it[3] is not None else it[0] for it in items]
            batch["neg_image"] = self.backbone.preprocess([self._load(s) for s in negs])
            batch["neg_labels"] = torch.tensor([it[4] if it[3] is not None else it[2] for it in items], dtype=torch.long)
        return batch
