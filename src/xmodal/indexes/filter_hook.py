"""Allowed document positions for engines that filter inside their own candidate generation.

The multi-vector index restricts its candidates to an array of allowed positions; this turns an id
allow-list and/or a ``where`` expression into that array, evaluating the expression on a columnar
``MetadataStore`` cached on the index (keyed by the id list object and its length, so it is rebuilt
after any ``add``/``remove``/metadata update, which replace or grow that list).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .filters import Expr
from .metadata_store import MetadataStore


def allowed_positions(ids: Sequence[str], label: Mapping[str, int], meta: Mapping[str, Mapping[str, Any]],
                      id_filter: set[str] | None, expr: Expr | None, owner: Any) -> np.ndarray | None:
    """Sorted positions allowed by both filters, or None when neither is given."""
    if id_filter is None and expr is None:
        return None
    mask = np.ones(len(ids), dtype=bool)
    if expr is not None:
        key = (id(ids), len(ids), ids[0] if ids else None, ids[-1] if ids else None, id(meta),
               getattr(owner, "_meta_version", 0))
        cached = getattr(owner, "_filter_store", None)
        if cached is None or cached[0] != key:
            cached = (key, MetadataStore.from_records([meta.get(i) for i in ids]))
            owner._filter_store = cached
        mask &= cached[1].mask(expr, len(ids))
    if id_filter is not None:
        by_id = np.zeros(len(ids), dtype=bool)
        by_id[[label[i] for i in id_filter if i in label]] = True
        mask &= by_id
    return np.flatnonzero(mask).astype(np.int64)
