"""Vector indexes behind one protocol: FAISS (embedded default), late interaction, Milvus.

Which engines exist, and how to make and open each, is the table in ``registry.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Index
from .faiss_index import FaissIndex
from .manifest import Manifest, read_manifest
from .registry import ENGINES, EngineSpec, get_engine, register


def load_index(path: str | Path, **kwargs: Any) -> Any:
    """Open a saved index folder of any engine (read from its manifest)."""
    from ..errors import IndexMismatchError

    m = read_manifest(path, verify=False)
    spec = ENGINES.get(m.engine)
    if spec is None:
        raise IndexMismatchError(f"index '{path}' uses engine '{m.engine}', which this xmodal does not know: {sorted(ENGINES)}.")
    return spec.load(path, **kwargs)


__all__ = ["Index", "FaissIndex", "Manifest", "read_manifest", "load_index", "ENGINES", "EngineSpec", "get_engine",
           "register"]
