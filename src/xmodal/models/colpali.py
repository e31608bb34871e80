"""ColPali / ColQwen2 through transformers' own classes: page images are documents, texts are queries.

    >>> model = ColPaliEncoder.from_pretrained("vidore/colpali-v1.3-hf")      # doctest: +SKIP
    >>> pages = model.encode_image(["page1.png", "page2.png"])               # vectors per page
    >>> query = model.encode_text(["which page shows the revenue table?"])   # one (t, 128) array
    >>> model.similarity(query, list(pages))                                  # MaxSim scores

The vectors are exactly ``ColPaliForRetrieval(...).embeddings`` / ``ColQwen2ForRetrieval(...).embeddings``
(projected, L2-normalised by the model) with padding positions dropped, so a ``MultiVectorIndex`` scores
them with the same MaxSim the model card describes. Checkpoints: ``vidore/colpali-v1.2-hf``,
``vidore/colpali-v1.3-hf``, ``vidore/colqwen2-v1.0-hf`` (or any folder saved by those classes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelNotFoundError
from .multivector import MultiVectorEncoderMixin, ragged, read_checkpoint_config, resolve
from .registry import register_kind


def _classes(model_type: str) -> tuple[Any, Any]:
    if model_type == "colpali":
        from transformers import ColPaliForRetrieval, ColPaliProcessor

        return ColPaliForRetrieval, ColPaliProcessor
    if model_type == "colqwen2":
        from transformers import ColQwen2ForRetrieval, ColQwen2Processor

        return ColQwen2ForRetrieval, ColQwen2Processor
    raise ModelNotFoundError(f"model_type '{model_type}' is not ColPali/ColQwen2.")


def model_id_for(name_or_path: str | os.PathLike) -> str:
    """Folders are known by their absolute path, hub ids by the id (stable between index and search)."""
    p = Path(str(name_or_path)).expanduser()
    return str(p.resolve()) if p.is_dir() else str(name_or_path).removeprefix("hf:")


@register_kind("colpali", model_types=("colpali", "colqwen2"))
class ColPaliEncoder(MultiVectorEncoderMixin, nn.Module):
    """A ``ColPaliForRetrieval`` or ``ColQwen2ForRetrieval`` and its processor, as an xmodal multi-vector encoder."""

    def __init__(self, model: nn.Module, processor: Any, model_id: str) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.dim = int(model.config.embedding_dim)
        self.model_type = str(model.config.model_type)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: Any = None, dtype: Any = None) -> "ColPaliEncoder":
        cfg = read_checkpoint_config(name_or_path)
        if cfg is None:
            raise ModelNotFoundError(f"could not read config.json of '{name_or_path}' (no such folder, or a hub id "
                                     "that is neither cached nor reachable).")
        model_cls, proc_cls = _classes(str(cfg.get("model_type")))
        dev, want = resolve(device, dtype)
        # CPUs run float32 best; on a GPU keep the checkpoint's own precision (bfloat16 for the vidore models).
        torch_dtype = want or (torch.float32 if dev == "cpu" else "auto")
        src = str(name_or_path).removeprefix("hf:")
        try:
            model = model_cls.from_pretrained(src, dtype=torch_dtype)
            processor = proc_cls.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"could not load {cfg.get('model_type')} model '{name_or_path}': "
                                     f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
        model.eval()
        return cls(model.to(dev), processor, model_id_for(name_or_path))

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        return folder

    def prepare_queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.processor(text=texts, return_tensors="pt"))

    def prepare_images(self, images: list[Any]) -> dict[str, torch.Tensor]:
        return dict(self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt"))

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k not in ("labels", "token_type_ids")}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return self.model(**inputs).embeddings, inputs["attention_mask"].bool()

    text_tokens = image_tokens = _forward  # differentiable: the model's own normalised vectors + mask

    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        with torch.inference_mode():
            return ragged(*self._forward(self.prepare_queries(texts)))

    def _encode_docs_images(self, images: list[Any]) -> list[np.ndarray]:
        with torch.inference_mode():
            return ragged(*self._forward(self.prepare_images(images)))
