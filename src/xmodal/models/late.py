"""``LateInteractionEncoder``: many vectors per item (text tokens, image patches) for MaxSim (FLMR/ColBERT style).

Token states of the text tower and patch states of the image tower are projected to a small
dimension (default 128) and L2-normalised. A query may combine an image and a question (FLMR):
its vectors are the question's tokens followed by the image's patches. Documents may be text,
images, or (text, image) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.images import open_image
from ..errors import InvalidInputError
from .backbones import XMODAL_CONFIG, Backbone
from .dual import DualEncoder, _resolve_dtype
from .loading import load_backbone

PROJECTION_WEIGHTS = "late_projection.safetensors"


class LateInteractionEncoder(DualEncoder):
    """Token- and patch-level vectors on a dual encoder's backbone; saved and loaded as one folder."""

    def __init__(self, backbone: Backbone, dim: int = 128, model_id: str | None = None, seed: int = 0) -> None:
        super().__init__(backbone, model_id=model_id)
        cfg = backbone.model.config
        torch.manual_seed(seed)
        self.text_proj = nn.Linear(int(cfg.text_config.hidden_size), dim, bias=False)
        self.image_proj = nn.Linear(int(cfg.vision_config.hidden_size), dim, bias=False)
        self.dim = dim

    @property
    def embedding_dim(self) -> int:
        return self.dim

    @classmethod
    def from_dual(cls, dual: DualEncoder, dim: int = 128, seed: int = 0) -> "LateInteractionEncoder":
        """Late interaction on an existing dual encoder's towers, with fresh (random, to be trained) projections."""
        return cls(dual.backbone, dim=dim, model_id=f"{dual.model_id}+late{dim}", seed=seed).to(dual.device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None, dtype: Any = None,
                        dim: int = 128) -> "LateInteractionEncoder":
        """A saved late-interaction folder, or any dual-encoder name/folder (projections then start random)."""
        from safetensors.torch import load_model

        folder = Path(str(name_or_path))
        meta = json.loads((folder / XMODAL_CONFIG).read_text()) if (folder / XMODAL_CONFIG).exists() else {}
        if meta.get("kind") == "late":
            model = cls(load_backbone(folder), dim=meta["dim"], model_id=meta.get("model_id"))
            load_model(model, str(folder / PROJECTION_WEIGHTS), strict=False)
        else:
            model = cls.from_dual(DualEncoder.from_pretrained(name_or_path), dim=dim)
        model.eval()
        return model.to(device=device or "cpu", dtype=_resolve_dtype(dtype))

    kind = "late"

    def _save_extra(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file({"text_proj.weight": self.text_proj.weight.detach().contiguous(),
                   "image_proj.weight": self.image_proj.weight.detach().contiguous()}, str(folder / PROJECTION_WEIGHTS))
        return {"dim": self.dim}

    # ------------------------------------------------------------------ differentiable token vectors
    def text_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, mask = self.backbone.text_states(self._to_device(batch))
        return nn.functional.normalize(self.text_proj(h.to(self.text_proj.weight.dtype)), dim=-1), mask.bool()

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, mask = self.backbone.image_states(self._to_device(batch))
        return nn.functional.normalize(self.image_proj(h.to(self.image_proj.weight.dtype)), dim=-1), mask.bool()

    # ------------------------------------------------------------------ inference
    def _ragged(self, vecs: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
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
                     convert_to: str = "numpy") -> np.ndarray:
        """Patch vectors ``(n, patches, dim)``: every image of a model has the same number of patches."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(images), batch_size):
                batch = self.backbone.preprocess([open_image(x) for x in images[s:s + batch_size]])
                chunks.append(self.image_tokens(batch)[0].float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 1, self.dim), dtype=np.float32)

    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 64, show_progress: bool | None = None,
                    convert_to: str = "numpy") -> list[np.ndarray]:  # type: ignore[override]
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
    def similarity(a: Any, b: Any) -> np.ndarray:  # type: ignore[override]
        """MaxSim matrix between two lists of multi-vector items."""
        from ..indexes.maxsim import maxsim, pad

        qa, ma = pad(a)
        qb, mb = pad(b)
        return maxsim(qa, ma, qb, mb).numpy()
