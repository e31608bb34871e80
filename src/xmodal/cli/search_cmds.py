"""``xmodal index``, ``xmodal search`` and ``xmodal demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError


def index(
    image_dir: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create or update."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Hub id (openai/clip-vit-base-patch32), open_clip:ARCH/TAG or a local folder. "
             "Defaults to the model recorded in an existing index."),
    engine: str = typer.Option("faiss", help="Index engine: faiss (embedded default), late-interaction (multi-vector, PLAID-style) or milvus."),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus: cluster URI (default: Milvus Lite file inside --out)."),
    kind: str = typer.Option("flat", help="FAISS index kind: flat (exact), hnsw or ivfpq."),
    nbits: int = typer.Option(2, help="late-interaction: residual bits per dimension (1, 2, 4, 8; 0 = uncompressed)."),
    batch_size: int = typer.Option(32, help="Images per encoder batch."),
    chunk_size: int = typer.Option(256, help="Images between two saves of resume state."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index a folder of images; re-running encodes only new/changed files and drops deleted ones."""
    from ..collection import COLLECTION_FILE, build_collection, open_collection

    if model is None:
        if not (out / COLLECTION_FILE).exists():
            raise InvalidInputError("no --model given and no existing index to take it from; pass --model.")
        model = json.loads((out / COLLECTION_FILE).read_text()).get("model")
    options: dict = {"kind": kind} if engine == "faiss" else {}
    if engine == "late-interaction":
        options = {"nbits": nbits or None}
    if engine == "milvus" and milvus_uri:
        options = {"uri": milvus_uri}
    report = build_collection(image_dir, model, out, engine=engine, batch_size=batch_size, chunk_size=chunk_size,
                              show_progress=not quiet, **options)
    typer.echo(report.summary())
    if report.failed:
        typer.echo(f"skipped {len(report.failed)} unreadable files:", err=True)
        for rel, reason in report.failed:
            typer.echo(f"  {rel}: {reason}", err=True)


def search(
    index_dir: Path = typer.Argument(..., help="Index folder made by `xmodal index`."),
    query: Optional[str] = typer.Argument(None, help="Text query."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="Query by this image (alone or with text)."),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Override the model recorded in the index."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder to rerank with (hub id or folder)."),
    depth: int = typer.Option(50, "--depth", help="Candidates retrieved for reranking."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    gallery: Optional[Path] = typer.Option(None, "--gallery", help="Also save the results as a PNG contact sheet."),
) -> None:
    """Search an index by text and/or image; prints rank, score, id and path."""
    from ..collection import open_collection

    if query is not None and not query.strip():
        raise InvalidInputError("the query is empty; give some text or --image.")
    if query is None and image is None:
        raise InvalidInputError("give a text query or --image PATH.")
    if k < 1:
        raise InvalidInputError(f"-k must be >= 1; got {k}.")
    collection = open_collection(index_dir)
    reranker = None
    if rerank:
        from ..models.cross import load_reranker

        reranker = load_reranker(rerank)
    retriever = collection.retriever(model=model, reranker=reranker, depth=depth)
    result = retriever.search(text=query, image=image, k=k)
    paths = [str(collection.image_path(i)) for i in result.ids]
    if gallery is not None:
        from ..visualize import save_gallery

        label = " + ".join(x for x in (query and f"'{query}'", image and f"image {Path(image).name}") if x)
        save_gallery([(label, paths, result.scores)], gallery)
    if as_json:
        payload = result.to_dict()
        payload["paths"] = paths
        payload.pop("metadata", None)
        typer.echo(json.dumps(payload))
        return
    typer.echo(f"{len(result)} results ({result.stage}) for "
               + (f"'{query}'" if query else "") + (f" image {image}" if image else ""))
    for rank, (i, s, p) in enumerate(zip(result.ids, result.scores, paths), start=1):
        typer.echo(f"{rank:>3}  {s:+.4f}  {i}  {p}")


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("search")(search)
