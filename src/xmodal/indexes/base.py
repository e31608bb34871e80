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

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import CorruptIndexError, InvalidInputError


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
    # A tensor exists only once torch is imported: never import it here (~0.5 GB of RSS and seconds of
    # startup for callers that only have numpy vectors, e.g. building an index from embedding shards).
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", dtype=torch.float32).numpy()
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
    if isinstance(ids, (str, bytes)):
        raise InvalidInputError(f"ids must be a list of strings, one per vector; got the single string {ids!r:.60}.")
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:  # None or (2, 3) would silently become the ids "None" and "(2, 3)"
        raise InvalidInputError(f"ids must be strings; got {type(bad[0]).__name__} {bad[0]!r:.60} "
                                f"({len(bad)} of {len(ids)} ids are not strings).")
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


def as_id_filter(filter: Any) -> set[str] | None:
    """A search ``filter`` as a set of ids; a bare string would otherwise be iterated per character."""
    if filter is None:
        return None
    if isinstance(filter, (str, bytes)) or not isinstance(filter, Iterable):
        raise InvalidInputError(f"filter must be a collection of ids (e.g. a list or set); got {filter!r:.60}.")
    ids = set(filter)
    bad = next((i for i in ids if not isinstance(i, str)), None)
    if bad is not None:
        raise InvalidInputError(f"filter must hold string ids; got {type(bad).__name__} {bad!r:.60}.")
    return ids


def check_dim(dim: Any) -> int:
    """A vector dimension: a positive int (``FaissIndex("8")`` used to fail deep inside with a TypeError)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InvalidInputError(f"dimension must be a positive integer; got {dim!r:.40}.")
    return int(dim)


def read_index_json(path: Path, lines: bool = False) -> Any:
    """A JSON (or JSON-lines) file of an index folder; a damaged one is a ``CorruptIndexError`` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()] if lines else json.loads(text)
    except FileNotFoundError:
        raise CorruptIndexError(f"index file '{Path(path).name}' is missing from '{Path(path).parent}'.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptIndexError(f"index file '{path}' is damaged (not valid JSON: {e}); rebuild the index "
                                "or restore it from a backup.") from None


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a positive integer; got {k!r}.")
    return int(k)
