"""``xmodal index-texts``: parse arguments, call ``pipelines.index_texts``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .search_cmds import split_fields


def index_texts(
    file: Path = typer.Argument(..., help="Texts: JSONL/CSV/TSV (id, text and any metadata fields) or TXT (one per line)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create or update."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model (hub id, open_clip:ARCH/TAG or folder); default: the one recorded in --out."),
    id_field: str = typer.Option("id", "--id-field", help="Field holding each record's id (absent: line number)."),
    text_field: str = typer.Option("text", "--text-field", help="Field holding each record's text."),
    text_fields: Optional[str] = typer.Option(
        None, "--text-fields", help="Comma-separated fields indexed with BM25 (default: the text), e.g. text,title."),
    engine: Optional[str] = typer.Option(None, help="Index engine: faiss (default), late-interaction or milvus."),
    kind: Optional[str] = typer.Option(None, help="FAISS/Milvus index kind: flat (default), hnsw or ivfpq."),
    batch_size: int = typer.Option(64, help="Texts per encoder batch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    allow_model_mismatch: bool = typer.Option(
        False, "--allow-model-mismatch",
        help="Update the index although the model's weights differ from those it was built with (same id)."),
) -> None:
    """Index a collection of texts, to search it by image (image -> text) or text, dense/lexical/hybrid."""
    from ..pipelines import index_texts as run_index_texts

    report = run_index_texts(file, out, model, engine=engine, kind=kind, id_field=id_field, text_field=text_field,
                             text_fields=split_fields(text_fields), batch_size=batch_size, show_progress=not quiet,
                             allow_model_mismatch=allow_model_mismatch)
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    app.command("index-texts")(index_texts)
