"""``LateInteractionEncoder``: many vectors per item (text tokens, image patches) for MaxSim (FLMR/ColBERT style).

Token states of the text tower and patch states of the image tower are projected to a small
dimension (default 128) and L2-normalised. A query may combine an image and a question (FLMR):
its vectors are the question's tokens followed by the image's patches. Documents may be text,
images, or (text, image) pairs.

Composition, not inheritance: the encoder holds a backbone (any ``Backbone`` with token/patch states:
CLIP-like towers or region-feature backbones) and two projections; it is a ``MultiVectorEncoder``,
not a ``DualEncoder`` with other return types.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelNotFoundError
from .fingerprint import place_weights
from .backbones import Backbone
from .base import BackboneModel
from .dual import DualEncoder
from .loading import load_backbone
from .multivector import MultiVectorEncoderMixin, ragged
from .registry import read_config, register_kind
from .seeding import generator

PROJECTION_WEIGHTS = "late_projection.safetensors"


def _projection(in_dim: int, out_dim: int, gen: torch.Generator) -> nn.Linear:
    """A bias-free ``nn.Linear`` with torch's default init, drawn from ``gen`` instead of the global RNG."""
    layer = nn.utils.skip_init(nn.Linear, in_dim, out_dim, bias=False)
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)  # what nn.Linear.reset_parameters does
    return layer


@register_kind("late")
class LateInteractionEncoder(BackboneModel, MultiVectorEncoderMixin):
    """Token- and patch-level vectors on a backbone's towers; saved and loaded as one folder.

    >>> late = load_model("runs/late")                       # doctest: +SKIP
    >>> late.encode_text(["a dog"])                          # [(t, dim)] one array per text
    >>> late.encode_query("which animal?", "dog.jpg")        # (t + p, dim): question tokens, then patches
    """

    text_batch_size, image_batch_size = 64, 32

    def __init__(self, backbone: Backbone, dim: int = 128, model_id: str | None = None, seed: int = 0) -> None:
        super().__init__(backbone, model_id=model_id)
        text_dim, image_dim = backbone.state_dims
        gen = generator(seed)
        self.text_proj = _projection(text_dim, dim, gen)
        self.image_proj = _projection(image_dim, dim, gen)
        self.dim = dim

    @classmethod
    def from_dual(cls, dual: DualEncoder, dim: int = 128, seed: int = 0) -> "LateInteractionEncoder":
        """Late interaction on an existing dual encoder's towers, with fresh (random, to be trained) projections."""
        return cls(dual.backbone, dim=dim, model_id=f"{dual.model_id}+late{dim}", seed=seed).to(dual.device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: Any = None, dtype: Any = None,
                        dim: int = 128) -> "LateInteractionEncoder":
        """A saved late-interaction folder; or, explicitly, any dual-encoder name/folder wrapped with fresh
        (random, seed 0) projections of size ``dim`` -- ``load_model`` never does this by itself."""
        from safetensors.torch import load_model

        config = read_config(name_or_path)
        if config is not None and config.kind == cls.kind:
            if "dim" not in config.dims:
                raise ModelNotFoundError(f"'{name_or_path}' is a late-interaction folder without its vector size "
                                         "(xmodal.json dims.dim); save it again with LateInteractionEncoder.save().")
            model = cls(load_backbone(name_or_path), dim=int(config.dims["dim"]), model_id=config.model_id)
            load_model(model, str(Path(str(name_or_path)) / PROJECTION_WEIGHTS), strict=False)
        else:
            model = cls.from_dual(DualEncoder.from_pretrained(name_or_path, device="cpu"), dim=dim)
        return place_weights(model, device, dtype)

    def _save_extra(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file({"text_proj.weight": self.text_proj.weight.detach().contiguous(),
                   "image_proj.weight": self.image_proj.weight.detach().contiguous()}, str(folder / PROJECTION_WEIGHTS))
        return {"dims": {"dim": self.dim}}

    # ------------------------------------------------------------------ differentiable token vectors
    def text_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(n, t, dim)`` L2-normalised token vectors and ``(n, t)`` bool mask of a tokenized batch."""
        h, mask = self.backbone.text_states(self._to_device(batch))
        return nn.functional.normalize(self.text_proj(h.to(self.text_proj.weight.dtype)), dim=-1), mask.bool()

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(n, p, dim)`` patch/region vectors and ``(n, p)`` bool mask of a preprocessed batch."""
        h, mask = self.backbone.image_states(self._to_device(batch))
        return nn.functional.normalize(self.image_proj(h.to(self.image_proj.weight.dtype)), dim=-1), mask.bool()

    # ------------------------------------------------------------------ inference (the shared surface)
    # encode_text / encode_image / encode_items / encode_query / similarity come from MultiVectorEncoderMixin;
    # images reach _encode_docs_images through BackboneModel.load_image (pixels, or region features).
    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        with torch.inference_mode():
            return ragged(*self.text_tokens(self.backbone.tokenize(texts)))

    def _encode_docs_images(self, images: list[Any]) -> list[np.ndarray]:
        with torch.inference_mode():
            return ragged(*self.image_tokens(self.backbone.preprocess(images)))

    def encode_text_tokens(self, texts: Sequence[str], batch_size: int | None = None) -> list[np.ndarray]:
        """One ``(t_i, dim)`` array per text (padding dropped); the same as ``encode_text``."""
        return self.encode_text(texts, batch_size=batch_size)
