"""Backbones: the two towers of a dual encoder, as provided by transformers or open_clip.

A backbone turns raw inputs into model inputs (``tokenize``, ``preprocess``) and model inputs into
embeddings (``text_features``, ``image_features``). It also exposes token/patch states
(``text_states``, ``image_states``) for late interaction and cross-encoders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

def _features(out: Any) -> torch.Tensor:
    # transformers >= 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected
    # embedding; older releases return the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class Backbone(nn.Module):
    """Interface shared by all backbones."""

    backend: str = "?"
    name: str = "?"
    # Attribute paths (from the backbone) of each tower's own modules/parameters, in forward order. Freezing
    # uses exactly these, never parameter-name fragments (open_clip's image tower has a "transformer" too).
    text_tower: tuple[str, ...] = ()
    image_tower: tuple[str, ...] = ()

    def tower_parts(self, tower: str) -> list[tuple[str, nn.Module | nn.Parameter]]:
        """``(path, module or parameter)`` of ``tower`` ("text" or "image"); parts a model lacks are skipped."""
        paths = {"text": self.text_tower, "image": self.image_tower}[tower]
        if not paths:
            raise NotImplementedError(f"{type(self).__name__} does not say which parameters form its {tower} tower")
        parts = []
        for path in paths:
            obj: Any = self
            for attr in path.split("."):
                obj = getattr(obj, attr, None)
            if isinstance(obj, (nn.Module, nn.Parameter)):
                parts.append((path, obj))
        return parts

    def _tower_parameters(self, tower: str) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for _, obj in self.tower_parts(tower):
            for p in ([obj] if isinstance(obj, nn.Parameter) else obj.parameters()):
                seen.setdefault(id(p), p)
        return list(seen.values())

    def text_parameters(self) -> list[nn.Parameter]:
        """The text tower's own parameters (shared ones such as the logit scale belong to neither tower)."""
        return self._tower_parameters("text")

    def image_parameters(self) -> list[nn.Parameter]:
        """The image tower's own parameters."""
        return self._tower_parameters("image")

    def load_image(self, source: Any) -> Any:
        """One image input as ``preprocess`` takes it: a decoded RGB image (region models: features)."""
        from ..data.images import open_image

        return open_image(source)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def preprocess(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``(n, t, h)`` and mask ``(n, t)`` of the text tower's last layer."""
        raise NotImplementedError(f"{type(self).__name__} does not expose token states")

    def image_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch states ``(n, p, h)`` and mask ``(n, p)`` of the image tower's last layer."""
        raise NotImplementedError(f"{type(self).__name__} does not expose patch states")

    @property
    def embedding_dim(self) -> int:
        raise NotImplementedError

    @property
    def state_dims(self) -> tuple[int, int]:
        """Widths ``(text, image)`` of the states returned by ``text_states`` / ``image_states``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose token/patch states")

    @property
    def logit_scale(self) -> torch.Tensor | None:
        return None

    def save(self, folder: Path) -> None:
        raise NotImplementedError


class HFBackbone(Backbone):
    """Any transformers model with ``get_text_features`` / ``get_image_features`` (CLIP, SigLIP, Chinese-CLIP, ...)."""

    backend = "hf"
    text_tower = ("model.text_model", "model.text_projection")
    image_tower = ("model.vision_model", "model.visual_projection")

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        cfg = model.config
        text_cfg = getattr(cfg, "text_config", cfg)
        max_pos = getattr(text_cfg, "max_position_embeddings", None) or 77
        tok_max = getattr(tokenizer, "model_max_length", max_pos) or max_pos
        self.max_length = int(min(max_pos, tok_max))
        # SigLIP was trained with texts padded to a fixed length and pools the last position, so it
        # must see exactly that padding; the others pool [CLS]/[EOS] and can pad to the longest text.
        self.padding: str | bool = "max_length" if cfg.model_type.startswith("siglip") else True

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        # Only pass what the text tower takes (e.g. SigLIP ignores attention_mask, BERT wants token_type_ids).
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")}

    def preprocess(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]}

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.model.get_text_features(**batch))

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.model.get_image_features(**batch))

    def text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.get_text_features(**batch)
        hidden = out.last_hidden_state
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return hidden, mask

    def image_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.get_image_features(**batch).last_hidden_state
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)

    @property
    def embedding_dim(self) -> int:
        cfg = self.model.config
        dim = getattr(cfg, "projection_dim", None)
        if dim is None:  # SigLIP has no projection: the embedding is the text tower's hidden size
            dim = cfg.text_config.hidden_size
        return int(dim)

    @property
    def state_dims(self) -> tuple[int, int]:
        cfg = self.model.config
        return int(cfg.text_config.hidden_size), int(cfg.vision_config.hidden_size)

    @property
    def logit_scale(self) -> torch.Tensor | None:
        return getattr(self.model, "logit_scale", None)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)


class OpenClipBackbone(Backbone):
    """An open_clip model (``open_clip:ViT-B-32`` or a saved folder)."""

    backend = "open_clip"
    # CLIP keeps the text tower at the top level; CustomTextCLIP (HF text towers) in ``model.text``
    text_tower = ("model.text", "model.token_embedding", "model.positional_embedding", "model.transformer",
                  "model.ln_final", "model.text_projection")
    image_tower = ("model.visual",)

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess: Any, name: str, model_cfg: dict | None = None,
                 preprocess_cfg: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.transform = preprocess
        self.name = name
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg or {}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(list(texts))}

    def preprocess(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return {"image": torch.stack([self.transform(im) for im in images])}

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(batch["text"])

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_image(batch["image"])

    @property
    def embedding_dim(self) -> int:
        return int(self.model_cfg["embed_dim"]) if self.model_cfg else int(self.model.text_projection.shape[-1])

    @property
    def logit_scale(self) -> torch.Tensor | None:
        return getattr(self.model, "logit_scale", None)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_model

        if self.model_cfg is None:
            raise NotImplementedError("this open_clip model has no config to save")
        (folder / "open_clip_config.json").write_text(
            json.dumps({"model_name": self.name, "model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}, indent=2)
        )
        save_model(self.model, str(folder / "open_clip_model.safetensors"))
