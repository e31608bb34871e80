"""The ``Index`` protocol every backend implements, plus helpers shared by backends.

Contract (see DESIGN.md):
- ``add(ids, vectors, metadata=None)``: ids are strings (an item's stable name, e.g. a file path
  relative to the collection root); vectors are ``(n, d)`` float32 for single-vector backends.
- ``search(queries, k, filter=None) -> (scores, ids)``: ``scores`` is ``(q, k)`` float32, ``ids`` is a
  ``(q, k)`` object array of str; slots with no result hold score ``-inf`` and id ``None``.
  ``filter`` restricts results to a set of ids (metadata filters build on this).
- ``remove(ids)``, ``save(path)``, ``load(path)``, ``__len__``, ``__contains__``, ``ids()``,
  ``metadata(id) -> dict`` (what was given to ``add``; ``{}`` if nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InvalidInputError


@runtime_checkable
class Index(Protocol):
    """What every xmodal index backend offers."""

    engine: str  # "faiss", "late-interaction", "milvus", ...

    def add(self, ids: Sequence[str], vectors: Any, metadata: Sequence[Mapping[str, Any]] | None = None) -> None: ...

    def search(self, queries: Any, k: int, filter: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def remove(self, ids: Iterable[str]) -> int: ...

    def save(self, path: str | Path) -> Path: ...

    def __len__(self) -> int: ...

    def ids(self) -> list[str]: ...

    def __contains__(self, item_id: str) -> bool: ...

    def metadata(self, item_id: str) -> dict[str, Any]: ...


def as_float32_matrix(vectors: Any, dim: int | None, what: str = "vectors") -> np.ndarray:
    """Return a C-contiguous float32 ``(n, d)`` array, with a clear error for the wrong shape."""
    try:
        import torch

        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().to("cpu", dtype=torch.float32).numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-D array (n, d); got shape {arr.shape}.")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(
            f"{what} have dimension {arr.shape[1]} but the index holds {dim}-d vectors; "
            "were they made by a different model?"
        )
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what} contain NaN or infinite values.")
    return np.ascontiguousarray(arr)


def check_new_ids(ids: Sequence[str], existing: Mapping[str, Any] | set[str], n_vectors: int) -> list[str]:
    """Validate ids for ``add``: strings, unique, one per vector, not already present."""
    ids = [str(i) for i in ids]
    if len(ids) != n_vectors:
        raise InvalidInputError(f"got {len(ids)} ids for {n_vectors} vectors; give exactly one id per vector.")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InvalidInputError(f"duplicate ids in one add(): {dup}")
    clash = [i for i in ids if i in existing]
    if clash:
        raise InvalidInputError(
            f"{len(clash)} ids are already in the index (e.g. {clash[:3]}); remove them first to replace them."
        )
    return ids


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a positive integer; got {k!r}.")
    return int(k)
