"""What every pretrained multi-vector (late-interaction) model shares: the xmodal encoder surface.

``ColPaliEncoder`` and ``FLMREncoder`` only implement ``_encode_queries(texts)``, ``_encode_docs_images(images)``
(and FLMR ``_encode_queries_with_images``); this mixin turns them into the calls the rest of xmodal makes
(``encode_text``/``encode_image``/``encode_items``/``encode_query``/``similarity``), all returning lists of
``(t_i, dim)`` float32 arrays, L2-normalised by the model itself, padding dropped.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..ops.maxsim import maxsim, pad
from ..runtime import resolve_device, resolve_dtype
from .base import as_texts
from .registry import read_checkpoint_config  # noqa: F401  (re-exported for colpali/flmr)


def resolve(device: Any, dtype: Any) -> tuple[str, Any]:
    """``(device, torch dtype or None)`` through ``xmodal.runtime`` (one error text for bad values everywhere)."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


class MultiVectorEncoderMixin:
    """Shared encoding surface; subclasses (``nn.Module`` s) set ``model_id``, ``dim`` and the two ``_encode_*`` methods.

    Used by the pretrained checkpoints (ColPali, FLMR) and by xmodal's own ``LateInteractionEncoder``.
    """

    dim: int
    model_id: str
    text_batch_size = 16  # defaults of encode_text / encode_image (``batch_size=None``); subclasses tune them
    image_batch_size = 8

    @property
    def embedding_dim(self) -> int:
        return self.dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype  # type: ignore[attr-defined]

    def load_image(self, source: Any) -> Any:
        from ..data.images import open_image

        return open_image(source)

    # --------------------------------------------------------------- to implement
    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def _encode_docs_images(self, images: list[Any]) -> list[np.ndarray]:
        raise NotImplementedError

    def _encode_queries_with_images(self, texts: list[str], images: list[Any]) -> list[np.ndarray]:
        """A query made of a question and an image; default: question tokens then the page's vectors."""
        q = self._encode_queries(texts)
        d = self._encode_docs_images(images)
        return [np.concatenate([a, b]) for a, b in zip(q, d)]

    # --------------------------------------------------------------- public surface
    # --------------------------------------------------------------- differentiable (training) surface
    def text_tokens(self, batch: dict[str, Any]) -> Any:
        """Padded ``(n, t, dim)`` query vectors + ``(n, t)`` mask of a prepared batch (see ``prepare_queries``)."""
        raise NotImplementedError

    def image_tokens(self, batch: dict[str, Any]) -> Any:
        """Padded ``(n, t, dim)`` page vectors + mask of a prepared batch (see ``prepare_images``)."""
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str] | str, batch_size: int | None = None, show_progress: bool | None = None,
                    convert_to: str = "numpy") -> list[np.ndarray]:
        """Queries: one ``(t_i, dim)`` array per text."""
        texts = as_texts(texts)
        step = batch_size or self.text_batch_size
        out: list[np.ndarray] = []
        for s in range(0, len(texts), step):
            out += self._encode_queries(texts[s:s + step])
        return out

    def encode_image(self, images: Sequence[Any] | Any, batch_size: int | None = None, show_progress: bool | None = None,
                     convert_to: str = "numpy") -> Any:
        """Documents (images): ``(n, t, dim)`` when every image has as many vectors, else a list of ``(t_i, dim)``."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        step = batch_size or self.image_batch_size
        out: list[np.ndarray] = []
        for s in range(0, len(images), step):
            out += self._encode_docs_images([self.load_image(x) for x in images[s:s + step]])
        if not out:
            return np.zeros((0, 1, self.dim), dtype=np.float32)
        return np.stack(out) if len({len(v) for v in out}) == 1 else out

    def encode_items(self, items: Sequence[Any], batch_size: int | None = None) -> list[np.ndarray]:
        """``str`` -> query vectors; an image -> document vectors; ``(text, image)`` -> a multimodal query."""
        out: list[np.ndarray] = []
        for item in items:
            if isinstance(item, tuple):
                text, image = item
                out.append(self.encode_query(text=text, image=image))
            elif isinstance(item, str):
                out.append(self.encode_text([item])[0])
            else:
                out.append(np.asarray(self.encode_image([item])[0]))
        return out

    def encode_query(self, text: str | None = None, image: Any = None) -> np.ndarray:
        """A text query, an image, or both (question + image: FLMR's multimodal query) -> ``(t, dim)``."""
        if text is not None and not str(text).strip():
            raise InvalidInputError("the text query is empty.")
        if text is None and image is None:
            raise InvalidInputError("give a text query, an image, or both.")
        if image is None:
            return self.encode_text([text])[0]
        if text is None:
            return np.asarray(self.encode_image([image])[0])
        return self._encode_queries_with_images([text], [self.load_image(image)])[0]

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """MaxSim matrix between two lists of multi-vector items (rows: ``a`` as queries)."""
        qa, ma = pad(list(a))
        qb, mb = pad(list(b))
        return maxsim(qa, ma, qb, mb).numpy()


def ragged(vectors: Any, mask: Any) -> list[np.ndarray]:
    """``(n, t, d)`` tensor + ``(n, t)`` mask -> one float32 ``(t_i, d)`` array per row, masked rows dropped."""
    v = vectors.float().cpu().numpy()
    m = mask.bool().cpu().numpy()
    return [np.ascontiguousarray(v[i][m[i]]) for i in range(len(v))]
