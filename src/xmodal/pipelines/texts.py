"""``index_texts``: what ``xmodal index-texts`` does, as a library call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..collection import BuildReport, build_text_collection
from ..indexes.registry import default_engine, get_engine
from .index import recorded_model


def index_texts(file: str | Path, out: str | Path, model: Any = None, *, engine: str | None = None,
                kind: str | None = None, id_field: str = "id", text_field: str = "text",
                text_fields: Sequence[str] | None = None, batch_size: int = 64, show_progress: bool = True,
                allow_model_mismatch: bool = False, **index_options: Any) -> BuildReport:
    """Index a collection of texts (JSONL/CSV/TSV/TXT, see ``xmodal.data.records``) into the folder ``out``.

    Items are the texts, encoded with the model's text tower: search them by image (image -> text) or by
    text, densely and (over ``text_fields``, default the text) by BM25 (``mode="lexical"|"hybrid"``).
    Re-running on a changed file encodes only new/changed records and drops those gone.

    Args:
        model: a model name/folder or a loaded encoder; default: the model recorded in an existing ``out``.
        id_field / text_field: the columns (JSON keys) holding each record's id and text; records without
            the id field are numbered by line. Every other field is kept as the item's metadata.
        text_fields: fields joined into the BM25 text (e.g. ``["text", "title"]``).
        engine / kind: index engine (default faiss) and its kind (flat, hnsw, ivfpq).
    """
    spec = get_engine(engine or default_engine())
    if model is None:
        model = recorded_model(out)
    options = {**spec.pick_options(kind=kind), **index_options}
    return build_text_collection(file, model, out, engine=spec.name, id_field=id_field, text_field=text_field,
                                 text_fields=text_fields, batch_size=batch_size, show_progress=show_progress,
                                 allow_model_mismatch=allow_model_mismatch, **options)
