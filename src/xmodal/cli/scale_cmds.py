"""``xmodal encode`` (local or Ray) and ``xmodal index-embeddings`` (an index from embedding shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def encode(
    input: str = typer.Option(..., "--input", "-i", help="webdataset shards ('shards-*.tar'), an image folder, or a CSV with an 'image' column."),
    model: str = typer.Option(..., "--model", "-m"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <shard>.parquet embedding shards and _report.json."),
    engine: str = typer.Option("local", help="local (one process) or ray (actor pool: one per GPU, else CPU actors)"),
    batch_size: int = typer.Option(64),
    images_per_shard: int = typer.Option(1000, help="For folders/CSVs: images per output shard."),
    actors: Optional[int] = typer.Option(None, help="Ray CPU actors (default: CPUs)."),
    retries: int = typer.Option(1, help="Retries of a failed shard before it is reported."),
) -> None:
    """Encode a collection into embedding shards; finished shards are skipped on re-runs."""
    from ..distributed import encode_collection

    report = encode_collection(input, model, out, engine=engine, batch_size=batch_size,
                               images_per_shard=images_per_shard, max_retries=retries, num_actors=actors)
    typer.echo(report.summary())
    for f in report.shards_failed:
        typer.echo(f"  failed shard {f['shard']}: {f['error']}", err=True)
    for f in report.images_failed[:20]:
        typer.echo(f"  unreadable {f['shard']}/{f['id']}: {f['error']}", err=True)


def index_embeddings(
    emb_dir: Path = typer.Argument(..., help="Folder of embedding shards from `xmodal encode`."),
    out: Path = typer.Option(..., "--out", "-o"),
    memory_budget_mb: float = typer.Option(4096, help="Memory the index may use; picks flat / HNSW / IVF-PQ."),
    kind: str = typer.Option("auto", help="auto, flat, hnsw or ivfpq"),
) -> None:
    """Build a FAISS index from embedding shards without re-encoding (streaming)."""
    from ..indexes.autoindex import build_from_embeddings

    index, choice = build_from_embeddings(emb_dir, out, memory_budget_mb=memory_budget_mb, kind=kind)
    typer.echo(f"index '{out}': {len(index)} vectors, kind={choice.kind} {choice.params or ''} ({choice.reason})")


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
    app.command("index-embeddings")(index_embeddings)
