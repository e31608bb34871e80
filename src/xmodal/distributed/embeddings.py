"""Embedding shards (``*.parquet`` from ``xmodal encode``) -> an index: inspect the folder, stream it into any engine.

The shard format belongs to this package (``encode.py`` writes it); which index to build and how
belongs to ``xmodal.indexes`` (the engine table's ``from_shards`` builders). Making the result a
searchable image collection (``collection.json``) is done one layer up, by
``xmodal.pipelines.index_from_embeddings``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..indexes.autoindex import IndexChoice
from ..indexes.manifest import MANIFEST_NAME, check_index_target
from ..indexes.registry import default_engine, get_engine, resolve
from .encode import REPORT, embedding_files, iter_embedding_shards, shard_metadata


@dataclass
class EmbeddingsInfo:
    """What a folder of embedding shards holds (read from Parquet footers and ``_report.json``)."""

    files: list[Path]
    count: int
    dim: int
    multi_vector: bool
    tokens: int  # vectors in all (= count for single-vector shards)
    model: str | None = None  # a loadable name or folder, when known
    model_id: str | None = None
    root: str | None = None  # the image root ids are relative to (folder/CSV sources)
    failed: list[str] = field(default_factory=list)  # ids of unreadable images (from the shards' metadata)


def inspect_embeddings(emb_dir: str | Path) -> EmbeddingsInfo:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = embedding_files(emb_dir)
    typ = pq.read_schema(files[0]).field("embedding").type
    if pa.types.is_fixed_size_list(typ):
        multi, dim = False, typ.list_size
    elif pa.types.is_list(typ) and pa.types.is_fixed_size_list(typ.value_type):
        multi, dim = True, typ.value_type.list_size
    else:
        raise InvalidInputError(f"'{files[0]}': the 'embedding' column has type {typ}, not (lists of) float vectors.")
    count = tokens = 0
    model_ids = set()
    failed: list[str] = []
    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        meta = shard_metadata(f)
        if meta and (bool(meta.get("multi_vector")) != multi or int(meta.get("dim", dim)) != dim):
            raise InvalidInputError(f"'{f}' does not match the other shards (dimension / multi-vector); "
                                    "one folder must hold the embeddings of one model.")
        if meta.get("model_id"):
            model_ids.add(meta["model_id"])
        failed += meta.get("failed", [])
        count += n
        if multi:
            tokens += int(meta["vectors"]) if "vectors" in meta else sum(
                len(x) for x in pq.read_table(f, columns=["embedding"]).column("embedding").to_pylist())
        else:
            tokens += n
    if len(model_ids) > 1:
        raise InvalidInputError(f"'{emb_dir}' mixes embeddings of several models: {sorted(model_ids)}.")
    report_path = Path(emb_dir) / REPORT
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return EmbeddingsInfo(files=files, count=count, dim=dim, multi_vector=multi, tokens=tokens,
                          model=report.get("model"), model_id=next(iter(model_ids), None) or report.get("model_id"),
                          root=report.get("root"), failed=failed)


def build_from_embeddings(emb_dir: str | Path, out: str | Path, model_id: str | None = None,
                          memory_budget_mb: float = 4096, kind: str = "auto", train_sample: int | None = None,
                          engine: str | None = None, uri: str | None = None, collection: str = "xmodal",
                          nbits: int | None = None, overwrite: bool = False,
                          info: EmbeddingsInfo | None = None, target_recall: float | None = 0.95,
                          refine: str | None = None) -> tuple[Any, IndexChoice]:
    """Stream ``*.parquet`` shards from ``xmodal encode`` into an index saved at ``out``; returns it and the choice.

    Args:
        engine: an engine of ``xmodal.indexes.registry`` that can be built from shards (faiss, milvus,
            late-interaction); default: late-interaction for multi-vector shards, faiss otherwise.
        kind: ``auto`` (from count and ``memory_budget_mb``), or ``flat``/``hnsw``/``ivfpq``
            (faiss, milvus); for late interaction, ``flat`` means uncompressed exact MaxSim.
        train_sample: vectors sampled across all shards to train IVF-PQ (default: 200,000, at least 39 per
            IVF list) or, for late interaction, token vectors to train the centroids (default 200,000).
        uri / collection: milvus; default a Milvus Lite file inside ``out``; ``http://host:19530`` for a cluster.
        nbits: late interaction residual bits (1, 2, 4, 8; 0 = uncompressed); default from the budget.
        overwrite: replace an index already at ``out`` (else refused).
        info: the folder's ``inspect_embeddings`` result, when the caller has it already.
        target_recall: FAISS HNSW/IVF-PQ: tune the search settings to this recall@10 against exact search
            over the shards (saved in the manifest); None skips tuning.
        refine: FAISS ``kind="ivfpq"``: the codes that re-score its candidates (``sq8``, ``fp16``, ``flat`` or
            ``none``; default: what the memory budget allows).

    Only the index is written; ``xmodal.index_from_embeddings`` also makes ``out`` a collection
    (search by image path, incremental updates) when the shards come from an image folder or CSV.
    """
    emb_dir, out = Path(emb_dir), Path(out)
    info = info or inspect_embeddings(emb_dir)
    spec = get_engine(engine or default_engine(info.multi_vector))
    if info.multi_vector != spec.multi_vector:
        raise InvalidInputError(
            f"'{emb_dir}' holds {'multi' if info.multi_vector else 'single'}-vector embeddings; "
            + (f"they need --engine {default_engine(True)} (Milvus Lite has no multi-vector MaxSim)." if info.multi_vector
               else f"engine '{spec.name}' needs multi-vector shards (`xmodal encode --late-interaction`)."))
    if spec.from_shards is None:
        raise InvalidInputError(f"index engine '{spec.name}' cannot be built from embedding shards; "
                                "index the image folder with `xmodal index IMAGE_DIR --engine ...` instead.")
    check_index_target(out)  # never write into a folder of the user's that is not an index (#19 item 2)
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise InvalidInputError(f"'{out}' already holds an index; pass overwrite=True (--overwrite) to replace it, "
                                "or `xmodal index FOLDER --out` to update it incrementally.")
    index, choice = resolve(spec.from_shards)(
        lambda: iter_embedding_shards(emb_dir), info, out, kind=kind, memory_budget_bytes=int(memory_budget_mb * 2**20),
        model_id=model_id or info.model_id, train_sample=train_sample, overwrite=overwrite,
        **spec.pick_options(uri=uri, collection=collection, nbits=nbits, target_recall=target_recall, refine=refine))
    index.save(out)
    return index, choice
