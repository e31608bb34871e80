"""The one table of index engines: name -> how to create, open and stream-build that backend.

Every place that needs "which engines exist" (``load_index``, collections, ``xmodal index``,
building from embedding shards, the CLI's help) reads ``ENGINES``. Adding an engine is one new
module with the index class (the ``Index`` protocol of ``base.py``, a class attribute ``engine``
and a classmethod ``load(path, *, model_id=None, dimension=None, verify=True)``) plus ONE line:

    register(EngineSpec("my-engine", "my_package.my_index:MyIndex", options=("kind",)))

Classes and callables may be given as ``"module:attribute"`` strings so that importing this table
imports no backend (``xmodal --help`` stays fast and FAISS/pymilvus load only when used).
The model an engine needs follows from ``multi_vector`` (``role``): single vector per item
(dot product) or token/patch vectors (MaxSim). The model's class itself comes from the model's
own config (``xmodal.models.load_model(name, role=spec.role)``), never from the engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from ..errors import InvalidInputError

Ref = Union[str, Callable[..., Any], type]  # "module:attribute" or the object itself

SINGLE_VECTOR = "single-vector"
MULTI_VECTOR = "multi-vector"


def resolve(ref: Ref) -> Any:
    """The object a ``"module:attribute"`` reference names (objects pass through)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class EngineSpec:
    """One index backend and what it can do.

    Attributes:
        name: the engine's name, as written in its manifest (``manifest.json`` ``engine``) and given to ``--engine``.
        index_class: the class (or ``"module:Class"``); ``load(path, **kw)`` opens a saved index.
        factory: ``factory(dim, model_id, folder, **options) -> index`` for a new, empty index
            (default: ``index_class(dim, model_id=model_id, **options)``); ``folder`` is where it will be saved.
        multi_vector: stores several vectors per item (late interaction / MaxSim) instead of one.
        options: build options this engine takes from ``xmodal index`` / ``index_folder``
            (e.g. ``kind`` for FAISS, ``nbits`` for late interaction); others are not passed to it.
        from_shards: ``(shards, info, out, *, kind, memory_budget_bytes, model_id, train_sample, **options)
            -> (index, IndexChoice)``: streaming build from embedding shards (``xmodal index --from-embeddings``);
            None when the engine cannot.
        filtering / removal / incremental: ``search(filter=...)``, ``remove(ids)``, ``add`` after the first build.
        description: one line for help texts.
    """

    name: str
    index_class: Ref
    factory: Ref | None = None
    multi_vector: bool = False
    options: tuple[str, ...] = ()
    from_shards: Ref | None = None
    filtering: bool = True
    removal: bool = True
    incremental: bool = True
    description: str = ""

    @property
    def role(self) -> str:
        """The encoder role this engine's vectors come from: ``"single-vector"`` or ``"multi-vector"``."""
        return MULTI_VECTOR if self.multi_vector else SINGLE_VECTOR

    def cls(self) -> Any:
        return resolve(self.index_class)

    def create(self, dim: int, model_id: str | None, folder: str | Path, **options: Any) -> Any:
        """A new, empty index of this engine."""
        if self.factory is not None:
            return resolve(self.factory)(dim, model_id, Path(folder), **options)
        return self.cls()(dim, model_id=model_id, **options)

    def load(self, path: str | Path, **kwargs: Any) -> Any:
        return self.cls().load(path, **kwargs)

    def pick_options(self, **candidates: Any) -> dict[str, Any]:
        """The given options this engine takes (``None`` = not given, so the engine's default applies)."""
        return {k: v for k, v in candidates.items() if k in self.options and v is not None}


ENGINES: dict[str, EngineSpec] = {}


def register(spec: EngineSpec) -> EngineSpec:
    """Add (or replace) an engine in the table; returns it."""
    ENGINES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    ENGINES.pop(name, None)


def get_engine(name: str) -> EngineSpec:
    """The engine called ``name``; an unknown name is one clear ``InvalidInputError``."""
    spec = ENGINES.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown index engine '{name}'; available: {', '.join(sorted(ENGINES))}.")
    return spec


def engine_names() -> list[str]:
    return sorted(ENGINES)


def default_engine(multi_vector: bool = False) -> str:
    """The engine used when none is named: FAISS for single vectors, late interaction for token vectors."""
    return "late-interaction" if multi_vector else "faiss"


# The built-in engines: one line each.
register(EngineSpec("faiss", "xmodal.indexes.faiss_index:FaissIndex", options=("kind", "target_recall", "quantize", "rescore", "refine"),
                    from_shards="xmodal.indexes.autoindex:build_faiss", description="FAISS (embedded default)"))
register(EngineSpec("late-interaction", "xmodal.indexes.multivector:MultiVectorIndex", multi_vector=True,
                    factory="xmodal.indexes.multivector:create", options=("nbits",),
                    from_shards="xmodal.indexes.autoindex:build_multivector",
                    description="multi-vector MaxSim, PLAID-style compression"))
register(EngineSpec("milvus", "xmodal.indexes.milvus:MilvusIndex", factory="xmodal.indexes.milvus:create",
                    options=("uri", "collection"), from_shards="xmodal.indexes.autoindex:build_milvus",
                    description="Milvus Lite file or cluster (scale-out)"))
