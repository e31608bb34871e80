"""``DualEncoder``: images and texts encoded separately into one vector space."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from .fingerprint import place_weights
from .base import BackboneModel, as_texts
from .loading import load_backbone
from .registry import read_config, register_kind


@register_kind("dual")
class DualEncoder(BackboneModel):
    """Two towers, one embedding space.

    >>> model = DualEncoder.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
    >>> img = model.encode_image(["cat.jpg"])            # (1, d) float32, L2-normalised
    >>> txt = model.encode_text(["a photo of a cat"])    # (1, d)
    >>> model.similarity(txt, img)                       # (1, 1) cosine similarities

    Args: see ``BackboneModel`` (the towers and the model id).
    """

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> "DualEncoder":
        """Load from a hub id, ``open_clip:ARCH[/TAG]`` or a local folder (see ``load_backbone``).

        ``device``: ``None``/``"auto"`` picks a GPU when one is usable (``xmodal.runtime.resolve_device``).
        """
        backbone = load_backbone(name_or_path)
        config = read_config(name_or_path)
        model = cls(backbone, model_id=(config.model_id if config else None) or backbone.name)
        return place_weights(model, device, dtype)

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    # ------------------------------------------------------------------ encoding
    def text_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable, L2-normalised text embeddings of a tokenized batch (used by training)."""
        return nn.functional.normalize(self.backbone.text_features(self._to_device(batch)).float(), dim=-1)

    def image_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable, L2-normalised image embeddings of a preprocessed batch."""
        return nn.functional.normalize(self.backbone.image_features(self._to_device(batch)).float(), dim=-1)

    def _encode(
        self,
        items: Sequence[Any],
        prepare: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
        embed: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        batch_size: int,
        show_progress: bool | None,
        desc: str,
        convert_to: str,
    ) -> np.ndarray | torch.Tensor:
        n = len(items)
        if show_progress is None:
            show_progress = n > batch_size
        chunks: list[torch.Tensor] = []
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc=desc, disable=not show_progress, unit="batch"):
                chunks.append(embed(prepare(items[start:start + batch_size])).cpu())
        self.train(was_training)
        out = torch.cat(chunks) if chunks else torch.empty(0, self.embedding_dim)
        if convert_to == "torch":
            return out
        return out.numpy().astype(np.float32, copy=False)

    def encode_text(
        self, texts: Sequence[str] | str, batch_size: int = 64, show_progress: bool | None = None, convert_to: str = "numpy"
    ) -> np.ndarray | torch.Tensor:
        """Embed texts: ``(n, d)`` float32, L2-normalised, in input order."""
        return self._encode(as_texts(texts), self.backbone.tokenize, self.text_embeddings, batch_size, show_progress,
                            "encode text", convert_to)

    def encode_image(
        self, images: Sequence[Any] | Any, batch_size: int = 32, show_progress: bool | None = None, convert_to: str = "numpy"
    ) -> np.ndarray | torch.Tensor:
        """Embed images (``PIL.Image``, paths or bytes): ``(n, d)`` float32, L2-normalised, in input order.

        An unreadable image raises ``InvalidInputError`` naming it; use ``xmodal.collection`` to skip
        and report bad files in bulk jobs instead.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]

        def prepare(chunk: Sequence[Any]) -> dict[str, torch.Tensor]:
            return self.backbone.preprocess([self.load_image(x) for x in chunk])

        return self._encode(list(images), prepare, self.image_embeddings, batch_size, show_progress,
                            "encode images", convert_to)

    @staticmethod
    def similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Cosine similarity matrix ``(len(a), len(b))`` of L2-normalised embeddings."""
        if isinstance(a, torch.Tensor):
            return a @ torch.as_tensor(b, dtype=a.dtype, device=a.device).T
        return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T
