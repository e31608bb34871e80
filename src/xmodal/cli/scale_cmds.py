"""``xmodal encode`` (local or Ray) and ``xmodal index-embeddings`` (an index from embedding shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def encode(
    input: str = typer.Option(..., "--input", "-i", help="webdataset shards ('shards-*.tar'), an image folder, or a CSV with an 'image' column."),
    model: str = typer.Option(..., "--model", "-m"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <shard>.parquet embedding shards and _report.json."),
    executor: str = typer.Option("local", "--executor", "--engine",
                                 help="local (one process) or ray (actor pool: one per GPU, else CPU actors). "
                                      "--engine is the old, deprecated name of this option."),
    batch_size: int = typer.Option(64),
    images_per_shard: int = typer.Option(1000, help="For folders/CSVs: images per output shard."),
    actors: Optional[int] = typer.Option(None, help="Ray CPU actors (default: CPUs)."),
    retries: int = typer.Option(1, help="Retries of a failed shard before it is reported."),
    late_interaction: bool = typer.Option(False, "--late-interaction", help="Write multi-vector shards (patch vectors per image) for a late-interaction index."),
    decode_workers: int = typer.Option(0, help="Threads decoding images ahead of the encoder, per process/actor (GPU: 4-8)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (e.g. ray://head:10001 or auto); default: a local Ray."),
) -> None:
    """Encode a collection into embedding shards; finished shards are skipped on re-runs."""
    from ..pipelines import encode as run_encode

    report = run_encode(input, model, out, executor=executor, ray_address=ray_address, batch_size=batch_size,
                        images_per_shard=images_per_shard, max_retries=retries, num_actors=actors,
                        late_interaction=late_interaction, decode_workers=decode_workers)
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
    engine: Optional[str] = typer.Option(None, help="faiss, milvus or late-interaction (default: from the shards)."),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus: cluster URI (default: Milvus Lite file inside --out)."),
    milvus_collection: str = typer.Option("xmodal", help="milvus: collection name."),
    nbits: Optional[int] = typer.Option(None, help="late-interaction: residual bits (default from the budget; 0 = uncompressed)."),
    overwrite: bool = typer.Option(False, help="Replace an index already at --out."),
    target_recall: Optional[float] = typer.Option(None, help="FAISS hnsw/ivfpq: recall@10 to tune the search settings to (default 0.95; 0 skips)."),
    refine: Optional[str] = typer.Option(None, help="FAISS --kind ivfpq: re-scoring codes sq8, fp16, flat or none (default: as the budget allows)."),
) -> None:
    """Build an index from embedding shards without re-encoding (streaming); same as `xmodal index --from-embeddings`."""
    from .search_cmds import build_index_from_embeddings

    build_index_from_embeddings(emb_dir, out, engine=engine, kind=kind, memory_budget_mb=memory_budget_mb, nbits=nbits,
                                milvus_uri=milvus_uri, milvus_collection=milvus_collection, overwrite=overwrite,
                                target_recall=target_recall, refine=refine)


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
    app.command("index-embeddings")(index_embeddings)
