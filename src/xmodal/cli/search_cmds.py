"""``xmodal index`` and ``xmodal search``: parse arguments, call ``pipelines.index_folder`` / ``index_from_embeddings`` / ``search``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError


def index(
    image_dir: Optional[Path] = typer.Argument(None, help="Folder of images (searched recursively). Omit with --from-embeddings."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create or update."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Hub id (openai/clip-vit-base-patch32), open_clip:ARCH/TAG or a local folder. "
             "Defaults to the model recorded in an existing index."),
    from_embeddings: Optional[Path] = typer.Option(
        None, "--from-embeddings",
        help="Build from embedding shards of `xmodal encode` (no re-encoding, streaming) instead of an image folder."),
    engine: Optional[str] = typer.Option(
        None, help="Index engine: faiss (embedded default), late-interaction (multi-vector, PLAID-style) or milvus. "
                   "With --from-embeddings the default follows the shards (multi-vector -> late-interaction)."),
    milvus_uri: Optional[str] = typer.Option(
        None, help="milvus: server/cluster URI, e.g. http://milvus:19530 (token: MILVUS_TOKEN); default: Milvus Lite file inside --out."),
    milvus_collection: str = typer.Option("xmodal", help="milvus: collection name."),
    kind: Optional[str] = typer.Option(
        None, help="FAISS/Milvus index kind: flat (exact), hnsw or ivfpq; with --from-embeddings also auto "
                   "(default there: chosen from count and --memory-budget-mb). Default for folders: flat."),
    memory_budget_mb: float = typer.Option(4096, help="--from-embeddings: memory the index may use; picks flat / HNSW / IVF-PQ (or late-interaction bits)."),
    nbits: Optional[int] = typer.Option(None, help="late-interaction: residual bits per dimension (1, 2, 4, 8; 0 = uncompressed). Default 2 (from the budget with --from-embeddings)."),
    overwrite: bool = typer.Option(False, help="--from-embeddings: replace an index already at --out."),
    target_recall: Optional[float] = typer.Option(
        None, help="FAISS hnsw/ivfpq: tune efSearch/nprobe/refine to the smallest setting whose recall@10 against exact "
                   "search (on a sample of the collection's own vectors) reaches this; saved and printed. "
                   "Default 0.95 for ANN kinds; 0 skips tuning."),
    quantize: Optional[str] = typer.Option(
        None, help="FAISS flat: store none (float32, default), fp16, int8 (per-dimension calibrated ranges) or binary "
                   "(sign bits) codes; fixed when the index is created."),
    rescore: Optional[str] = typer.Option(
        None, help="--quantize: re-score the top candidates against an fp16 or int8 copy (memory-mapped from the "
                   "index file): auto (int8 -> fp16, binary -> int8, fp16 -> none), none, fp16 or int8."),
    refine: Optional[str] = typer.Option(
        None, help="FAISS ivfpq: codes that re-score its candidates: sq8 (default, 1 B/dim), fp16 (2 B/dim; for tightly "
                   "clustered embeddings, when tuning says sq8 misses the target recall), flat (4 B/dim) or none."),
    batch_size: int = typer.Option(32, help="Images per encoder batch."),
    chunk_size: int = typer.Option(256, help="Images between two saves of resume state."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", help="torch or onnx: encode with onnxruntime (an ONNX export of the model, made once into "
                                "~/.cache/xmodal/onnx when the model is not one); default: as the model is."),
    allow_model_mismatch: bool = typer.Option(
        False, "--allow-model-mismatch",
        help="Update the index although the model's weights differ from those it was built with (same id)."),
    texts: Optional[Path] = typer.Option(
        None, "--texts",
        help="Captions/titles of the images for lexical (BM25) search: JSONL/CSV/TSV keyed by relative path "
             "(a 'path' or 'id' column). Recorded: later runs re-read it."),
    text_fields: Optional[str] = typer.Option(
        None, "--text-fields", help="Comma-separated fields to index with BM25, e.g. caption,title: fields of --texts or of the "
                                    "items' metadata (default with --texts: every text field of it). Recorded."),
    metadata: Optional[Path] = typer.Option(
        None, "--metadata",
        help="CSV/TSV/JSONL of per-image fields keyed by the path relative to IMAGE_DIR (column path/file/filename/"
             "image/id), for search --where; read again by later updates. JSON sidecars (photo.jpg.json) and file "
             "facts (size, mtime, width, height, EXIF date) are always recorded."),
) -> None:
    """Index a folder of images (re-runs encode only new/changed files and drop deleted ones), or embedding shards."""
    if (image_dir is None) == (from_embeddings is None):
        raise InvalidInputError("give either an IMAGE_DIR or --from-embeddings EMB_DIR (one of the two).")
    if from_embeddings is not None:
        build_index_from_embeddings(from_embeddings, out, engine=engine, kind=kind or "auto",
                                    memory_budget_mb=memory_budget_mb, nbits=nbits, milvus_uri=milvus_uri,
                                    milvus_collection=milvus_collection, overwrite=overwrite, target_recall=target_recall,
                                    refine=refine)
        return
    from ..pipelines import index_folder

    ann = kind in ("hnsw", "ivfpq")  # flat is exact; an existing index keeps the target saved in its manifest
    report = index_folder(image_dir, out, model, engine=engine, kind=kind, nbits=nbits, uri=milvus_uri,
                          collection=milvus_collection, batch_size=batch_size, chunk_size=chunk_size,
                          show_progress=not quiet, allow_model_mismatch=allow_model_mismatch, quantize=quantize,
                          rescore=rescore, runtime=runtime, refine=refine,
                          target_recall=None if not ann else 0.95 if target_recall is None else (target_recall or None),
                          texts=texts, text_fields=split_fields(text_fields), metadata=metadata)
    typer.echo(report.summary())
    if report.search_settings:
        typer.echo(f"search settings: {report.search_settings}")
    if report.failed:
        typer.echo(f"skipped {len(report.failed)} unreadable files:", err=True)
        for rel, reason in report.failed:
            typer.echo(f"  {rel}: {reason}", err=True)


def split_fields(value: Optional[str]) -> Optional[list[str]]:
    """``"caption, title"`` -> ``["caption", "title"]`` (None stays None)."""
    if value is None:
        return None
    fields = [f.strip() for f in value.split(",") if f.strip()]
    if not fields:
        raise InvalidInputError("--text-fields is empty; name fields like caption,title.")
    return fields


def build_index_from_embeddings(emb_dir: Path, out: Path, engine: Optional[str], kind: str, memory_budget_mb: float,
                                nbits: Optional[int] = None, milvus_uri: Optional[str] = None,
                                milvus_collection: str = "xmodal", overwrite: bool = False,
                                target_recall: Optional[float] = None, refine: Optional[str] = None) -> None:
    """Shared by `xmodal index --from-embeddings` and `xmodal index-embeddings`: build, then print the choice."""
    from ..pipelines import index_from_embeddings

    built = index_from_embeddings(emb_dir, out, engine=engine, kind=kind, memory_budget_mb=memory_budget_mb,
                                  nbits=nbits, uri=milvus_uri, collection=milvus_collection, overwrite=overwrite,
                                  target_recall=0.95 if target_recall is None else (target_recall or None), refine=refine)
    typer.echo(built.summary(out))
    if built.collection:
        typer.echo(f"ids are image paths: `xmodal search {out} ...` works, and `xmodal index IMAGE_DIR --out {out}` "
                   "updates it incrementally.")
    close = getattr(built.index, "close", None)
    if close is not None:
        close()


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
    runtime: Optional[str] = typer.Option(
        None, "--runtime", help="torch or onnx: encode with onnxruntime (an ONNX export of the model, made once into "
                                "~/.cache/xmodal/onnx when the model is not one); default: as the model is."),
    allow_model_mismatch: bool = typer.Option(
        False, "--allow-model-mismatch",
        help="Search although the model's weights differ from those the index was built with (same id)."),
    mode: str = typer.Option(
        "dense", "--mode", help="dense (vectors), lexical (BM25 over the items' texts) or hybrid (both, fused). "
                                "lexical/hybrid need a text query and an index built with texts."),
    fusion: str = typer.Option("rrf", "--fusion", help="hybrid: rrf (reciprocal rank) or weighted (normalised scores)."),
    alpha: float = typer.Option(0.5, "--alpha", help="hybrid: the dense share of the fused score, 0..1."),
    where: Optional[str] = typer.Option(
        None, "--where", "-w",
        help='Metadata filter, e.g. \'camera = "X100" and year >= 2020 and not tags in ["private"]\' (docs/filters.md).'),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many results first (paging)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop results scoring below this."),
    dedup: Optional[float] = typer.Option(
        None, "--dedup", help="Drop near-duplicates: results with cosine similarity >= this (e.g. 0.98) to a better one."),
) -> None:
    """Search an index by text and/or image; prints rank, score, id and path (or text, for a text collection)."""
    from ..pipelines import search as run_search

    hits = run_search(index_dir, query, image, k=k, model=model, rerank=rerank, depth=depth, gallery=gallery,
                      allow_model_mismatch=allow_model_mismatch, runtime=runtime, mode=mode, fusion=fusion, alpha=alpha, where=where,
                      offset=offset, min_score=min_score, dedup=dedup)
    if as_json:
        typer.echo(json.dumps(hits.to_dict()))
        return
    result = hits.result
    typer.echo(f"{len(result)} results ({result.stage}) for "
               + (f"'{query}'" if query else "") + (f" image {image}" if image else ""))
    if hits.search_settings is not None:
        typer.echo(f"index {hits.search_settings}")
    for row in hits.rows():
        typer.echo(row)


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("search")(search)
