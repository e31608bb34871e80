"""FLMR-style API for custom collections: ``index_collection`` / ``LateCollection.search``.

    >>> model = LateInteractionEncoder.from_pretrained("path/to/late-model")          # doctest: +SKIP
    >>> index = xmodal.index_collection(model, ["a text", ("a caption", "img.jpg"), "img2.jpg"], "my.idx", nbits=2)
    >>> index.search(["what is shown?", ("which animal is this?", "query.jpg")], k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..indexes.multivector import MultiVectorIndex
from .results import SearchResult

DOCS_FILE = "documents.json"


def _describe(doc: Any) -> dict[str, Any]:
    """What is kept about a document for display and reranking: its text and/or image path."""
    if isinstance(doc, str):
        return {"text": doc}
    if isinstance(doc, tuple):
        text, image = doc
        return {k: v for k, v in (("text", text), ("path", str(image) if image is not None else None)) if v is not None}
    return {"path": str(doc)} if isinstance(doc, (str, Path)) else {}


class LateCollection:
    """A late-interaction index plus the model that made it."""

    def __init__(self, model: Any, index: MultiVectorIndex, path: Path | None = None) -> None:
        self.model, self.index, self.path = model, index, path

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: Sequence[Any] | Any, k: int = 10) -> list[SearchResult]:
        """Queries are texts, images, or ``(text, image)`` pairs; one ``SearchResult`` each."""
        if isinstance(queries, (str, tuple)) or not isinstance(queries, (list,)):
            queries = [queries]
        vecs = self.model.encode_items(queries)
        scores, ids = self.index.search(vecs, k)
        out = []
        for s, i in zip(scores, ids):
            keep = [j for j, x in enumerate(i) if x is not None]
            out.append(SearchResult([i[j] for j in keep], [float(s[j]) for j in keep], stage="late-interaction",
                                    metadata=[self.index.metadata(i[j]) for j in keep]))
        return out


def index_collection(model: Any, docs: Sequence[Any], path: str | Path | None = None, nbits: int | None = 2,
                     ids: Sequence[str] | None = None, batch_size: int = 64, show_progress: bool = True,
                     **index_options: Any) -> LateCollection:
    """Encode ``docs`` (strings, images, or (text, image) tuples) into a compressed multi-vector index.

    ids default to ``"0".."n-1"``; the index (with each document's text/path as metadata) is saved to
    ``path`` when given.
    """
    ids = [str(i) for i in (ids if ids is not None else range(len(docs)))]
    index = MultiVectorIndex(model.embedding_dim, nbits=nbits, model_id=model.model_id, **index_options)
    vecs: list[np.ndarray] = []
    encode = getattr(model, "encode_docs", model.encode_items)  # FLMR encodes passages with its context tower
    for s in tqdm(range(0, len(docs), batch_size), desc="encoding documents", disable=not show_progress):
        vecs += encode(list(docs[s:s + batch_size]))
    index.add(ids, vecs, metadata=[_describe(d) for d in docs])
    if path is not None:
        index.save(path)
        (Path(path) / DOCS_FILE).write_text(json.dumps({"model": model.model_id}))
    return LateCollection(model, index, Path(path) if path else None)
