"""xmodal: cross-modal retrieval behind one API.

>>> import xmodal
>>> model = xmodal.DualEncoder.from_pretrained("openai/clip-vit-base-patch32")   # doctest: +SKIP
>>> index = xmodal.FaissIndex(model.embedding_dim, model_id=model.model_id)       # doctest: +SKIP
"""

from __future__ import annotations

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
from .indexes import FaissIndex, load_index
from .models import DualEncoder, build_tiny_model
from .retrieve import Retriever, SearchResult
from .retrieve.late import LateCollection, index_collection

__all__ = [
    "__version__",
    "DualEncoder",
    "build_tiny_model",
    "FaissIndex",
    "load_index",
    "SearchResult",
    "Retriever",
    "index_collection",
    "LateCollection",
    "XmodalError",
    "ModelNotFoundError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "CorruptIndexError",
    "InvalidInputError",
    "DatasetFormatError",
]
