"""Choose and stream-build an index from precomputed vectors, sized from count and memory (autofaiss-style).

This module knows index sizes and backends, not files: vectors arrive from a ``shards`` callable
that returns a fresh iterator of ``(ids, vectors, signatures)`` per call (one shard in memory at a time),
plus ``info`` with ``count``, ``dim`` and ``tokens``. Reading embedding shards from disk
(``xmodal.distributed.embeddings``) and turning the result into a searchable collection
(``xmodal.pipelines.index_from_embeddings``) live in the layers above. One builder per engine,
named in the engine table (``registry.EngineSpec.from_shards``):

- ``build_faiss``: flat while small, HNSW while float vectors + graph fit the memory budget, else IVF-PQ
  (trained on a sample drawn from every shard, then filled shard by shard);
- ``build_milvus``: the same choice mapped to a Milvus index (FLAT / HNSW / IVF_PQ; IVF_SQ8 on Milvus Lite,
  which has no IVF_PQ), filled by streaming inserts;
- ``build_multivector`` (multi-vector shards): a ``MultiVectorIndex`` whose residual bits are chosen
  from the budget; its centroids are trained on a sample of documents drawn from every shard (the
  first ``add``), then the remaining documents are added shard by shard.

The choice and its reason are returned (``IndexChoice``) and printed by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from ..errors import InvalidInputError
from .sizing import ivf_nlist, plaid_centroids

# A fresh pass over all vectors: (ids, vectors (n, d) or a list of (t_i, d), signatures or None) per shard.
Shards = Callable[[], Iterator[tuple[list[str], Any, "list[Any] | None"]]]


class ShardStats(Protocol):
    count: int  # items
    dim: int
    tokens: int  # vectors in all (= count for single-vector shards)


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
    nlist = ivf_nlist(n)
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
    bytes + the 4-byte norm of the decoded vector (search scores residuals without decoding them); plus the
    float32 centroids and 8 bytes per document (its length). ``nbits=0`` asks for
    the uncompressed, exact index (float32 tokens).
    """
    k = plaid_centroids(n_tokens)
    code = (2 if k <= 65536 else 4) + 4  # centroid id + float32 norm
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


def _metadata(ids: list[str], sigs: list[Any] | None) -> list[dict[str, Any]] | None:
    """Per-item metadata: the file path and signature (folder sources), so ``build_collection`` can update it."""
    if sigs is None:
        return None
    return [{"path": i, "signature": list(s)} for i, s in zip(ids, sigs)]


def _sample(shards: Shards, n_total: int, target: int, seed: int = 0) -> tuple[list[str], Any, list[dict] | None]:
    """About ``target`` items drawn evenly from every shard (one shard in memory at a time)."""
    rng = np.random.default_rng(seed)
    frac = min(1.0, target / max(n_total, 1))
    ids: list[str] = []
    vecs: list[Any] = []
    metas: list[dict] = []
    has_meta = True
    for s_ids, s_vecs, s_sigs in shards():
        take = np.flatnonzero(rng.random(len(s_ids)) < frac) if frac < 1 else np.arange(len(s_ids))
        ids += [s_ids[j] for j in take]
        # copies of the drawn rows: a row view would keep its whole shard alive (every shard, in the end)
        vecs += list(s_vecs[take]) if isinstance(s_vecs, np.ndarray) else [np.array(s_vecs[j]) for j in take]
        m = _metadata(s_ids, s_sigs)
        has_meta = has_meta and m is not None
        metas += [m[j] for j in take] if m is not None else []
    return ids, vecs, (metas if has_meta else None)


def _choose_single(info: ShardStats, kind: str, memory_budget_bytes: int) -> IndexChoice:
    if kind == "auto":
        return choose_index(info.count, info.dim, memory_budget_bytes)
    if kind in ("flat", "hnsw", "ivfpq"):
        return IndexChoice(kind, {}, "chosen by the user", 0)
    raise InvalidInputError(f"unknown index kind '{kind}'; use auto, flat, hnsw or ivfpq.")


def build_faiss(shards: Shards, info: ShardStats, out: Path, *, kind: str = "auto", memory_budget_bytes: int,
                model_id: str | None = None, train_sample: int | None = None, target_recall: float | None = None,
                refine: str | None = None, **_: Any) -> tuple[Any, IndexChoice]:
    """``target_recall``: HNSW/IVF-PQ are tuned after the build to the smallest search setting that reaches it
    (recall@10 against exact search over the shards, on a sample of their own vectors); None skips it.
    ``refine``: IVF-PQ's re-scoring codes (``sq8``/``fp16``/``flat``/``none``), instead of the budget's choice."""
    from .faiss_index import FaissIndex, refine_codes

    choice = _choose_single(info, kind, memory_budget_bytes)
    params = dict(choice.params)
    if refine is not None:  # asked for explicitly: only IVF-PQ has refine codes
        if choice.kind != "ivfpq":
            raise InvalidInputError(f"--refine applies to --kind ivfpq; this index is {choice.kind} "
                                    "(flat and hnsw keep float32 vectors).")
        params["refine"] = refine_codes(refine)
    if choice.kind == "ivfpq":  # lists for the whole collection, not for the training sample
        params.setdefault("nlist", ivf_nlist(info.count))
    index = FaissIndex(info.dim, kind=choice.kind, model_id=model_id, target_recall=target_recall, **params)
    index.reserve(info.count)  # the vector storage is filled in place: peak ~ one index + one shard
    if choice.kind == "ivfpq":  # train on a sample drawn from every shard, then stream everything
        _, vecs, _ = _sample(shards, info.count, train_sample or max(200_000, 39 * params["nlist"]))
        train = np.stack(vecs)
        del vecs
        index.train(train)
        del train
    for ids, vecs, sigs in shards():
        index.add(ids, vecs, metadata=_metadata(ids, sigs))
    if target_recall is not None and choice.kind != "flat" and len(index):
        # the shards hold the original vectors: exact ground truth, even for IVF-PQ's compressed codes
        index.tune(target_recall, source=lambda: ((ids, vecs) for ids, vecs, _ in shards()))
    return index, choice


def build_milvus(shards: Shards, info: ShardStats, out: Path, *, kind: str = "auto", memory_budget_bytes: int,
                 model_id: str | None = None, uri: str | None = None, collection: str = "xmodal",
                 overwrite: bool = False, **_: Any) -> tuple[Any, IndexChoice]:
    from .milvus import MilvusIndex, is_lite, lite_uri

    choice = _choose_single(info, kind, memory_budget_bytes)
    uri = lite_uri(out) if uri is None else uri
    index_type, index_params, search_params, note = milvus_index_for(choice, info.dim, is_lite(uri))
    index = MilvusIndex(info.dim, uri=uri, collection=collection, model_id=model_id, index_type=index_type,
                        index_params=index_params, search_params=search_params, overwrite=overwrite)
    if len(index):
        raise InvalidInputError(f"Milvus collection '{collection}' at '{uri}' already holds {len(index)} items; "
                                "pass overwrite=True (--overwrite) to replace it.")
    for ids, vecs, sigs in shards():
        index.add(ids, vecs, metadata=_metadata(ids, sigs))
    reason = f"{choice.reason}; as a Milvus {index_type} index" + (f" ({note})" if note else "")
    return index, IndexChoice(choice.kind, {"index_type": index_type, **index_params, **search_params}, reason,
                              choice.estimated_bytes)


def build_multivector(shards: Shards, info: ShardStats, out: Path, *, kind: str = "auto", memory_budget_bytes: int,
                      model_id: str | None = None, train_sample: int | None = None, nbits: int | None = None,
                      **_: Any) -> tuple[Any, IndexChoice]:
    """Centroids from a sample of documents of every shard (the first ``add`` trains), then the rest shard by shard.

    ``kind="flat"`` (or ``nbits=0``) means uncompressed, exact MaxSim.
    """
    from .multivector import MultiVectorIndex

    choice = choose_multivector(info.count, info.tokens, info.dim, memory_budget_bytes,
                                nbits=0 if kind == "flat" else nbits)
    train_tokens = train_sample or 200_000
    index = MultiVectorIndex(info.dim, model_id=model_id, max_train_tokens=train_tokens, **choice.params)
    if choice.params.get("nbits"):
        per_doc = max(1.0, info.tokens / max(info.count, 1))
        ids, docs, metas = _sample(shards, info.count, int(np.ceil(train_tokens / per_doc)))
        if ids:
            index.add(ids, docs, metadata=metas)
    for ids, docs, sigs in shards():
        keep = [j for j, i in enumerate(ids) if i not in index]
        if keep:
            metas = _metadata(ids, sigs)
            index.add([ids[j] for j in keep], [docs[j] for j in keep],
                      metadata=[metas[j] for j in keep] if metas is not None else None)
    return index, choice
