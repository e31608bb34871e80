"""Encoding image collections into embedding shards, on one process or distributed with Ray Data.

Unit of work = one input shard (a webdataset tar, or a slice of a folder/CSV). Each shard's output is
``EMB_DIR/<shard>.parquet`` (columns ``id``: string, ``embedding``: fixed-size list of float32),
written atomically, so a re-run skips finished shards (resume). A shard that fails (unreadable tar,
crash) is retried ``max_retries`` times and then reported in ``EMB_DIR/_report.json``, never silently
dropped; unreadable images inside a shard are reported per image. Output count = input count minus
the reported failures.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data.images import IMAGE_SUFFIXES, find_images, open_image
from ..errors import InvalidInputError

REPORT = "_report.json"


@dataclass
class Shard:
    """One unit of work: a tar file, or a list of image files (a slice of a folder or CSV)."""

    name: str
    tar: str | None = None
    files: list[str] | None = None
    root: str | None = None


@dataclass
class EncodeReport:
    shards_total: int = 0
    shards_done: int = 0  # encoded in this run
    shards_skipped: int = 0  # already done by an earlier run
    shards_failed: list[dict[str, str]] = field(default_factory=list)
    images_encoded: int = 0
    images_failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.images_encoded / self.seconds if self.seconds else 0.0
        return (f"{self.shards_total} shards: {self.shards_done} encoded, {self.shards_skipped} already done, "
                f"{len(self.shards_failed)} failed; {self.images_encoded} images encoded, {len(self.images_failed)} "
                f"unreadable ({self.seconds:.1f} s, {rate:.0f} img/s)")


def plan_shards(source: str | Path, images_per_shard: int = 1000) -> list[Shard]:
    """Shards for a tar glob (``shards-*.tar``), a folder of images, or a CSV with an ``image`` column."""
    src = str(source)
    if src.endswith(".tar") or "*" in src:
        paths = sorted(glob.glob(src))
        if not paths:
            raise InvalidInputError(f"no shards match '{src}'.")
        return [Shard(name=Path(p).stem, tar=p) for p in paths]
    path = Path(src)
    if path.is_dir():
        files = [p.relative_to(path).as_posix() for p in find_images(path)]
        root = str(path.resolve())
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        if not rows or "image" not in rows[0]:
            raise InvalidInputError(f"{path}: needs a header with an 'image' column.")
        files, root = [r["image"] for r in rows], str(path.parent.resolve())
    else:
        raise InvalidInputError(f"'{src}' is not a tar shard pattern, a folder or a CSV.")
    return [Shard(name=f"part-{i // images_per_shard:05d}", files=files[i:i + images_per_shard], root=root)
            for i in range(0, len(files), images_per_shard)]


def _samples(shard: Shard) -> Iterator[tuple[str, Any]]:
    """(id, image bytes or path) for every image of a shard; raises if the shard itself is unreadable."""
    if shard.tar:
        with tarfile.open(shard.tar) as tar:  # a corrupt tar raises here: the whole shard fails
            for m in tar.getmembers():
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield m.name.rsplit(".", 1)[0], tar.extractfile(m).read()
    else:
        for rel in shard.files or []:
            yield rel, os.path.join(shard.root, rel)


def encode_shard(model: Any, shard: Shard, out_dir: Path, batch_size: int = 64) -> dict[str, Any]:
    """Encode one shard to ``out_dir/<name>.parquet``; returns counts and per-image failures."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, images, failed = [], [], []
    for sid, src in _samples(shard):
        try:
            images.append(open_image(src))
            ids.append(sid)
        except InvalidInputError as e:
            failed.append({"shard": shard.name, "id": sid, "error": str(e)})
    vecs = model.encode_image(images, batch_size=batch_size, show_progress=False) if images else np.zeros((0, model.embedding_dim), np.float32)
    table = pa.table({"id": pa.array(ids, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), vecs.shape[1])})
    tmp = out_dir / f".{shard.name}.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out_dir / f"{shard.name}.parquet")
    return {"shard": shard.name, "count": len(ids), "failed": failed}


def _run_with_retries(fn: Any, shard: Shard, max_retries: int) -> dict[str, Any]:
    err = ""
    for _ in range(max_retries + 1):
        try:
            return fn(shard)
        except Exception as e:  # noqa: BLE001 - any failure of a shard is retried, then reported
            err = f"{type(e).__name__}: {e}"
    return {"shard": shard.name, "count": 0, "failed": [], "error": err}


def encode_collection(source: str | Path, model: Any, out_dir: str | Path, engine: str = "local", batch_size: int = 64,
                      images_per_shard: int = 1000, max_retries: int = 1, num_actors: int | None = None,
                      show_progress: bool = True) -> EncodeReport:
    """Encode every image of ``source`` into embedding shards under ``out_dir`` (see module docstring).

    ``model``: a name/folder (each Ray actor loads its own copy) or, for ``engine="local"``, a loaded encoder.
    ``engine="ray"`` runs shards in a Ray Data actor pool: one actor per GPU when there are GPUs, else
    ``num_actors`` CPU actors (default: the CPUs Ray sees, at most the number of shards).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(source, images_per_shard)
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise InvalidInputError("two input shards have the same file name; outputs would collide.")
    report = EncodeReport(shards_total=len(shards))
    todo = [s for s in shards if not (out / f"{s.name}.parquet").exists()]
    report.shards_skipped = len(shards) - len(todo)
    model_name = str(Path(model).resolve()) if isinstance(model, (str, Path)) and Path(model).is_dir() else model
    if engine == "local":
        from ..collection import load_encoder

        encoder = load_encoder(model) if isinstance(model, (str, Path)) else model
        results = [_run_with_retries(lambda s: encode_shard(encoder, s, out, batch_size), s, max_retries)
                   for s in tqdm(todo, desc="encoding shards", disable=not show_progress)]
    elif engine == "ray":
        if not isinstance(model_name, str):
            raise InvalidInputError("engine='ray' needs the model as a name or folder (each actor loads its own copy).")
        results = _encode_with_ray(todo, model_name, out, batch_size, max_retries, num_actors)
    else:
        raise InvalidInputError(f"unknown engine '{engine}'; use 'local' or 'ray'.")
    for r in results:
        if r.get("error"):
            report.shards_failed.append({"shard": r["shard"], "error": r["error"]})
        else:
            report.shards_done += 1
            report.images_encoded += r["count"]
            report.images_failed += r["failed"]
    report.seconds = time.perf_counter() - t0
    previous = json.loads((out / REPORT).read_text()) if (out / REPORT).exists() else {}
    (out / REPORT).write_text(json.dumps({**asdict(report), "model": model_name,
                                          "earlier_runs": previous.get("earlier_runs", []) + ([previous] if previous else [])},
                                         indent=1, default=str))
    return report


def _encode_with_ray(shards: list[Shard], model_name: str, out: Path, batch_size: int, max_retries: int,
                     num_actors: int | None) -> list[dict[str, Any]]:
    import ray

    if not shards:
        return []
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = max(1, min(len(shards), gpus or num_actors or int(ray.cluster_resources().get("CPU", 1))))

    class ShardEncoder:
        """A Ray actor: loads the model once, then encodes whole shards."""

        def __init__(self) -> None:
            import torch

            from ..collection import load_encoder

            if not gpus:
                torch.set_num_threads(1)  # one thread per actor: the actors are the parallelism
            self.model = load_encoder(model_name, device="cuda" if gpus else None)

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            rows = []
            for payload in batch["shard"]:
                shard = Shard(**json.loads(payload))
                rows.append(json.dumps(_run_with_retries(lambda s: encode_shard(self.model, s, out, batch_size), shard, max_retries)))
            return {"result": rows}

    ds = ray.data.from_items([{"shard": json.dumps(asdict(s))} for s in shards], override_num_blocks=len(shards))
    res = ds.map_batches(ShardEncoder, batch_size=1, concurrency=actors, num_gpus=1 if gpus else 0,
                         num_cpus=0 if gpus else 1)
    return [json.loads(r["result"]) for r in res.take_all()]


def read_embedding_shards(emb_dir: str | Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, (n, d) float32) per shard, in shard-name order, without loading everything at once."""
    import pyarrow.parquet as pq

    files = sorted(Path(emb_dir).glob("*.parquet"))
    if not files:
        raise InvalidInputError(f"no embedding shards (*.parquet) in '{emb_dir}'. Run `xmodal encode` first.")
    for f in files:
        t = pq.read_table(f)
        col = t.column("embedding").combine_chunks()
        dim = col.type.list_size
        vecs = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
        yield t.column("id").to_pylist(), vecs
