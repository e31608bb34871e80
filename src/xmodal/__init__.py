"""xmodal: cross-modal retrieval behind one API.

>>> import xmodal
>>> model = xmodal.DualEncoder.from_pretrained("openai/clip-vit-base-patch32")   # doctest: +SKIP
>>> index = xmodal.FaissIndex(model.embedding_dim, model_id=model.model_id)       # doctest: +SKIP
>>> xmodal.index_folder("photos/", "photos.idx", model="openai/clip-vit-base-patch32")  # doctest: +SKIP
>>> xmodal.search("photos.idx", "a dog on a beach", k=5).paths                   # doctest: +SKIP

Every command of the ``xmodal`` command line is one function here (``xmodal.pipelines``):
``index_folder``, ``index_from_embeddings``, ``index_texts``, ``search``, ``evaluate``, ``train_model`` (``xmodal train``;
``xmodal.train`` is the training package), ``synth``, ``encode``, ``serve``, ``run_demo``, ``features_*``.
Names are imported on first use, so ``import xmodal`` loads no torch, FAISS or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .errors import (
    CorruptIndexError,
    DatasetFormatError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidInputError,
    ModelNotFoundError,
    XmodalError,
)

# public name -> "module:attribute" (imported on first access)
_LAZY: dict[str, str] = {
    "DualEncoder": "xmodal.models:DualEncoder",
    "build_tiny_model": "xmodal.models:build_tiny_model",
    "load_model": "xmodal.models:load_model",
    "FaissIndex": "xmodal.indexes:FaissIndex",
    "LexicalIndex": "xmodal.indexes.lexical:LexicalIndex",
    "load_index": "xmodal.indexes:load_index",
    "SearchResult": "xmodal.retrieve:SearchResult",
    "Retriever": "xmodal.retrieve:Retriever",
    "index_collection": "xmodal.retrieve.late:index_collection",
    "LateCollection": "xmodal.retrieve.late:LateCollection",
    "open_collection": "xmodal.collection:open_collection",
    # one function per command
    "index_folder": "xmodal.pipelines:index_folder",
    "index_from_embeddings": "xmodal.pipelines:index_from_embeddings",
    "index_texts": "xmodal.pipelines:index_texts",
    "search": "xmodal.pipelines:search",
    "export_model": "xmodal.pipelines:export",
    "evaluate": "xmodal.pipelines:evaluate",
    "train_model": "xmodal.pipelines:train",
    "synth": "xmodal.pipelines:synth",
    "encode": "xmodal.pipelines:encode",
    "serve": "xmodal.pipelines:serve",
    "run_demo": "xmodal.pipelines:demo",
    "features_split": "xmodal.pipelines:features_split",
    "features_info": "xmodal.pipelines:features_info",
    "features_convert": "xmodal.pipelines:features_convert",
    "mine_negatives": "xmodal.pipelines:mine_negatives",
    "verify_index": "xmodal.pipelines:verify_index",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'xmodal' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    *_LAZY,
    "XmodalError",
    "ModelNotFoundError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "CorruptIndexError",
    "InvalidInputError",
    "DatasetFormatError",
]
