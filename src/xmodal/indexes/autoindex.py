"""Build an index from embedding shards without re-encoding, choosing its type from size and memory (autofaiss-style)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError


@dataclass
class IndexChoice:
    kind: str
    params: dict[str, Any]
    reason: str
    estimated_bytes: int


def choose_index(n: int, dim: int, memory_budget_bytes: int, exact_up_to: int = 100_000) -> IndexChoice:
    """Flat (exact) while small; HNSW when float vectors + graph fit the budget; else IVF-PQ sized to fit."""
    flat = n * dim * 4
    hnsw_m = 32
    hnsw = flat + n * hnsw_m * 2 * 4
    if n <= exact_up_to and flat <= memory_budget_bytes:
        return IndexChoice("flat", {}, f"{n:,} vectors <= {exact_up_to:,}: exact search is fast enough and lossless", flat)
    if hnsw <= memory_budget_bytes:
        return IndexChoice("hnsw", {"hnsw_m": hnsw_m}, f"float vectors + HNSW graph ({hnsw / 2**20:.0f} MiB) fit the "
                           f"{memory_budget_bytes / 2**20:.0f} MiB budget", hnsw)
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
    for pq_m in sorted({d for d in range(1, dim + 1) if dim % d == 0}, reverse=True):
        for refine in ("sq8", None):
            est = n * (pq_m + 8) + (n * dim if refine else 0) + nlist * dim * 4
            if est <= memory_budget_bytes:
                return IndexChoice("ivfpq", {"nlist": nlist, "pq_m": pq_m, "refine": refine},
                                   f"float vectors ({flat / 2**20:.0f} MiB) exceed the {memory_budget_bytes / 2**20:.0f} MiB "
                                   f"budget: IVF{nlist},PQ{pq_m}{'+SQ8 refine' if refine else ''} uses ~{est / 2**20:.0f} MiB", est)
    raise InvalidInputError(f"{n:,} x {dim} vectors cannot fit {memory_budget_bytes / 2**20:.0f} MiB even as IVF-PQ; raise the budget.")


def build_from_embeddings(emb_dir: str | Path, out: str | Path, model_id: str | None = None,
                          memory_budget_mb: float = 4096, kind: str = "auto", train_sample: int = 200_000) -> tuple[Any, IndexChoice]:
    """Stream ``*.parquet`` shards from ``xmodal encode`` into a FAISS index saved at ``out``."""
    from ..distributed.encode import read_embedding_shards
    from .faiss_index import FaissIndex

    import pyarrow.parquet as pq

    files = sorted(Path(emb_dir).glob("*.parquet"))
    if not files:
        raise InvalidInputError(f"no embedding shards (*.parquet) in '{emb_dir}'. Run `xmodal encode` first.")
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    dim = pq.read_schema(files[0]).field("embedding").type.list_size
    choice = choose_index(n, dim, int(memory_budget_mb * 2**20)) if kind == "auto" else IndexChoice(kind, {}, "chosen by the user", 0)
    if model_id is None:
        import json

        report = Path(emb_dir) / "_report.json"
        model_id = json.loads(report.read_text()).get("model") if report.exists() else None
    index = FaissIndex(dim, kind=choice.kind, model_id=model_id, **choice.params)
    if choice.kind == "ivfpq":  # train on a sample gathered from the first shards, then stream everything
        sample, got = [], 0
        for _, vecs in read_embedding_shards(emb_dir):
            sample.append(vecs)
            got += len(vecs)
            if got >= train_sample:
                break
        index.train(np.concatenate(sample)[:train_sample])
    for ids, vecs in read_embedding_shards(emb_dir):
        index.add(ids, vecs)
    index.save(out)
    return index, choice
