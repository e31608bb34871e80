"""Turning an ``ImageTextDataset`` into training batches for a model's own tokenizer and image processor."""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.types import ImageTextDataset


def take_rows(x: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of a collated batch (nested dicts of row-aligned tensors)."""
    if isinstance(x, dict):
        return {k: take_rows(v, a, b) for k, v in x.items()}
    return x[a:b] if isinstance(x, torch.Tensor) else x


class PairDataset(Dataset):
    """Index -> (image source, caption text, image label, augmentation seed). One item per caption.

    With ``image_cache`` + ``slots`` (one slot per image, in ``dataset.images`` order) the image comes back as
    cached ``(size, size, 3)`` uint8 pixels instead of its source, so workers never decode it again.
    ``hard_negatives`` (``xmodal.train.mining.MinedNegatives``, or a plain caption index -> image ids dict) adds
    one mined negative image for the caption (t2i) and one mined negative caption for its image (i2t), drawn at
    random from their lists; ``None`` where a list is empty.

    Every random choice is a function of (seed, epoch, item index) only - never of the process, worker or the
    global RNG - so a batch is the same with any number of DataLoader workers and after a resume.
    """

    def __init__(self, dataset: ImageTextDataset, image_cache: Any = None, slots: Sequence[int] | None = None,
                 hard_negatives: Any = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.label_of = {iid: n for n, iid in enumerate(dataset.images)}
        self.cache, self.slots = image_cache, slots
        if isinstance(hard_negatives, dict):  # caption index -> image ids (t2i only)
            from .mining import MinedNegatives

            hard_negatives = MinedNegatives(t2i=hard_negatives)
        self.hard_negatives, self.seed, self.epoch = hard_negatives, seed, 0

    def __len__(self) -> int:
        return len(self.dataset.captions)

    def _image(self, image_id: str) -> Any:
        if self.cache is not None:
            return self.cache[self.slots[self.label_of[image_id]]]
        return self.dataset.images[image_id]

    def item_seed(self, i: int) -> int:
        return (self.seed * 1_000_003 + self.epoch * 7919 + i) % (2**63)

    def draw_negatives(self, i: int) -> tuple[str | None, int | None]:
        """Caption ``i``'s mined negative image id and its image's mined negative caption index (this epoch)."""
        rng = random.Random(self.item_seed(i))
        images = self.hard_negatives.t2i.get(i) or []
        texts = self.hard_negatives.i2t.get(self.dataset.captions[i].image_id) or []
        return (rng.choice(images) if images else None), (rng.choice(texts) if texts else None)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        c = self.dataset.captions[i]
        item = (self._image(c.image_id), c.text, self.label_of[c.image_id], self.item_seed(i))
        if self.hard_negatives is not None:
            image_id, caption = self.draw_negatives(i)
            item += (self._image(image_id) if image_id is not None else None,
                     self.dataset.captions[caption].text if caption is not None else None)
        return item


class PairCollator:
    """Decode images and tokenize texts with the model's backbone (picklable for DataLoader workers).

    Cached items are uint8 arrays (already resized); ``augment`` (``train.image_cache.Augment``) is applied
    to every image before the backbone's own preprocessing, seeded per item (``PairDataset.item_seed``).
    With mined negatives the batch also holds ``neg_image`` / ``neg_text`` (row j: a negative of caption j /
    of row j's image; rows without one repeat their positive and are marked False in ``neg_*_valid``),
    tokenized and preprocessed together with the positives so that rows of both can be concatenated.
    """

    def __init__(self, backbone: Any, augment: Any = None) -> None:
        self.backbone, self.augment = backbone, augment

    def _load(self, src: Any, seed: int) -> Any:
        img = Image.fromarray(src) if isinstance(src, np.ndarray) else self.backbone.load_image(src)
        return self.augment(img, seed=seed) if self.augment is not None else img

    def __call__(self, items: list[tuple[Any, ...]]) -> dict[str, Any]:
        texts = [it[1] for it in items]
        images = [self._load(it[0], it[3] if len(it) > 3 else None) for it in items]
        labels = torch.tensor([it[2] for it in items], dtype=torch.long)
        if len(items[0]) <= 4:
            return {"text": self.backbone.tokenize(texts), "image": self.backbone.preprocess(images), "labels": labels}
        n = len(items)
        # negatives get their own augmentation stream (not the positive's crop)
        neg_images = [self._load(it[4], it[3] ^ 0x5DEECE66D) if it[4] is not None else images[j] for j, it in enumerate(items)]
        neg_texts = [it[5] if it[5] is not None else it[1] for it in items]
        text, image = self.backbone.tokenize(texts + neg_texts), self.backbone.preprocess(images + neg_images)
        return {"text": take_rows(text, 0, n), "image": take_rows(image, 0, n), "labels": labels,
                "neg_image": take_rows(image, n, 2 * n), "neg_text": take_rows(text, n, 2 * n),
                "neg_image_valid": torch.tensor([it[4] is not None for it in items]),
                "neg_text_valid": torch.tensor([it[5] is not None for it in items])}
