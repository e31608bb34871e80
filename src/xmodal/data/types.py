"""The in-memory form every dataset reader produces and every trainer/evaluator consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class Caption:
    """One caption of one image (an image usually has several, e.g. 5 in Flickr30k/COCO)."""

    text: str
    image_id: str
    lang: str = "en"
    caption_id: str | None = None


@dataclass
class ImageTextDataset:
    """Images and their captions, for one split.

    Attributes:
        images: image id -> image source (a path, raw bytes, or a ``PIL.Image``; anything
            ``xmodal.data.open_image`` reads). Ordered: iteration order is the evaluation order.
        captions: all captions; ``caption.image_id`` must be a key of ``images``.
        name / split: for reports.
        extra: format-specific additions (e.g. MUGE query -> item ids, hard negatives).
    """

    images: dict[str, Any]
    captions: list[Caption]
    name: str = "dataset"
    split: str = "test"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[str]:
        return list(self.images)

    def __len__(self) -> int:
        return len(self.captions)

    def pairs(self) -> Iterator[tuple[Any, Caption]]:
        """(image source, caption) for every caption: the training view."""
        for c in self.captions:
            yield self.images[c.image_id], c

    def captions_of(self, image_id: str) -> list[Caption]:
        return [c for c in self.captions if c.image_id == image_id]
