"""Build an index from embedding shards without re-encoding, choosing its type from size and memory (autofaiss-style).

``build_from_embeddings(EMB_DIR, OUT, engine=...)`` streams the ``*.parquet`` shards written by
``xmodal encode`` (``xmodal.distributed.encode``) into any xmodal backend, one shard in memory at a time:

- ``faiss``: flat while small, HNSW while float vectors + graph fit the memory budget, else IVF-PQ
  (trained on a sample drawn from every shard, then filled shard by shard);
- ``milvus``: the same choice mapped to a Milvus index (FLAT / HNSW / IVF_PQ; IVF_SQ8 on Milvus Lite,
  which has no IVF_PQ), filled by streaming inserts;
- ``late-interaction`` (multi-vector shards): a ``MultiVectorIndex`` whose residual bits are chosen
  from the budget; its centroids are trained on a sample of documents drawn from every shard (the
  first ``add``), then the remaining documents are added shard by shard.

The choice and its reason are returned (``IndexChoice``) and printed by the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

ENGINES = ("faiss", "milvus", "late-interaction")


@dataclass
class IndexChoice:
    kind: str
    params: dict[str, Any]
    reason: str
    estimated_bytes: int

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        size = (f"~{self.estimated_bytes / 2**20:,.0f} MiB: " if self.estimated_bytes >= 2**20
                else f"~{self.estimated_bytes / 2**10:,.1f} KiB: " if self.estimated_bytes else "")
        return f"{self.kind}{' ' + params if params else ''} ({size}{self.reason})"


def choose_index(n: int, dim: int, memory_budget_bytes: int, exact_up_to: int = 100_000) -> IndexChoice:
    """Flat (exact) while small; HNSW when float vectors + graph fit the budget; else IVF-PQ sized to fit.

    Estimates: flat ``4 d`` bytes/vector; HNSW adds ``2 M`` int32 links (M=32: 256 bytes); IVF-PQ
    ``pq_m`` code bytes + 8 (id) per vector, + ``d`` with the SQ8 refine, + the float32 centroids.
    """
    flat = n * dim * 4
    hnsw_m = 32
    hnsw = flat + n * hnsw_m * 2 * 4
    if n <= exact_up_to and flat <= memory_budget_bytes:
        return IndexChoice("flat", {}, f"{n:,} vectors <= {exact_up_to:,}: exact search is fast enough and lossless", flat)
    if hnsw <= memory_budget_bytes:
        return IndexChoice("hnsw", {"hnsw_m": hnsw_m}, f"float vectors + HNSW graph ({hnsw / 2**20:.0f} MiB) fit the "
                           f"{memory_budget_bytes / 2**20:.0f} MiB budget", hnsw)
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
    # PQ sub-vectors of >= 4 dimensions (finer codes cost memory and add little next to an SQ8 refine);
    # the most code bytes that fit, with an SQ8 refine (1 byte/dim) when it fits too.
    for pq_m in sorted({d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0}, reverse=True):
        for refine in ("sq8", None):
            est = n * (pq_m + 8) + (n * dim if refine else 0) + nlist * dim * 4
            if est <= memory_budget_bytes:
                return IndexChoice("ivfpq", {"nlist": nlist, "pq_m": pq_m, "refine": refine},
                                   f"float vectors ({flat / 2**20:.0f} MiB) exceed the {memory_budget_bytes / 2**20:.0f} MiB "
                                   f"budget: IVF{nlist},PQ{pq_m}{'+SQ8 refine' if refine else ''} uses ~{est / 2**20:.0f} MiB", est)
    raise InvalidInputError(f"{n:,} x {dim} vectors cannot fit {memory_budget_bytes / 2**20:.0f} MiB even as IVF-PQ; raise the budget.")


def choose_multivector(n_docs: int, n_tokens: int, dim: int, memory_budget_bytes: int,
                       nbits: int | None = None) -> IndexChoice:
    """Residual bits for a PLAID-style index: 2 bits/dim (PLAID's default) when it fits, else 1.

    Bytes per token = centroid id (2 bytes up to 65,536 centroids) + ``dim * nbits / 8`` residual
    bytes; plus the float32 centroids and 8 bytes per document (its length). ``nbits=0`` asks for
    the uncompressed, exact index (float32 tokens).
    """
    k = int(2 ** np.floor(np.log2(max(2.0, 4 * np.sqrt(max(n_tokens, 1))))))
    code = 2 if k <= 65536 else 4
    raw = n_tokens * dim * 4 + n_docs * 8
    if nbits == 0:
        return IndexChoice("late-interaction", {"nbits": None}, "uncompressed float32 tokens (exact MaxSim), as asked", raw)
    for b in ([nbits] if nbits else [2, 1]):
        est = int(n_tokens * (code + dim * b / 8) + k * dim * 4 + n_docs * 8)
        if nbits or est <= memory_budget_bytes:
            why = (f"{n_tokens:,} token vectors ({raw / 2**20:,.0f} MiB as float32) as {k:,} centroids + {b}-bit residuals "
                   f"({code + dim * b / 8:.0f} bytes/token)")
            why += ", as asked" if nbits else f": fits the {memory_budget_bytes / 2**20:,.0f} MiB budget"
            return IndexChoice("late-interaction", {"nbits": b, "n_centroids": k}, why, est)
    raise InvalidInputError(f"{n_tokens:,} token vectors of dimension {dim} cannot fit "
                            f"{memory_budget_bytes / 2**20:,.0f} MiB even at 1 bit per dimension; raise the budget.")


def milvus_index_for(choice: IndexChoice, dim: int, lite: bool) -> tuple[str, dict[str, Any], dict[str, Any], str]:
    """(index_type, build params, search params, note) of the Milvus index matching a FAISS-style choice."""
    if choice.kind == "flat":
        return "FLAT", {}, {}, ""
    if choice.kind == "hnsw":
        return "HNSW", {"M": choice.params.get("hnsw_m", 32), "efConstruction": 200}, {"ef": 128}, ""
    nlist = int(choice.params.get("nlist") or 1024)
    if lite:  # Milvus Lite implements FLAT, HNSW(_SQ), IVF_FLAT and IVF_SQ8, not IVF_PQ
        return "IVF_SQ8", {"nlist": nlist}, {"nprobe": 32}, "Milvus Lite has no IVF_PQ: IVF_SQ8 (1 byte/dim) instead"
    m = int(choice.params.get("pq_m") or max(1, dim // 4))
    return "IVF_PQ", {"nlist": nlist, "m": m, "nbits": 8}, {"nprobe": 32}, ""


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

    from ..distributed.encode import REPORT, embedding_files, shard_metadata

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


def _metadata(ids: list[str], sigs: list[Any] | None) -> list[dict[str, Any]] | None:
    """Per-item metadata: the file path and signature (folder sources), so ``build_collection`` can update it."""
    if sigs is None:
        return None
    return [{"path": i, "signature": list(s)} for i, s in zip(ids, sigs)]


def _sample(emb_dir: Path, n_total: int, target: int, seed: int = 0) -> tuple[list[str], Any, list[dict] | None]:
    """About ``target`` items drawn evenly from every shard (one shard in memory at a time)."""
    from ..distributed.encode import iter_embedding_shards

    rng = np.random.default_rng(seed)
    frac = min(1.0, target / max(n_total, 1))
    ids: list[str] = []
    vecs: list[Any] = []
    metas: list[dict] = []
    has_meta = True
    for s_ids, s_vecs, s_sigs in iter_embedding_shards(emb_dir):
        take = np.flatnonzero(rng.random(len(s_ids)) < frac) if frac < 1 else np.arange(len(s_ids))
        ids += [s_ids[j] for j in take]
        vecs += [s_vecs[j] for j in take]
        m = _metadata(s_ids, s_sigs)
        has_meta = has_meta and m is not None
        metas += [m[j] for j in take] if m is not None else []
    return ids, vecs, (metas if has_meta else None)


def build_from_embeddings(emb_dir: str | Path, out: str | Path, model_id: str | None = None,
                          memory_budget_mb: float = 4096, kind: str = "auto", train_sample: int | None = None,
                          engine: str | None = None, uri: str | None = None, collection: str = "xmodal",
                          nbits: int | None = None, overwrite: bool = False) -> tuple[Any, IndexChoice]:
    """Stream ``*.parquet`` shards from ``xmodal encode`` into an index saved at ``out``; returns it and the choice.

    Args:
        engine: ``faiss``, ``milvus`` or ``late-interaction``; default: late-interaction for
            multi-vector shards, faiss otherwise.
        kind: ``auto`` (from count and ``memory_budget_mb``), or ``flat``/``hnsw``/``ivfpq``
            (faiss, milvus); for late interaction, ``flat`` means uncompressed exact MaxSim.
        train_sample: vectors sampled across all shards to train IVF-PQ (default: 200,000, at least 39 per
            IVF list) or, for late interaction, token vectors to train the centroids (default 200,000).
        uri / collection: milvus; default a Milvus Lite file inside ``out``; ``http://host:19530`` for a cluster.
        nbits: late interaction residual bits (1, 2, 4, 8; 0 = uncompressed); default from the budget.
        overwrite: replace an index already at ``out`` (else refused).

    When the shards come from a folder or CSV (their ids are relative image paths), ``out`` also gets a
    ``collection.json``: ``xmodal search OUT`` works, and ``xmodal index FOLDER --out OUT`` later adds
    and removes only the files that changed.
    """
    from ..collection import COLLECTION_FILE
    from .manifest import MANIFEST_NAME

    emb_dir, out = Path(emb_dir), Path(out)
    info = inspect_embeddings(emb_dir)
    engine = engine or ("late-interaction" if info.multi_vector else "faiss")
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown index engine '{engine}'; choose one of {ENGINES}.")
    if info.multi_vector != (engine == "late-interaction"):
        raise InvalidInputError(
            f"'{emb_dir}' holds {'multi' if info.multi_vector else 'single'}-vector embeddings; "
            + ("they need --engine late-interaction (Milvus Lite has no multi-vector MaxSim)." if info.multi_vector
               else f"engine '{engine}' needs multi-vector shards (`xmodal encode --late-interaction`)."))
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise InvalidInputError(f"'{out}' already holds an index; pass overwrite=True (--overwrite) to replace it, "
                                "or `xmodal index FOLDER --out` to update it incrementally.")
    model_id = model_id or info.model_id
    budget = int(memory_budget_mb * 2**20)
    if engine == "late-interaction":
        choice = choose_multivector(info.count, info.tokens, info.dim, budget,
                                    nbits=0 if kind == "flat" else nbits)
        index = _build_multivector(emb_dir, info, choice, model_id, train_sample or 200_000)
    else:
        if kind == "auto":
            choice = choose_index(info.count, info.dim, budget)
        elif kind in ("flat", "hnsw", "ivfpq"):
            choice = IndexChoice(kind, {}, "chosen by the user", 0)
        else:
            raise InvalidInputError(f"unknown index kind '{kind}'; use auto, flat, hnsw or ivfpq.")
        if engine == "faiss":
            index = _build_faiss(emb_dir, info, choice, model_id, train_sample)
        else:
            index, choice = _build_milvus(emb_dir, info, choice, model_id, out, uri, collection, overwrite)
    index.save(out)
    if not info.root and (out / COLLECTION_FILE).exists():  # an earlier index's image root no longer applies
        (out / COLLECTION_FILE).unlink()
    if info.root:  # ids are image paths: make OUT a collection (search by path, incremental updates)
        from ..collection import _write_json_atomic

        _write_json_atomic(out / COLLECTION_FILE, {"root": info.root, "model": info.model, "engine": index.engine,
                                                   "failed": [[f, "unreadable image (reported by xmodal encode)"] for f in info.failed]})
    return index, choice


def _build_faiss(emb_dir: Path, info: EmbeddingsInfo, choice: IndexChoice, model_id: str | None,
                 train_sample: int | None) -> Any:
    from ..distributed.encode import iter_embedding_shards
    from .faiss_index import FaissIndex

    index = FaissIndex(info.dim, kind=choice.kind, model_id=model_id, **choice.params)
    if choice.kind == "ivfpq":  # train on a sample drawn from every shard, then stream everything
        nlist = choice.params.get("nlist") or int(max(1, min(4 * np.sqrt(info.count), info.count // 39)))
        _, vecs, _ = _sample(emb_dir, info.count, train_sample or max(200_000, 39 * nlist))
        index.train(np.stack(vecs))
    for ids, vecs, sigs in iter_embedding_shards(emb_dir):
        index.add(ids, vecs, metadata=_metadata(ids, sigs))
    return index


def _build_milvus(emb_dir: Path, info: EmbeddingsInfo, choice: IndexChoice, model_id: str | None, out: Path,
                  uri: str | None, collection: str, overwrite: bool) -> tuple[Any, IndexChoice]:
    from ..distributed.encode import iter_embedding_shards
    from .milvus import LITE_FILE, MilvusIndex, is_lite

    if uri is None:
        out.mkdir(parents=True, exist_ok=True)
        uri = str((out / LITE_FILE).resolve())
    index_type, index_params, search_params, note = milvus_index_for(choice, info.dim, is_lite(uri))
    index = MilvusIndex(info.dim, uri=uri, collection=collection, model_id=model_id, index_type=index_type,
                        index_params=index_params, search_params=search_params, overwrite=overwrite)
    if len(index):
        raise InvalidInputError(f"Milvus collection '{collection}' at '{uri}' already holds {len(index)} items; "
                                "pass overwrite=True (--overwrite) to replace it.")
    for ids, vecs, sigs in iter_embedding_shards(emb_dir):
        index.add(ids, vecs, metadata=_metadata(ids, sigs))
    reason = f"{choice.reason}; as a Milvus {index_type} index" + (f" ({note})" if note else "")
    return index, IndexChoice(choice.kind, {"index_type": index_type, **index_params, **search_params}, reason,
                              choice.estimated_bytes)


def _build_multivector(emb_dir: Path, info: EmbeddingsInfo, choice: IndexChoice, model_id: str | None,
                       train_tokens: int) -> Any:
    """Centroids from a sample of documents of every shard (the first ``add`` trains), then the rest shard by shard."""
    from ..distributed.encode import iter_embedding_shards
    from .multivector import MultiVectorIndex

    index = MultiVectorIndex(info.dim, model_id=model_id, max_train_tokens=train_tokens, **choice.params)
    if choice.params.get("nbits"):
        per_doc = max(1.0, info.tokens / max(info.count, 1))
        ids, docs, metas = _sample(emb_dir, info.count, int(np.ceil(train_tokens / per_doc)))
        if ids:
            index.add(ids, docs, metadata=metas)
    for ids, docs, sigs in iter_embedding_shards(emb_dir):
        keep = [j for j, i in enumerate(ids) if i not in index]
        if keep:
            metas = _metadata(ids, sigs)
            index.add([ids[j] for j in keep], [docs[j] for j in keep],
                      metadata=[metas[j] for j in keep] if metas is not None else None)
    return index
