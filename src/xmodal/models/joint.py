"""``JointModel``: one set of weights for both roles (MMT-Retrieval's JOIN model).

A dual encoder whose towers also feed a small fusion transformer: text token states attend to
image patch states (cross-attention) and end in a match logit. Retrieval uses the towers alone
(fast, indexable); reranking runs the fusion head over the same towers' states. Training with
``JointLoss`` (contrastive + ITM with hard negatives) updates the shared towers from both losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelNotFoundError
from .fingerprint import place_weights
from .backbones import Backbone
from .cross import BatchedPairScorer
from .dual import DualEncoder
from .loading import load_backbone
from .registry import read_config, register_kind
from .seeding import local_rng

HEAD_WEIGHTS = "fusion_head.safetensors"


class FusionHead(nn.Module):
    """Text tokens (self-attention) x image patches (cross-attention) -> one match logit per pair."""

    def __init__(self, text_dim: int, image_dim: int, hidden: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"text_dim": text_dim, "image_dim": image_dim, "hidden": hidden, "layers": layers, "heads": heads,
                       "dropout": dropout}
        self.text_in = nn.Linear(text_dim, hidden)
        self.image_in = nn.Linear(image_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.TransformerDecoderLayer(hidden, heads, dim_feedforward=4 * hidden, dropout=dropout, batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """``text`` (n, t, dt), ``image`` (n, p, di), masks 1 = real token -> logits (n,)."""
        x, mem = self.text_in(text), self.image_in(image)
        t_pad, i_pad = text_mask == 0, image_mask == 0
        for block in self.blocks:
            x = block(x, mem, tgt_key_padding_mask=t_pad, memory_key_padding_mask=i_pad)
        x = self.norm(x)
        keep = text_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)  # mean over real text tokens
        return self.out(pooled).squeeze(-1)


@register_kind("joint")
class JointModel(DualEncoder, BatchedPairScorer):
    """Dual encoder + cross-encoder head over the same backbone weights.

    >>> joint = JointModel.from_dual(DualEncoder.from_pretrained("openai/clip-vit-base-patch32"))  # doctest: +SKIP
    >>> joint.encode_text(["a dog"])                            # retrieval embeddings, as DualEncoder
    >>> joint.score(["a dog"], ["dog.jpg"])                     # cross-encoder match logit
    """

    def __init__(self, backbone: Backbone, head: FusionHead, model_id: str | None = None) -> None:
        DualEncoder.__init__(self, backbone, model_id=model_id)
        self.head = head

    @classmethod
    def from_dual(cls, dual: DualEncoder, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0) -> "JointModel":
        """Add a fresh fusion head to a dual encoder (its weights are shared, not copied)."""
        t_dim, i_dim = dual.backbone.state_dims
        with local_rng(seed):
            head = FusionHead(t_dim, i_dim, hidden=hidden, layers=layers, heads=heads)
        return cls(dual.backbone, head, model_id=f"{dual.model_id}+joint").to(dual.device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None, dtype: Any = None) -> "JointModel":
        from safetensors.torch import load_model

        folder = Path(name_or_path)
        config = read_config(folder)
        if config is None or config.kind != cls.kind or "head" not in config.extra:
            found = "no xmodal.json" if config is None else f"kind '{config.kind}'"
            raise ModelNotFoundError(f"'{folder}' is not a saved joint model ({found}); save one with JointModel.save().")
        with local_rng():  # random init, overwritten by the saved weights
            head = FusionHead(**config.extra["head"])
        load_model(head, str(folder / HEAD_WEIGHTS))
        return place_weights(cls(load_backbone(folder), head, model_id=config.model_id), device, dtype)

    def _save_extra(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_model

        save_model(self.head, str(folder / HEAD_WEIGHTS))
        return {"extra": {"head": self.head.config}}

    def match_logits(self, text_batch: dict[str, torch.Tensor], image_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Match logits (n,) for aligned, tokenized/preprocessed pairs; differentiable through the towers."""
        t, tm = self.backbone.text_states(self._to_device(text_batch))
        i, im = self.backbone.image_states(self._to_device(image_batch))
        return self.head(t, tm, i, im)

    def _score_batch(self, texts: list[str], images: list[Any]) -> torch.Tensor:
        return self.match_logits(self.backbone.tokenize(texts), self.backbone.preprocess(images))

