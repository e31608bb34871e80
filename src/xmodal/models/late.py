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

from ..errors import InvalidInputError, ModelNotFoundError
from ..runtime import place_model
from .backbones import Backbone
from .base import BackboneModel
from .dual import DualEncoder
from .loading import load_backbone
from ..ops.maxsim import maxsim, pad
from .registry import read_config, register_kind
from .seeding import generator

PROJECTION_WEIGHTS = "late_projection.safetensors"


def _projection(in_dim: int, out_dim: int, gen: torch.Generator) -> nn.Linear:
    """A bias-free ``nn.Linear`` with torch's default init, drawn from ``gen`` instead of the global RNG."""
    layer = nn.utils.skip_init(nn.Linear, in_dim, out_dim, bias=False)
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)  # what nn.Linear.reset_parameters does
    return layer


@register_kind("late")
class LateInteractionEncoder(BackboneModel):
    """Token- and patch-level vectors on a backbone's towers; saved and loaded as one folder.

    >>> late = load_model("runs/late")                       # doctest: +SKIP
    >>> late.encode_text(["a dog"])                          # [(t, dim)] one array per text
    >>> late.encode_query("which animal?", "dog.jpg")        # (t + p, dim): question tokens, then patches
    """

    def __init__(self, backbone: Backbone, dim: int = 128, model_id: str | None = None, seed: int = 0) -> None:
        super().__init__(backbone, model_id=model_id)
        text_dim, image_dim = backbone.state_dims
        gen = generator(seed)
        self.text_proj = _projection(text_dim, dim, gen)
        self.image_proj = _projection(image_dim, dim, gen)
        self.dim = dim

    @property
    def embedding_dim(self) -> int:
        return self.dim

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
        return place_model(model, device, dtype)

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

    # ------------------------------------------------------------------ inference
    @staticmethod
    def _ragged(vecs: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
        v, m = vecs.float().cpu().numpy(), mask.cpu().numpy()
        return [v[i][m[i]] for i in range(len(v))]

    def encode_text_tokens(self, texts: Sequence[str], batch_size: int = 64) -> list[np.ndarray]:
        """One ``(t_i, dim)`` array per text (padding dropped)."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                out += self._ragged(*self.text_tokens(self.backbone.tokenize(list(texts[s:s + batch_size]))))
        return out

    def encode_image(self, images: Sequence[Any] | Any, batch_size: int = 32, show_progress: bool | None = None,
                     convert_to: str = "numpy") -> np.ndarray | list[np.ndarray]:
        """Patch vectors: ``(n, patches, dim)`` when every image has as many (pixel towers); otherwise (region
        features, whose count varies) one ``(r_i, dim)`` array per image. Inputs go through ``load_image``."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for s in range(0, len(images), batch_size):
                batch = self.backbone.preprocess([self.load_image(x) for x in images[s:s + batch_size]])
                out += self._ragged(*self.image_tokens(batch))
        if not out:
            return np.zeros((0, 1, self.dim), dtype=np.float32)
        return np.stack(out) if len({len(v) for v in out}) == 1 else out

    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 64, show_progress: bool | None = None,
                    convert_to: str = "numpy") -> list[np.ndarray]:
        """One ``(t_i, dim)`` array per text."""
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"text #{i} is empty.")
        return self.encode_text_tokens(list(texts), batch_size)

    def encode_items(self, items: Sequence[Any], batch_size: int = 32) -> list[np.ndarray]:
        """Queries or documents: ``str`` (text), an image (path/PIL/bytes), or ``(text, image)`` (tokens then patches)."""
        out: list[np.ndarray] = []
        for item in items:
            if isinstance(item, tuple):
                text, image = item
                parts = []
                if text is not None:
                    parts.append(self.encode_text([text])[0])
                if image is not None:
                    parts.append(self.encode_image([image])[0])
                if not parts:
                    raise InvalidInputError("an item (text, image) needs at least one of the two.")
                out.append(np.concatenate(parts))
            elif isinstance(item, str):
                out.append(self.encode_text([item])[0])
            else:
                out.append(self.encode_image([item])[0])
        return out

    def encode_query(self, text: str | None = None, image: Any = None) -> np.ndarray:
        """FLMR-style query: question tokens followed by image patches -> ``(t, dim)``."""
        return self.encode_items([(text, image)])[0]

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """MaxSim matrix ``(len(a), len(b))`` between two lists of multi-vector items (``a`` is the query side)."""
        qa, ma = pad(a)
        qb, mb = pad(b)
        return maxsim(qa, ma, qb, mb).numpy()
