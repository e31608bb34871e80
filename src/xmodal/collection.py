"""Image collections: a folder of images indexed by a dual encoder, kept in sync incrementally.

``build_collection`` walks a folder, encodes only images that are new or changed since the last
run, removes images that disappeared, skips (and reports) unreadable files, and saves progress in
chunks so an interrupted run resumes where it stopped. The result is an index folder that also
records the image root and the model, so ``xmodal search`` needs nothing else.

Layout of an index folder: the index engine's files (manifest.json, ...), ``collection.json``
({"root", "model", "engine", "failed"}), and while building, ``.build/chunk-*.npz`` (resume state).
Item ids are image paths relative to the root (posix), so ids stay stable across runs.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .data.images import find_images, open_image
from .errors import IndexNotFoundError, InvalidInputError, XmodalError
from .io import atomic_path, atomic_write_json
from .indexes import load_index
from .indexes.manifest import MANIFEST_NAME
from .indexes.registry import get_engine

COLLECTION_FILE = "collection.json"
BUILD_DIR = ".build"

@dataclass
class BuildReport:
    """What one ``build_collection`` run did."""

    total: int = 0  # images found in the folder
    added: int = 0  # newly encoded and added (new or changed files)
    removed: int = 0  # ids dropped (files gone or changed)
    unchanged: int = 0
    resumed: int = 0  # taken from an interrupted run's saved chunks instead of re-encoding
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    seconds: float = 0.0
    index_size: int = 0

    def summary(self) -> str:
        s = (f"{self.total} images: {self.added} added, {self.removed} removed, {self.unchanged} unchanged, "
             f"{len(self.failed)} failed; index holds {self.index_size} items ({self.seconds:.1f} s)")
        if self.resumed:
            s += f"; {self.resumed} resumed from an interrupted run"
        return s


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def save_collection_info(folder: str | Path, *, root: str | Path, model: str | None, engine: str,
                         failed: list | None = None) -> None:
    """Write ``collection.json`` (image root, model, engine, unreadable files): the folder becomes a collection."""
    atomic_write_json(Path(folder) / COLLECTION_FILE, {"root": str(root), "model": model, "engine": engine,
                                                        "failed": list(failed or [])})


def _load_chunks(build_dir: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """id -> (vector, signature) from the saved chunks of an interrupted run."""
    done: dict[str, tuple[np.ndarray, list[int]]] = {}
    for f in sorted(build_dir.glob("chunk-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                ids, vecs, sigs = z["ids"].tolist(), z["vectors"], z["signatures"].tolist()
        except Exception:  # a chunk cut off mid-write is simply encoded again
            continue
        for i, v, s in zip(ids, vecs, sigs):
            done[str(i)] = (v, list(s))
    return done


def build_collection(
    image_dir: str | Path,
    model: Any,
    out: str | Path,
    *,
    engine: str = "faiss",
    batch_size: int = 32,
    chunk_size: int = 256,
    workers: int = 4,
    show_progress: bool = True,
    stop_after: int | None = None,
    **index_options: Any,
) -> BuildReport:
    """Index (or update the index of) every image below ``image_dir`` into the folder ``out``.

    Args:
        model: a ``DualEncoder`` or a name/path for ``DualEncoder.from_pretrained``.
        engine: index backend: a name in the engine table ``xmodal.indexes.registry.ENGINES`` (default faiss).
        chunk_size: images encoded between two saves of resume state.
        workers: threads decoding images in parallel with encoding.
        stop_after: stop (as if interrupted) after this many chunks; for tests of resuming.
        index_options: passed to the engine factory, e.g. ``kind="hnsw"`` for FAISS.
    """
    t_start = time.perf_counter()
    image_dir, out = Path(image_dir).resolve(), Path(out)
    model_name = model if isinstance(model, str) else getattr(model, "model_id", None)
    if isinstance(model, (str, Path)):
        p = Path(model)
        model_name = str(p.resolve()) if p.is_dir() else str(model)
        if (out / MANIFEST_NAME).exists() and (out / COLLECTION_FILE).exists():  # updating: the index's engine decides
            engine = json.loads((out / COLLECTION_FILE).read_text()).get("engine", engine)
        model = load_encoder(model, engine)
    files = find_images(image_dir)
    report = BuildReport(total=len(files))
    current = {p.relative_to(image_dir).as_posix(): p for p in files}

    if (out / MANIFEST_NAME).exists():  # an earlier complete run: update it
        index = load_index(out, model_id=model.model_id, dimension=model.embedding_dim)
    else:
        index = get_engine(engine).create(model.embedding_dim, model.model_id, out, **index_options)
    indexed = {i: index.metadata(i) for i in index.ids()}

    # What changed since the last run: ids whose file is gone or whose size/mtime differ.
    sigs = {rel: _signature(p) for rel, p in current.items()}
    stale = [i for i, m in indexed.items() if i not in current or m.get("signature") != sigs[i]]
    todo = [rel for rel in current if rel not in indexed or rel in set(stale)]
    report.unchanged = len(current) - len(todo)

    build_dir = out / BUILD_DIR
    build_dir.mkdir(parents=True, exist_ok=True)
    save_collection_info(out, root=image_dir, model=model_name, engine=index.engine)
    resumed = {i: v for i, v in _load_chunks(build_dir).items() if i in current and v[1] == sigs[i]}
    report.resumed = sum(1 for rel in todo if rel in resumed)
    to_encode = [rel for rel in todo if rel not in resumed]

    def load(rel: str) -> tuple[str, Any]:
        try:
            return rel, open_image(current[rel])
        except InvalidInputError as e:
            return rel, e

    n_chunks = len(list(build_dir.glob("chunk-*.npz")))
    bar = tqdm(total=len(to_encode), desc="indexing images", unit="img", disable=not show_progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for c, start in enumerate(range(0, len(to_encode), chunk_size)):
            if stop_after is not None and c >= stop_after:
                bar.close()
                raise KeyboardInterrupt(f"stopped after {stop_after} chunks (stop_after)")
            loaded = list(pool.map(load, to_encode[start:start + chunk_size]))
            good = [(rel, img) for rel, img in loaded if not isinstance(img, Exception)]
            report.failed += [(rel, str(img)) for rel, img in loaded if isinstance(img, Exception)]
            if good:
                vecs = model.encode_image([img for _, img in good], batch_size=batch_size, show_progress=False)
                with atomic_path(build_dir / f"chunk-{n_chunks:06d}.npz") as tmp, open(tmp, "wb") as f:
                    np.savez(f, ids=np.array([r for r, _ in good]), vectors=vecs,
                             signatures=np.array([sigs[r] for r, _ in good], dtype=np.int64))
                n_chunks += 1
            bar.update(len(loaded))
    bar.close()

    # Apply the whole difference at once, then save atomically; resume state goes last.
    encoded = _load_chunks(build_dir)
    report.removed = index.remove(stale) if stale else 0
    new_ids = [rel for rel in todo if rel in encoded]
    if new_ids:
        index.add(new_ids, np.stack([encoded[r][0] for r in new_ids]),
                  metadata=[{"path": r, "signature": encoded[r][1]} for r in new_ids])
    report.added = len(new_ids)
    save_collection_info(out, root=image_dir, model=model_name, engine=index.engine, failed=report.failed)
    index.save(out)
    for f in build_dir.glob("*"):
        f.unlink()
    build_dir.rmdir()
    report.index_size = len(index)
    report.seconds = time.perf_counter() - t_start
    return report


class Collection:
    """An index folder made by ``build_collection``: the index, the image root and the model name."""

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        cfile = self.folder / COLLECTION_FILE
        if not cfile.exists():
            if not self.folder.exists():
                raise IndexNotFoundError(f"no index at '{self.folder}': the folder does not exist. Build one with `xmodal index IMAGE_DIR --out {self.folder}`.")
            raise IndexNotFoundError(f"'{self.folder}' is not an xmodal image index (no {COLLECTION_FILE}). Build one with `xmodal index`.")
        info = json.loads(cfile.read_text())
        self.root = Path(info["root"])
        self.model_name: str | None = info.get("model")
        self.engine: str = info.get("engine", "faiss")
        self.failed: list = info.get("failed", [])
        self.index = load_index(self.folder, verify=verify)

    def __len__(self) -> int:
        return len(self.index)

    def image_path(self, item_id: str) -> Path:
        """The file of an item, refusing ids that are unknown or would point outside the root."""
        if not _contains(self.index, item_id):
            raise InvalidInputError(f"unknown item id '{item_id}'.")
        rel = self.index.metadata(item_id).get("path", item_id)
        root = self.root.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise InvalidInputError(f"item '{item_id}' points outside the collection root; refused.")
        return path

    def load_model(self, model: str | None = None, device: str | None = None) -> Any:
        name = model or self.model_name
        if not name:
            raise XmodalError(f"the index at '{self.folder}' does not record its model; pass --model.")
        encoder = load_encoder(name, self.engine, device=device)
        from .indexes.manifest import check_compatible, read_manifest

        check_compatible(read_manifest(self.folder, verify=False), self.folder, model_id=encoder.model_id,
                         dimension=encoder.embedding_dim)
        return encoder

    def retriever(self, model: Any = None, reranker: Any = None, depth: int = 50) -> Any:
        from .retrieve.retriever import Retriever

        encoder = model if model is not None and not isinstance(model, str) else self.load_model(model)
        return Retriever(encoder, self.index, reranker=reranker, depth=depth, resolve=lambda i: self.image_path(i))


def load_encoder(name: str | Path, engine: str = "faiss", device: str | None = None) -> Any:
    """The encoder an index engine needs: the model's own class, in the role (single/multi-vector) of the engine.

    The multi-vector engines alone keep their old convenience: a plain dual encoder given to them is
    wrapped with fresh (untrained) token projections (``adapt_dual``).
    """
    from .models import load_model

    role = get_engine(engine).role
    return load_model(name, role=role, device=device, adapt_dual=role == "multi-vector")


def _contains(index: Any, item_id: str) -> bool:
    try:
        return item_id in index
    except TypeError:  # a backend without __contains__
        return item_id in set(index.ids())


def open_collection(folder: str | Path, verify: bool = True) -> Collection:
    """Open an index folder made by ``xmodal index`` / ``build_collection``."""
    return Collection(folder, verify=verify)
