"""What a model can do, as runtime-checkable protocols: the few places that must branch ask these.

- ``SingleVectorEncoder``: one ``(d,)`` vector per text/image (dual encoders, joint models, region models).
- ``MultiVectorEncoder``: several vectors per item (text tokens, image patches) scored by MaxSim.
- ``PairScorer``: reads a (query, candidate) pair jointly and scores it (cross-encoders, rerankers).

A model may play several roles (``JointModel`` is a single-vector encoder and a pair scorer). The
members listed are what callers rely on; ``isinstance`` checks that they exist (not their signatures).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class SingleVectorEncoder(Protocol):
    """``encode_text``/``encode_image`` -> ``(n, d)`` float32, L2-normalised; ``*_embeddings`` are the
    differentiable ``(n, d)`` tensors of tokenized/preprocessed batches (training)."""

    model_id: str

    @property
    def embedding_dim(self) -> int: ...

    def load_image(self, source: Any) -> Any: ...

    def encode_text(self, texts: Sequence[str], batch_size: int = ..., show_progress: bool | None = ...,
                    convert_to: str = ...) -> Any: ...

    def encode_image(self, images: Sequence[Any], batch_size: int = ..., show_progress: bool | None = ...,
                     convert_to: str = ...) -> Any: ...

    def text_embeddings(self, batch: dict[str, Any]) -> Any: ...

    def image_embeddings(self, batch: dict[str, Any]) -> Any: ...


@runtime_checkable
class MultiVectorEncoder(Protocol):
    """Token/patch vectors: ``encode_text`` -> one ``(t_i, d)`` array per text, ``encode_image`` -> ``(n, p, d)``,
    ``encode_items``/``encode_query`` for mixed (text, image) items; ``text_tokens``/``image_tokens`` are the
    differentiable padded ``(n, t, d)`` vectors + masks (training)."""

    model_id: str

    @property
    def embedding_dim(self) -> int: ...

    def load_image(self, source: Any) -> Any: ...

    def encode_text(self, texts: Sequence[str], batch_size: int = ..., show_progress: bool | None = ...,
                    convert_to: str = ...) -> list[np.ndarray]: ...

    def encode_image(self, images: Sequence[Any], batch_size: int = ..., show_progress: bool | None = ...,
                     convert_to: str = ...) -> np.ndarray: ...

    def encode_items(self, items: Sequence[Any], batch_size: int = ...) -> list[np.ndarray]: ...

    def encode_query(self, text: str | None = ..., image: Any = ...) -> np.ndarray: ...

    def text_tokens(self, batch: dict[str, Any]) -> Any: ...

    def image_tokens(self, batch: dict[str, Any]) -> Any: ...


@runtime_checkable
class PairScorer(Protocol):
    """``score(queries, candidates)``: two aligned lists (pair i is ``(queries[i], candidates[i])``), each item a
    text (``str``) or an image as ``load_image`` returns it; ``(n,)`` float32 scores, higher = better match."""

    def load_image(self, source: Any) -> Any: ...

    def score(self, queries: Sequence[Any], candidates: Sequence[Any], batch_size: int = ...,
              show_progress: bool | None = ...) -> np.ndarray: ...


ROLE_NAMES: dict[type, str] = {
    SingleVectorEncoder: "single-vector encoder (dual encoder)",
    MultiVectorEncoder: "multi-vector encoder (late interaction)",
    PairScorer: "pair scorer (cross-encoder / reranker)",
}

# the same roles by name, for configs and index-engine tables
ROLES: dict[str, type] = {"single-vector": SingleVectorEncoder, "multi-vector": MultiVectorEncoder,
                          "pair-scorer": PairScorer}


def as_role(role: type | str | None) -> type | None:
    """A role protocol from itself or its name (``"single-vector"``, ``"multi-vector"``, ``"pair-scorer"``)."""
    if role is None or role in ROLE_NAMES:
        return role  # type: ignore[return-value]
    if isinstance(role, str) and role in ROLES:
        return ROLES[role]
    from ..errors import InvalidInputError

    raise InvalidInputError(f"unknown model role {role!r}; use one of {sorted(ROLES)}.")
