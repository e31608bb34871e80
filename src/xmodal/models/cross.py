"""Cross-encoders: read a (query, candidate) pair jointly and score how well they match.

``CrossEncoder`` wraps Hugging Face BLIP image-text matching models (``BlipForImageTextRetrieval``
with its ITM head), by hub id or local folder. ``load_reranker`` opens any saved reranker
(BLIP, or xmodal's shared-weight ``JointModel``) for the ``Retriever`` and the evaluator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.images import open_image
from ..errors import InvalidInputError, ModelNotFoundError
from .fingerprint import place_weights
from .registry import ModelConfig, load_model, register_kind, write_config
from .roles import PairScorer


def split_pairs(queries: Sequence[Any], candidates: Sequence[Any]) -> tuple[list[str], list[Any]]:
    """Aligned (query, candidate) pairs -> (texts, images), whichever side each is on."""
    if len(queries) != len(candidates):
        raise InvalidInputError(f"got {len(queries)} queries for {len(candidates)} candidates; pairs must align.")
    texts, images = [], []
    for q, c in zip(queries, candidates):
        if isinstance(q, str) and not isinstance(c, str):
            texts.append(q), images.append(c)
        elif isinstance(c, str) and not isinstance(q, str):
            texts.append(c), images.append(q)
        else:
            raise InvalidInputError("each pair needs one text and one image (a cross-encoder scores image-text pairs).")
    return texts, images


class BatchedPairScorer(nn.Module):
    """Shared batching for cross-encoders (the ``PairScorer`` role): subclasses implement ``_score_batch(texts, images)``."""

    def load_image(self, source: Any) -> Any:
        """One image as ``_score_batch`` takes it (decoded pixels; region models override this)."""
        return open_image(source)

    def _score_batch(self, texts: list[str], images: list[Any]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, queries: Sequence[Any], candidates: Sequence[Any], batch_size: int = 32,
              show_progress: bool | None = None) -> np.ndarray:
        """Match scores (higher = better) for aligned pairs; either side may be the text."""
        texts, images = split_pairs(queries, candidates)
        n = len(texts)
        show = n > 4 * batch_size if show_progress is None else show_progress
        out: list[torch.Tensor] = []
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for s in tqdm(range(0, n, batch_size), desc="scoring pairs", unit="batch", disable=not show):
                imgs = [self.load_image(x) for x in images[s:s + batch_size]]
                out.append(self._score_batch(texts[s:s + batch_size], imgs).float().cpu())
        self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def rank(self, query: Any, candidates: Sequence[Any], top_k: int | None = None, batch_size: int = 32) -> list[tuple[int, float]]:
        """(candidate index, score) best first."""
        scores = self.score([query] * len(candidates), list(candidates), batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")[: top_k or len(candidates)]
        return [(int(i), float(scores[i])) for i in order]


@register_kind("cross")
class CrossEncoder(BatchedPairScorer):
    """BLIP image-text matching: score = ITM logit(match) - logit(no match), i.e. the log-odds of a match."""

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, name: str) -> None:
        super().__init__()
        self.model, self.tokenizer, self.image_processor, self.name = model, tokenizer, image_processor, name

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | None = None,
                        dtype: torch.dtype | None = None) -> "CrossEncoder":
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

        name = str(name_or_path)
        path = Path(name).expanduser()
        if path.is_dir() and (path / "config.json").exists():
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            if model_type != "blip":
                raise ModelNotFoundError(f"'{path}' is a '{model_type}' model; rerankers are BLIP ITM models or "
                                         "xmodal joint models.")
        elif not path.is_dir() and name.startswith((".", "/", "~")):
            raise ModelNotFoundError(f"reranker '{name}' not found: no such folder.")
        try:
            model = BlipForImageTextRetrieval.from_pretrained(name)
            tokenizer = AutoTokenizer.from_pretrained(name)
            processor = AutoImageProcessor.from_pretrained(name)
        except (OSError, ValueError) as e:
            where = f"the local folder '{name}'" if path.is_dir() else "the Hugging Face cache and the hub"
            raise ModelNotFoundError(
                f"could not load cross-encoder '{name}': looked in {where} ({str(e).splitlines()[0][:200]}). "
                "Download a BLIP ITM model (e.g. Salesforce/blip-itm-base-coco) on a connected machine and pass its folder."
            ) from e
        return place_weights(cls(model, tokenizer, processor, name), device, dtype)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        write_config(folder, ModelConfig(kind=self.kind, backend="blip", model_id=self.name))
        return folder

    def _score_batch(self, texts: list[str], images: list[Any]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt").to(dev)
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(dev, dtype)
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels,
                         use_itm_head=True)
        logits = out.itm_score if hasattr(out, "itm_score") else out[0]
        return logits[:, 1] - logits[:, 0]


def load_reranker(name_or_path: str | os.PathLike, device: str | None = None, dtype: Any = None) -> PairScorer:
    """Open a reranker: any saved model that is a ``PairScorer`` (joint, region cross-encoder), or a BLIP ITM model."""
    return load_model(name_or_path, role=PairScorer, device=device, dtype=dtype)
