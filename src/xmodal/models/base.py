"""``BackboneModel``: what every model built on a ``Backbone`` shares (towers, id, saving, inputs, placement).

``DualEncoder`` (single vectors) and ``LateInteractionEncoder`` (token/patch vectors) both hold a backbone
and differ only in what they compute from it; neither subclasses the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import InvalidInputError
from .backbones import Backbone
from .registry import ModelConfig, write_config


def as_texts(texts: Sequence[str] | str) -> list[str]:
    """A list of non-empty texts (one string counts as one text); an empty one is a one-line ``InvalidInputError``."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInputError(f"text #{i} is empty; give a non-empty query/caption.")
    return texts


class BackboneModel(nn.Module):
    """Towers + model id. Subclasses are registered model kinds (``@register_kind``) and define ``from_pretrained``.

    Args:
        backbone: the towers (see ``xmodal.models.backbones``).
        model_id: the name this model is known by; saved into index manifests so an index is
            never queried with another model's vectors.
    """

    kind = "?"  # set by @register_kind; saved in the ModelConfig

    def __init__(self, backbone: Backbone, model_id: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.model_id = model_id or backbone.name

    # ------------------------------------------------------------------ saving
    def save(self, folder: str | Path) -> Path:
        """Write the backbone's files (``config.json`` + weights + tokenizer/processor) and the ``ModelConfig``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save(folder)
        write_config(folder, ModelConfig(kind=self.kind, backend=self.backbone.backend, model_id=self.model_id,
                                         **self._save_extra(folder)))
        return folder

    def _save_extra(self, folder: Path) -> dict[str, Any]:
        """Subclasses save their own weights here and return ``ModelConfig`` fields (``dims``, ``extra``) to record."""
        return {}

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------ inputs
    def load_image(self, source: Any) -> Any:
        """Read one image input (path, bytes, PIL; for region-feature models an id or ``RegionFeatures``)."""
        return self.backbone.load_image(source)

    def attach_features(self, store: Any) -> "BackboneModel":
        """Resolve image ids through ``store`` (a ``FeatureStore``): only for region-feature models."""
        if not hasattr(self.backbone, "features"):
            raise InvalidInputError(f"{self.model_id} reads pixels; a feature store is for region-feature models.")
        self.backbone.features = store
        return self

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out
