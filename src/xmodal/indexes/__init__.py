"""Vector indexes behind one protocol: FAISS (embedded default), late interaction, Milvus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Index
from .faiss_index import FaissIndex
from .manifest import Manifest, read_manifest

# engine name (as written in a manifest) -> "module:Class"; backends register here so load_index
# can open any saved index without the caller knowing its engine.
ENGINES: dict[str, str] = {
    "faiss": "xmodal.indexes.faiss_index:FaissIndex",
    "late-interaction": "xmodal.indexes.multivector:MultiVectorIndex",
    "milvus": "xmodal.indexes.milvus:MilvusIndex",
}


def load_index(path: str | Path, **kwargs: Any) -> Any:
    """Open a saved index folder of any engine (read from its manifest)."""
    import importlib

    from ..errors import IndexMismatchError

    m = read_manifest(path, verify=False)
    target = ENGINES.get(m.engine)
    if target is None:
        raise IndexMismatchError(f"index '{path}' uses engine '{m.engine}', which this xmodal does not know: {sorted(ENGINES)}.")
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls).load(path, **kwargs)


__all__ = ["Index", "FaissIndex", "Manifest", "read_manifest", "load_index", "ENGINES"]
