"""Encoding image collections into embedding shards, on one process or distributed with Ray Data.

Unit of work = one input shard (a webdataset tar, or a slice of a folder/CSV). Each shard's output is
``EMB_DIR/<shard>.parquet``, written atomically, so a re-run skips finished shards (resume). Columns:

- ``id`` (string): the webdataset sample key (``xmodal.data.shards``: member path up to the first dot of its name), or the image path relative to the folder/CSV;
- ``embedding``: ``fixed_size_list<float32, d>`` (one vector per image), or, for a late-interaction
  encoder, ``list<fixed_size_list<float32, d>>`` (one patch vector per row of the list: multi-vector);
- ``signature`` (folder/CSV sources only): ``[size, mtime_ns]`` of the image file, the same signature
  ``build_collection`` uses, so an index built from these shards can later be updated incrementally
  with ``xmodal index FOLDER --out IDX``.

Each file's Arrow schema metadata (key ``xmodal``) records the model id, the dimension, whether it
is multi-vector, the number of vectors, the ids of unreadable images and the input shard's signature
(tar size+mtime, or a hash of the files' signatures). A finished shard is skipped only when that signature still matches its input;
outputs whose input is gone are removed (EMB_DIR mirrors the input), and reusing EMB_DIR with another
model is refused.

A shard that fails (unreadable tar, crash) is retried ``max_retries`` times and then reported in
``EMB_DIR/_report.json``, never silently dropped; unreadable images inside a shard are reported per
image. Output count = input count minus the reported failures.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data.images import find_images, open_image
from ..errors import InvalidInputError
from ..io import atomic_path, atomic_write

REPORT = "_report.json"
META_KEY = b"xmodal"  # Arrow schema metadata key of every embedding shard


@dataclass
class Shard:
    """One unit of work: a tar file, or a list of image files (a slice of a folder or CSV)."""

    name: str
    tar: str | None = None
    files: list[str] | None = None
    root: str | None = None
    signature: str = ""  # of the input: tar size+mtime, or a hash of the files' size+mtime


@dataclass
class EncodeReport:
    shards_total: int = 0
    shards_done: int = 0  # encoded in this run
    shards_skipped: int = 0  # already done by an earlier run (and their input is unchanged)
    shards_failed: list[dict[str, str]] = field(default_factory=list)
    shards_removed: list[str] = field(default_factory=list)  # outputs whose input shard is gone
    images_encoded: int = 0
    images_failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # wall clock of the whole run (model loading, Ray actors starting, ...)
    shard_seconds: float = 0.0  # sum over shards of the time spent decoding, encoding and writing them

    def summary(self) -> str:
        rate = self.images_encoded / self.seconds if self.seconds else 0.0
        s = (f"{self.shards_total} shards: {self.shards_done} encoded, {self.shards_skipped} already done, "
             f"{len(self.shards_failed)} failed; {self.images_encoded} images encoded, {len(self.images_failed)} "
             f"unreadable ({self.seconds:.1f} s, {rate:.0f} img/s)")
        if self.shards_removed:
            s += f"; removed {len(self.shards_removed)} outputs whose input is gone"
        return s


def file_signature(path: str | Path) -> list[int]:
    """``[size, mtime_ns]`` of a file (as ``xmodal.collection`` records it), ``[-1, -1]`` if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [int(st.st_size), int(st.st_mtime_ns)]


def _files_signature(root: str, files: list[str]) -> str:
    h = hashlib.sha1()
    for rel in files:
        h.update(f"{rel}\t{file_signature(os.path.join(root, rel))}\n".encode())
    return h.hexdigest()


def plan_shards(source: str | Path, images_per_shard: int = 1000) -> list[Shard]:
    """Shards for a tar glob (``shards-*.tar``), a folder of images, or a CSV with an ``image`` column."""
    src = str(source)
    if src.endswith(".tar") or "*" in src:
        paths = sorted(glob.glob(src))
        if not paths:
            raise InvalidInputError(f"no shards match '{src}'.")
        return [Shard(name=Path(p).stem, tar=p, signature=str(file_signature(p))) for p in paths]
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
    shards = []
    for i in range(0, len(files), images_per_shard):
        part = files[i:i + images_per_shard]
        shards.append(Shard(name=f"part-{i // images_per_shard:05d}", files=part, root=root,
                            signature=_files_signature(root, part)))
    return shards


def source_root(source: str | Path) -> str | None:
    """The image root that ids are relative to (folder or CSV sources), or None for tar shards."""
    path = Path(str(source))
    if path.is_dir():
        return str(path.resolve())
    if path.suffix.lower() in (".csv", ".tsv") and path.exists():
        return str(path.parent.resolve())
    return None


def _samples(shard: Shard) -> Iterator[tuple[str, Any, list[int] | None]]:
    """(id, image bytes or path, file signature or None) per image; raises if the shard itself is unreadable."""
    if shard.tar:
        from ..data.shards import image_ext, iter_samples

        # streamed, one sample at a time, keyed like read_webdataset; a corrupt tar raises: the shard fails
        for sample in iter_samples(shard.tar):
            ext = image_ext(sample)
            if ext is not None:
                yield sample["__key__"], sample[ext], None
    else:
        for rel in shard.files or []:
            full = os.path.join(shard.root, rel)
            yield rel, full, file_signature(full)


def is_multi_vector(model: Any) -> bool:
    """True for encoders whose ``encode_image`` returns several vectors per image (late interaction)."""
    from ..models.roles import MultiVectorEncoder

    return isinstance(model, MultiVectorEncoder)


def _vectors_column(vecs: list[np.ndarray] | np.ndarray, dim: int, multi: bool) -> Any:
    import pyarrow as pa

    if not multi:
        flat = np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    docs = [np.asarray(v, dtype=np.float32).reshape(-1, dim) for v in vecs]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int32)
    flat = np.concatenate(docs).reshape(-1) if docs else np.zeros(0, np.float32)
    tokens = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), tokens)


def _open(src: Any) -> Any:
    try:
        return open_image(src)
    except InvalidInputError as e:
        return e


def _decoded(shard: Shard, workers: int) -> Iterator[tuple[str, Any, list[int] | None]]:
    """(id, PIL image or the error, signature) in input order; ``workers`` threads decode ahead (Pillow
    releases the GIL while decoding), at most ``4 * workers`` images in flight."""
    if workers <= 0:
        for sid, src, sig in _samples(shard):
            yield sid, _open(src), sig
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque = deque()
        for sid, src, sig in _samples(shard):
            window.append((sid, pool.submit(_open, src), sig))
            if len(window) >= 4 * workers:
                sid0, fut, sig0 = window.popleft()
                yield sid0, fut.result(), sig0
        while window:
            sid0, fut, sig0 = window.popleft()
            yield sid0, fut.result(), sig0


def encode_shard(model: Any, shard: Shard, out_dir: Path, batch_size: int = 64, decode_workers: int = 0) -> dict[str, Any]:
    """Encode one shard to ``out_dir/<name>.parquet``; returns counts and per-image failures.

    Images are decoded and encoded ``batch_size`` at a time, so memory holds one batch of pictures
    (plus the shard's vectors), whatever the size of the originals. ``decode_workers`` > 0 decodes in
    that many threads ahead of the encoder (useful on a GPU, where decoding would otherwise starve it).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    multi, dim = is_multi_vector(model), int(model.embedding_dim)
    ids: list[str] = []
    sigs: list[list[int] | None] = []
    vecs: list[np.ndarray] = []
    failed: list[dict[str, str]] = []
    batch: list[tuple[str, Any, list[int] | None]] = []

    def flush() -> None:
        if batch:
            out = model.encode_image([img for _, img, _ in batch], batch_size=batch_size, show_progress=False)
            vecs.extend(list(out))
            ids.extend(b[0] for b in batch)
            sigs.extend(b[2] for b in batch)
            batch.clear()

    for sid, img, sig in _decoded(shard, decode_workers):
        if isinstance(img, Exception):
            failed.append({"shard": shard.name, "id": sid, "error": str(img)})
            continue
        batch.append((sid, img, sig))
        if len(batch) >= batch_size:
            flush()
    flush()
    columns = {"id": pa.array(ids, pa.string()), "embedding": _vectors_column(vecs, dim, multi)}
    if shard.files is not None:
        columns["signature"] = pa.array(sigs, pa.list_(pa.int64()))
    n_vectors = int(sum(len(v) for v in vecs)) if multi else len(vecs)
    meta = {"model_id": getattr(model, "model_id", None), "dim": dim, "multi_vector": multi, "count": len(ids),
            "vectors": n_vectors, "shard": shard.name, "source_signature": shard.signature,
            "failed": [f["id"] for f in failed]}
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_path(out_dir / f"{shard.name}.parquet") as tmp:
        pq.write_table(table, tmp)
    return {"shard": shard.name, "count": len(ids), "failed": failed, "model_id": meta["model_id"],
            "seconds": time.perf_counter() - t0}


def shard_metadata(path: str | Path) -> dict[str, Any]:
    """The ``xmodal`` schema metadata of an embedding shard (read from the Parquet footer only)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[META_KEY]) if META_KEY in meta else {}


def _run_with_retries(fn: Any, shard: Shard, max_retries: int) -> dict[str, Any]:
    err = ""
    for _ in range(max_retries + 1):
        try:
            return fn(shard)
        except Exception as e:  # noqa: BLE001 - any failure of a shard is retried, then reported
            err = f"{type(e).__name__}: {e}"
    return {"shard": shard.name, "count": 0, "failed": [], "error": err}


def encode_collection(source: str | Path, model: Any, out_dir: str | Path, executor: str = "local", batch_size: int = 64,
                      images_per_shard: int = 1000, max_retries: int = 1, num_actors: int | None = None,
                      late_interaction: bool = False, decode_workers: int = 0, show_progress: bool = True,
                      engine: str | None = None) -> EncodeReport:
    """Encode every image of ``source`` into embedding shards under ``out_dir`` (see module docstring).

    ``model``: a name/folder (each Ray actor loads its own copy) or, for ``executor="local"``, a loaded encoder.
    ``executor="ray"`` runs shards in a Ray Data actor pool: one actor per GPU when there are GPUs, else
    ``num_actors`` CPU actors (default: the CPUs Ray sees, at most the number of shards).
    ``late_interaction``: load the model named by ``model`` as a ``LateInteractionEncoder`` and write
    multi-vector shards (patch vectors per image); a loaded late-interaction encoder does so by itself.
    ``decode_workers``: threads decoding images ahead of the encoder, per process/actor (0: decode inline).
    A Ray actor reserves ``max(1, decode_workers)`` CPUs.
    ``engine``: deprecated name of ``executor`` ("engine" now only means the index backend).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(source, images_per_shard)
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise InvalidInputError("two input shards have the same file name; outputs would collide.")
    model_name = _model_name(model)
    late_interaction = late_interaction or (not isinstance(model, (str, Path)) and is_multi_vector(model))
    if engine is not None:
        import warnings

        warnings.warn("encode_collection(engine=...) is deprecated; use executor=...", DeprecationWarning, stacklevel=2)
        executor = engine
    if executor not in ("local", "ray"):
        raise InvalidInputError(f"unknown executor '{executor}'; use 'local' or 'ray'.")
    if executor == "ray" and model_name is None:
        raise InvalidInputError("executor='ray' needs the model as a name or folder (each actor loads its own copy).")
    encoder = None
    if executor == "local":
        encoder = _load(model, late_interaction) if isinstance(model, (str, Path)) else model
    model_id = getattr(encoder, "model_id", None)
    previous = _read_report(out / REPORT)
    _check_same_model(out, previous, model_name, model_id, late_interaction)

    report = EncodeReport(shards_total=len(shards))
    wanted = set(names)
    for f in sorted(out.glob("*.parquet")):  # EMB_DIR mirrors the input: drop outputs of inputs that are gone
        if f.stem not in wanted and shard_metadata(f):
            f.unlink()
            report.shards_removed.append(f.stem)
    todo = [s for s in shards if not _is_done(out / f"{s.name}.parquet", s)]
    report.shards_skipped = len(shards) - len(todo)
    model_id = model_id or previous.get("model_id")
    if encoder is not None:
        results = [_run_with_retries(lambda s: encode_shard(encoder, s, out, batch_size, decode_workers), s, max_retries)
                   for s in tqdm(todo, desc="encoding shards", disable=not show_progress)]
    else:
        results = _encode_with_ray(todo, model_name, out, batch_size, max_retries, num_actors, late_interaction,
                                   decode_workers)
    for r in results:
        if r.get("error"):
            report.shards_failed.append({"shard": r["shard"], "error": r["error"]})
        else:
            model_id = r.get("model_id") or model_id
            report.shards_done += 1
            report.images_encoded += r["count"]
            report.images_failed += r["failed"]
            report.shard_seconds += r.get("seconds", 0.0)
    report.seconds = time.perf_counter() - t0
    earlier = previous.pop("earlier_runs", []) + ([previous] if previous else [])
    atomic_write(out / REPORT, json.dumps({**asdict(report), "model": model_name or previous.get("model"), "model_id": model_id,
                                          "late_interaction": late_interaction, "source": str(source),
                                          "root": source_root(source), "earlier_runs": earlier},
                                         indent=1, default=str))
    return report


def _load(name: str | Path, late_interaction: bool, device: str | None = None) -> Any:
    """The encoder for a model name: token/patch vectors for multi-vector shards, one vector otherwise."""
    from ..models import load_model

    # adapt_dual: a plain dual model asked for token vectors gets fresh projections (as it always has here)
    return load_model(name, role="multi-vector" if late_interaction else "single-vector", device=device,
                      adapt_dual=late_interaction)


def _read_report(path: Path) -> dict[str, Any]:
    """The previous run's report; one cut off by a crash (older versions wrote it in place) counts as absent,
    since each shard's own metadata still records its model."""
    if not path.exists():
        return {}
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return {}
    return previous if isinstance(previous, dict) else {}


def _model_name(model: Any) -> str | None:
    """A name another process can load the model from (a folder resolved to an absolute path), or None."""
    if isinstance(model, (str, Path)):
        return str(Path(model).resolve()) if Path(model).is_dir() else str(model)
    return None


def _is_done(path: Path, shard: Shard) -> bool:
    """An output exists and was made from the input as it is now (same tar size/mtime or same files)."""
    if not path.exists():
        return False
    try:
        return shard_metadata(path).get("source_signature") == shard.signature
    except Exception:  # noqa: BLE001 - an unreadable output is simply made again
        return False


def _check_same_model(out: Path, previous: dict[str, Any], name: str | None, model_id: str | None, late: bool) -> None:
    """Refuse to mix shards of two models (or single- and multi-vector shards) in one folder."""
    if not previous or not any(out.glob("*.parquet")):
        return
    prev_name, prev_id = previous.get("model"), previous.get("model_id")
    if name and prev_name:
        same = name == prev_name or bool(model_id and model_id == prev_id)
    else:  # a loaded encoder on one side: compare model ids where both are known
        same = not (model_id and prev_id) or model_id == prev_id
    if not same:
        raise InvalidInputError(f"'{out}' holds embeddings of model '{prev_name or prev_id}', not '{name or model_id}'; "
                                "encode into another --out folder (or empty this one).")
    if bool(previous.get("late_interaction")) != late:
        kinds = ("single-vector", "multi-vector (late interaction)")
        raise InvalidInputError(f"'{out}' holds {kinds[bool(previous.get('late_interaction'))]} embeddings; "
                                f"this run makes {kinds[late]} ones. Use another --out folder.")


def _encode_with_ray(shards: list[Shard], model_name: str, out: Path, batch_size: int, max_retries: int,
                     num_actors: int | None, late_interaction: bool = False, decode_workers: int = 0) -> list[dict[str, Any]]:
    import ray

    if not shards:
        return []
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus_each = max(1, decode_workers)
    actors = max(1, min(len(shards), gpus or num_actors or int(ray.cluster_resources().get("CPU", 1)) // cpus_each))

    class ShardEncoder:
        """A Ray actor: loads the model once, then encodes whole shards."""

        def __init__(self) -> None:
            import torch

            if not gpus:
                torch.set_num_threads(1)  # one thread per actor: the actors are the parallelism
            self.model = _load(model_name, late_interaction, device="cuda" if gpus else None)

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            rows = []
            for payload in batch["shard"]:
                shard = Shard(**json.loads(payload))
                rows.append(json.dumps(_run_with_retries(
                    lambda s: encode_shard(self.model, s, out, batch_size, decode_workers), shard, max_retries)))
            return {"result": rows}

    ds = ray.data.from_items([{"shard": json.dumps(asdict(s))} for s in shards], override_num_blocks=len(shards))
    res = ds.map_batches(ShardEncoder, batch_size=1, concurrency=actors, num_gpus=1 if gpus else 0,
                         num_cpus=decode_workers if gpus else cpus_each)
    return [json.loads(r["result"]) for r in res.take_all()]


def _read_table(path: Path) -> tuple[list[str], Any, list[Any] | None]:
    """(ids, vectors, signatures or None) of one shard: vectors are ``(n, d)`` or a list of ``(t_i, d)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    col = t.column("embedding").combine_chunks()
    ids = t.column("id").to_pylist()
    sigs = t.column("signature").to_pylist() if "signature" in t.column_names else None
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        return ids, col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False), sigs
    if pa.types.is_list(col.type) and pa.types.is_fixed_size_list(col.type.value_type):
        dim = col.type.value_type.list_size
        lens = np.diff(col.offsets.to_numpy())
        flat = col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
        return ids, np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else [], sigs
    raise InvalidInputError(f"'{path}': the 'embedding' column has type {col.type}, not (lists of) fixed-size float vectors.")


def embedding_files(emb_dir: str | Path) -> list[Path]:
    files = sorted(Path(emb_dir).glob("*.parquet"))
    if not files:
        raise InvalidInputError(f"no embedding shards (*.parquet) in '{emb_dir}'. Run `xmodal encode` first.")
    return files


def iter_embedding_shards(emb_dir: str | Path) -> Iterator[tuple[list[str], Any, list[Any] | None]]:
    """Stream ``(ids, vectors, signatures)`` per shard, in shard-name order: one shard in memory at a time.

    ``vectors`` is ``(n, d)`` float32 for single-vector shards and a list of ``(t_i, d)`` arrays for
    multi-vector ones; ``signatures`` is a list of ``[size, mtime_ns]`` (folder/CSV sources) or None.
    """
    for f in embedding_files(emb_dir):
        yield _read_table(f)


def read_embedding_shards(emb_dir: str | Path) -> Iterator[tuple[list[str], Any]]:
    """Stream ``(ids, vectors)`` per shard, in shard-name order, without loading everything at once."""
    for ids, vecs, _ in iter_embedding_shards(emb_dir):
        yield ids, vecs
