"""Milvus backend: the ``Index`` protocol on a Milvus collection (pymilvus ``MilvusClient``).

The same code talks to Milvus Lite (an embedded server in a local ``.db`` file, used by the tests)
and to a Milvus cluster: only the URI changes (``"./index/milvus.db"`` vs ``"http://milvus:19530"``),
plus a token for authentication (``token=`` or the ``MILVUS_TOKEN`` environment variable). The
index folder keeps a manifest that points at the URI and collection, so ``xmodal.load_index(folder)``
reconnects. ``index_type``/``index_params`` pick the ANN index (FLAT, HNSW, IVF_SQ8, IVF_PQ on a
cluster, ...); ``search_params`` (``ef``, ``nprobe``) are kept in the manifest too.

No local mirror: ids, counts and metadata are asked of Milvus (``count(*)``, ``get`` by primary key,
a query iterator for all ids), so opening an index of any size costs one round trip and no memory per
item. Reads use strong consistency (they see every earlier write of this client). The metadata of the
latest search hits is kept in a small bounded cache, so showing results costs no round trip per hit.

Late interaction: Milvus 2.6 clusters can store an array of vectors per entity (an ``ARRAY`` of
``STRUCT`` with a ``FLOAT_VECTOR`` sub-field) and search it with ``MAX_SIM_IP``/``MAX_SIM_COSINE``
and an ``EmbeddingList`` query. xmodal does not use that: the Milvus Lite installed here (3.2.2,
with pymilvus 3.0.2) does not support it, so it could not be tested. What was tried: a schema with
an ``ARRAY<STRUCT{tok: FLOAT_VECTOR}>`` field is accepted but the field is silently dropped from the
collection; inserting rows with it fails ("unexpected field"); an index on ``tokens[tok]`` with
``MAX_SIM_IP`` fails ("unknown field"); an ``EmbeddingList`` search fails ("PlaceholderValue type 301
not supported"). ``tests/indexes/test_milvus.py::test_milvus_lite_has_no_multi_vector_maxsim`` checks
this and will fail once Milvus Lite gains it. Multi-vector collections use ``MultiVectorIndex``.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import IndexMismatchError, InvalidInputError
from .base import as_float32_matrix, as_id_filter, check_dim, check_k, check_new_ids
from .filters import parse_filter, to_milvus
from .manifest import Manifest, atomic_folder, check_compatible, read_manifest, write_manifest

ENGINE = "milvus"
LITE_FILE = "milvus.db"
STRONG = "Strong"  # read-your-writes: counts, gets and searches see every earlier insert/delete
HIT_CACHE = 10_000  # metadata of this many recent search hits kept for display


def _client(uri: str, token: str | None = None) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as e:  # pragma: no cover
        raise InvalidInputError("the Milvus backend needs `pip install pymilvus milvus-lite` (xmodal[scale]).") from e
    return MilvusClient(uri, token=token or os.environ.get("MILVUS_TOKEN", ""))


def is_lite(uri: str) -> bool:
    """A Milvus Lite file (``*.db`` path) rather than a server/cluster URI (``http://``, ``https://``, ``tcp://``)."""
    return "://" not in uri


def _quote(ids: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in ids) + "]"


class MilvusIndex:
    """String ids, float vectors, JSON metadata in one Milvus collection; inner-product (cosine on unit vectors)."""

    engine = ENGINE

    def __init__(self, dim: int, uri: str, collection: str = "xmodal", model_id: str | None = None,
                 token: str | None = None, index_type: str = "FLAT", metric: str = "ip", create: bool = True,
                 index_params: Mapping[str, Any] | None = None, search_params: Mapping[str, Any] | None = None,
                 overwrite: bool = False, num_shards: int | None = None) -> None:
        if metric not in ("ip", "l2"):
            raise InvalidInputError(f"metric must be 'ip' or 'l2'; got '{metric}'.")
        self.dim, self.uri, self.collection, self.model_id = check_dim(dim), uri, collection, model_id
        self.token, self.index_type, self.metric = token, index_type, metric
        self.index_params = dict(index_params or {})  # build-time: M, efConstruction, nlist, m, nbits
        self.search_params = dict(search_params or {})  # query-time: ef, nprobe
        self.num_shards = num_shards  # cluster: write parallelism of a new collection (Milvus' default if None)
        self.client = _client(uri, token)
        # metadata of recent search hits (bounded): results are shown with their metadata without a round trip each
        self._hit_meta: OrderedDict[str, dict[str, Any]] = OrderedDict()
        if overwrite and self.client.has_collection(collection):
            self.client.drop_collection(collection)
        if self.client.has_collection(collection):
            pass  # nothing is read up front: ids and metadata are asked of Milvus when needed
        elif create:
            self._create()
        else:
            raise IndexMismatchError(f"Milvus at '{uri}' has no collection '{collection}'.")

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=2048)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("meta", DataType.JSON)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type=self.index_type, metric_type=self.metric.upper(),
                         params=self.index_params)
        extra = {"num_shards": int(self.num_shards)} if self.num_shards else {}
        self.client.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong",
                                      **extra)

    # ------------------------------------------------------------------ reads from Milvus (no local mirror)
    def _get(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for s in range(0, len(ids), 1000):
            rows.extend(self.client.get(self.collection, ids=list(ids[s:s + 1000]), output_fields=fields,
                                        consistency_level=STRONG))
        return rows

    def _present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` Milvus holds (one round trip per 1,000 ids)."""
        return {r["id"] for r in self._get(list(ids), ["id"])}

    def _iterate(self, fields: list[str], batch_size: int = 5000) -> Iterable[dict[str, Any]]:
        it = self.client.query_iterator(self.collection, batch_size=batch_size, filter="", output_fields=fields,
                                        consistency_level=STRONG)
        try:
            while True:
                rows = it.next()
                if not rows:
                    break
                yield from rows
        finally:
            it.close()

    def _forget(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._hit_meta.pop(i, None)

    # ------------------------------------------------------------------ protocol
    def __len__(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level=STRONG)
        return int(res[0]["count(*)"]) if res else 0

    def __contains__(self, item_id: str) -> bool:
        return isinstance(item_id, str) and bool(self._get([item_id], ["id"]))

    def ids(self) -> list[str]:
        return [r["id"] for r in self._iterate(["id"])]

    def metadata(self, item_id: str) -> dict[str, Any]:
        if item_id in self._hit_meta:
            return self._hit_meta[item_id]
        rows = self._get([item_id], ["id", "meta"]) if isinstance(item_id, str) else []
        if not rows:
            raise KeyError(item_id)
        return rows[0].get("meta") or {}

    def metadata_items(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """Every (id, metadata) pair, streamed from Milvus in batches (incremental indexing plans with it)."""
        for r in self._iterate(["id", "meta"]):
            yield r["id"], r.get("meta") or {}

    def add(self, ids: Sequence[str], vectors: Any, metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        vecs = as_float32_matrix(vectors, self.dim)
        ids = check_new_ids(ids, set(), len(vecs))
        check_new_ids(ids, self._present(ids), len(vecs))  # ids Milvus already holds are refused
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidInputError(f"got {len(metadata)} metadata records for {len(ids)} ids.")
        metas = [dict(m) for m in metadata] if metadata is not None else [{} for _ in ids]
        for s in range(0, len(ids), 1000):
            rows = [{"id": i, "vector": v.tolist(), "meta": m} for i, v, m in
                    zip(ids[s:s + 1000], vecs[s:s + 1000], metas[s:s + 1000])]
            self.client.insert(self.collection, rows)

    def remove(self, ids: Iterable[str]) -> int:
        present = sorted(self._present([str(i) for i in ids]))
        if not present:
            return 0
        for s in range(0, len(present), 1000):
            self.client.delete(self.collection, ids=present[s:s + 1000])
        self._forget(present)
        return len(present)

    def search(self, queries: Any, k: int, filter: Iterable[str] | None = None,
               where: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``where``: a metadata filter expression, run by Milvus as a boolean expression on ``meta``."""
        k = check_k(k)
        q = as_float32_matrix(queries, self.dim, what="queries")
        where_expr = to_milvus(parse_filter(where)) if where is not None else ""
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        out = np.full((len(q), k), None, dtype=object)
        expr = ""
        filter = as_id_filter(filter)
        if filter is not None:
            if not filter:
                return scores, out
            expr = f"id in {_quote(sorted(filter))}"  # ids Milvus does not hold match nothing
        if where_expr:
            expr = f"({expr}) and {where_expr}" if expr else where_expr
        params = dict(self.search_params)
        if "ef" in params or self.index_type.startswith("HNSW"):
            params["ef"] = max(int(params.get("ef", 64)), min(k, 16384))  # HNSW needs ef >= k
        res = self.client.search(self.collection, data=q.tolist(), limit=min(k, 16384), filter=expr,
                                 output_fields=["id", "meta"], consistency_level=STRONG,
                                 search_params={"metric_type": self.metric.upper(), "params": params})
        for n, hits in enumerate(res):
            for j, h in enumerate(hits[:k]):
                scores[n, j] = h["distance"] if self.metric == "ip" else -h["distance"]
                out[n, j] = h["id"]
                self._hit_meta[h["id"]] = (h.get("entity") or {}).get("meta") or {}
                self._hit_meta.move_to_end(h["id"])
        while len(self._hit_meta) > HIT_CACHE:
            self._hit_meta.popitem(last=False)
        return scores, out

    def update_metadata(self, item_ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        """Replace the metadata of items already stored (their vectors are read back and kept)."""
        item_ids = [str(i) for i in item_ids]
        if len(item_ids) != len(metadata) or len(self._present(item_ids)) != len(set(item_ids)):
            raise InvalidInputError("update_metadata needs one record per id, for ids already in the index.")
        new = dict(zip(item_ids, (dict(m) for m in metadata)))
        for s in range(0, len(item_ids), 1000):
            rows = self.client.get(self.collection, ids=item_ids[s:s + 1000], output_fields=["id", "vector"],
                                   consistency_level=STRONG)
            self.client.upsert(self.collection, [{"id": r["id"], "vector": list(r["vector"]), "meta": new[r["id"]]}
                                                 for r in rows])
        self._forget(new)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Flush and write the manifest (the data itself lives in Milvus)."""
        path = Path(path)
        self.client.flush(self.collection)
        params = {"uri": self.uri, "collection": self.collection, "index_type": self.index_type,
                  "index_params": self.index_params, "search_params": self.search_params}
        with atomic_folder(path) as tmp:
            (tmp / "milvus.json").write_text(json.dumps({"uri": self.uri, "collection": self.collection,
                                                          "index_type": self.index_type}))
            write_manifest(tmp, Manifest(engine=ENGINE, dimension=self.dim, count=len(self), metric=self.metric,
                                         model_id=self.model_id, params=params), ["milvus.json"])
        return path

    @classmethod
    def load(cls, path: str | Path, *, model_id: str | None = None, dimension: int | None = None,
             verify: bool = True, token: str | None = None) -> "MilvusIndex":
        path = Path(path)
        m = read_manifest(path, verify=verify)
        if m.engine != ENGINE:
            raise IndexMismatchError(f"'{path}' is a '{m.engine}' index, not a Milvus index.")
        check_compatible(m, path, model_id=model_id, dimension=dimension)
        return cls(m.dimension, uri=m.params["uri"], collection=m.params["collection"], model_id=m.model_id,
                   token=token, index_type=m.params.get("index_type", "FLAT"), metric=m.metric, create=False,
                   index_params=m.params.get("index_params"), search_params=m.params.get("search_params"))

    def close(self) -> None:
        self.client.close()


def create(dim: int, model_id: str | None, folder: Path, uri: str | None = None, collection: str = "xmodal",
           **options: Any) -> MilvusIndex:
    """Engine factory: default a Milvus Lite file inside the index folder; ``uri="http://host:19530"`` for a cluster."""
    return MilvusIndex(dim, uri=lite_uri(folder) if uri is None else uri, collection=collection, model_id=model_id,
                       **options)


def lite_uri(folder: str | Path) -> str:
    """The Milvus Lite database file of an index folder (the folder is made if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return str((folder / LITE_FILE).resolve())
