"""Image collections: a folder of images indexed by a dual encoder, kept in sync incrementally.

``build_collection`` walks a folder, encodes only images that are new or changed since the last
run, removes images that disappeared, skips (and reports) unreadable files, and saves progress in
chunks so an interrupted run resumes where it stopped. The result is an index folder that also
records the image root and the model, so ``xmodal search`` needs nothing else.

Layout of an index folder: the index engine's files and the collection record (``CollectionInfo``,
logical name ``collection.json``), all listed and checksummed by ``manifest.json``; ``.xmodal.lock``
(the folder lock); while building, ``.build/chunk-*.npz`` (resume state of this run only).
Item ids are image paths relative to the root (posix), so ids stay stable across runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .data.images import find_images, open_image
from .data.metadata import file_facts, read_metadata_file, sidecar
from .errors import CorruptIndexError, IndexNotFoundError, InvalidInputError, XmodalError
from .indexes import load_index
from .indexes.manifest import (MANIFEST_NAME, check_compatible, check_fingerprint, check_index_target, companion_files,
                               read_manifest, write_companion)
from .io import atomic_path, clean_stale, fault_point, folder_lock
from .indexes.lexical import LEXICAL_FILE, LexicalIndex, item_text
from .indexes.registry import get_engine

COLLECTION_FILE = "collection.json"
BUILD_DIR = ".build"
FALLBACK_SIDE = 1024  # decode side when a model does not say its input size


@dataclass
class CollectionInfo:
    """``collection.json``: image root, model, engine and unreadable files -- read and written only here.

    It is stored as a companion file of the index (``indexes.manifest.companion_files``): written in the
    same atomic commit as the index and covered by the manifest's checksums. Index folders of older
    versions keep it as a plain ``collection.json`` beside the manifest; those are still read.
    """

    root: str | None = None
    model: str | None = None
    engine: str = "faiss"
    failed: list[list[str]] = field(default_factory=list)
    kind: str = "images"  # "images": ids are paths below root; "texts": the items are texts (index-texts)
    source: str | None = None  # texts: the records file the collection was built from
    metadata_file: str | None = None  # the --metadata file, read again by later updates

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: Path) -> "CollectionInfo":
        try:
            d = json.loads(data)
        except ValueError as e:
            raise CorruptIndexError(f"'{where.parent}': its {COLLECTION_FILE} cannot be parsed ({e}). "
                                    "Rebuild the index with `xmodal index`.") from None
        ok = (isinstance(d, dict) and isinstance(d.get("root"), (str, type(None)))
              and isinstance(d.get("model"), (str, type(None))) and isinstance(d.get("engine", "faiss"), str)
              and isinstance(d.get("failed", []), list))
        if not ok:
            raise CorruptIndexError(f"'{where.parent}': its {COLLECTION_FILE} is not a collection record "
                                    "({root, model, engine, failed}). Rebuild the index with `xmodal index`.")
        return cls(root=d.get("root"), model=d.get("model"), engine=d.get("engine") or "faiss",
                   failed=[list(f) if isinstance(f, (list, tuple)) else [str(f), ""] for f in d.get("failed", [])],
                   kind=str(d.get("kind") or "images"), source=d.get("source"),
                   metadata_file=d.get("metadata_file") if isinstance(d.get("metadata_file"), str) else None)

    @staticmethod
    def location(folder: str | Path) -> Path | None:
        """Where the folder's collection record is stored, or None if it has none."""
        folder = Path(folder)
        if (folder / MANIFEST_NAME).is_file():
            try:
                m = read_manifest(folder, verify=False)
            except XmodalError:
                m = None
            if m is not None and COLLECTION_FILE in m.checksums:
                return m.path(folder, COLLECTION_FILE)
        legacy = folder / COLLECTION_FILE
        return legacy if legacy.is_file() else None

    @classmethod
    def read(cls, folder: str | Path) -> "CollectionInfo | None":
        path = cls.location(folder)
        return None if path is None else cls.from_bytes(path.read_bytes(), path)

    def write(self, folder: str | Path) -> None:
        """Attach this record to the index already saved in ``folder`` (one atomic manifest commit)."""
        write_companion(folder, COLLECTION_FILE, self.to_bytes())
        _drop_legacy_file(Path(folder))

    @staticmethod
    def remove(folder: str | Path) -> None:
        """The folder is no longer a collection (e.g. rebuilt from shards whose ids are not paths)."""
        write_companion(folder, COLLECTION_FILE, None)
        _drop_legacy_file(Path(folder))


def _drop_legacy_file(folder: Path) -> None:
    legacy = folder / COLLECTION_FILE
    m = read_manifest(folder, verify=False) if (folder / MANIFEST_NAME).is_file() else None
    if legacy.is_file() and (m is None or m.files.get(COLLECTION_FILE, COLLECTION_FILE) != COLLECTION_FILE):
        legacy.unlink()


def save_collection_info(folder: str | Path, *, root: str | Path, model: str | None, engine: str,
                         failed: list | None = None) -> None:
    """Make the index in ``folder`` a collection (image root, model, engine, unreadable files)."""
    CollectionInfo(root=str(root), model=model, engine=engine, failed=[list(f) for f in failed or []]).write(folder)


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
    unit: str = "images"  # what the items are ("texts" for index-texts)
    metadata_updated: int = 0  # unchanged files whose metadata (manifest/sidecar) changed: updated, not re-encoded
    metadata_unmatched: int = 0  # records of the --metadata file naming no image of the folder
    lexical_size: int | None = None  # items with a text in the lexical (BM25) index; None: none built

    def summary(self) -> str:
        s = (f"{self.total} {self.unit}: {self.added} added, {self.removed} removed, {self.unchanged} unchanged, "
             f"{len(self.failed)} failed; index holds {self.index_size} items ({self.seconds:.1f} s)")
        if self.resumed:
            s += f"; {self.resumed} resumed from an interrupted run"
        if self.metadata_updated:
            s += f"; metadata updated for {self.metadata_updated} unchanged {self.unit}"
        if self.metadata_unmatched:
            s += f"; {self.metadata_unmatched} metadata records match no image"
        if self.lexical_size is not None:
            s += f"; lexical (BM25) index: {self.lexical_size} texts"
        return s


@dataclass(frozen=True)
class Plan:
    """What an update has to do: ids to encode (new, changed), to drop (changed, removed), to keep."""

    new: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]

    @property
    def to_encode(self) -> list[str]:
        return self.new + self.changed

    @property
    def to_remove(self) -> list[str]:
        return self.changed + self.removed


def plan_sync(current: Mapping[str, Any], indexed: Mapping[str, Any]) -> Plan:
    """Compare ``current`` {id: signature} (the files now) with ``indexed`` {id: signature} (the index).

    Pure and linear: one pass over each mapping with O(1) lookups (the old list-in-set test was quadratic).
    Order follows ``current`` (then ``indexed`` for removals), so plans are deterministic.
    """
    new: list[str] = []
    changed: list[str] = []
    unchanged: list[str] = []
    for key, sig in current.items():
        if key not in indexed:
            new.append(key)
        elif indexed[key] != sig:
            changed.append(key)
        else:
            unchanged.append(key)
    removed = [key for key in indexed if key not in current]
    return Plan(new, changed, removed, unchanged)


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _load_chunks(build_dir: Path, run: str) -> dict[str, tuple[np.ndarray, list[int]]]:
    """id -> (vector, signature) from the saved chunks of an interrupted run of this same job.

    ``run`` names the job (image root, model id, weight fingerprint): chunks of any other run -- another
    folder with the same file names, another model -- are never mixed in, and are deleted.
    """
    done: dict[str, tuple[np.ndarray, list[int]]] = {}
    for f in sorted(build_dir.glob("chunk-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                ours = "run" in z.files and str(z["run"]) == run
                if ours:
                    ids, vecs, sigs = z["ids"].tolist(), z["vectors"], z["signatures"].tolist()
        except Exception:  # a chunk cut off mid-write is simply encoded again
            ours = False
        if not ours:
            f.unlink(missing_ok=True)
            continue
        for i, v, s in zip(ids, vecs, sigs):
            done[str(i)] = (v, list(s))
    return done


def _input_side(model: Any) -> int:
    """The model's input image side (pixels), to decode images no larger than needed."""
    backbone = getattr(model, "backbone", None) or getattr(getattr(model, "model", None), "backbone", None)
    net = getattr(backbone, "model", None)
    for size in (getattr(getattr(getattr(net, "config", None), "vision_config", None), "image_size", None),
                 getattr(getattr(net, "visual", None), "image_size", None),
                 getattr(model, "image_size", None)):
        if isinstance(size, (tuple, list)) and size:
            size = max(size)
        if isinstance(size, int) and size > 0:
            return size
    return FALLBACK_SIDE


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
    allow_model_mismatch: bool = False,
    texts: str | Path | None = None,
    text_fields: Sequence[str] | None = None,
    metadata: str | Path | None = None,
    **index_options: Any,
) -> BuildReport:
    """Index (or update the index of) every image below ``image_dir`` into the folder ``out``.

    ``out`` must be absent, empty or an xmodal index (anything else is refused untouched); it is locked
    for the whole run, so a second run on it refuses at once (``XmodalError``) instead of mixing results.

    Args:
        model: a ``DualEncoder`` or a name/path for ``DualEncoder.from_pretrained``.
        engine: index backend: a name in the engine table ``xmodal.indexes.registry.ENGINES`` (default faiss).
        chunk_size: images encoded between two saves of resume state.
        workers: threads decoding images in parallel with encoding.
        allow_model_mismatch: update an index although the model's weights differ from those it was built with.
        texts: a records file (``data.records``: JSONL/CSV/TSV keyed by relative path in a ``path`` or ``id``
            column) whose fields give each image its text for lexical (BM25) search; recorded, so later
            runs re-read it. ``text_fields`` picks the fields (default: every text field of the file).
        metadata: a CSV/TSV/JSONL file of per-image fields keyed by relative path (``data.metadata``); later
            updates read the recorded file again. JSON sidecars (``photo.jpg.json``) and file facts (size,
            mtime, width, height, EXIF date) are always recorded. A change of metadata alone updates the
            item's metadata without re-encoding it.
        index_options: passed to the engine factory, e.g. ``kind="hnsw"`` for FAISS.

    Tests crash a run at a chosen step with ``xmodal.io.set_fault_hook`` (steps ``collection:chunk-saved``,
    ``collection:merged`` and those of the index save).
    """
    image_dir, out = Path(image_dir).resolve(), Path(out)
    check_index_target(out)
    with folder_lock(out, "another `xmodal index` run"):
        return _build_locked(image_dir, model, out, engine=engine, batch_size=batch_size, chunk_size=chunk_size,
                             workers=workers, show_progress=show_progress,
                             allow_model_mismatch=allow_model_mismatch, index_options=index_options,
                             texts=texts, text_fields=text_fields, metadata=metadata)


def _build_locked(image_dir: Path, model: Any, out: Path, *, engine: str, batch_size: int, chunk_size: int,
                  workers: int, show_progress: bool, allow_model_mismatch: bool,
                  index_options: dict[str, Any], texts: str | Path | None = None,
                  text_fields: Sequence[str] | None = None, metadata: str | Path | None = None) -> BuildReport:
    from .models.fingerprint import weights_fingerprint

    t_start = time.perf_counter()
    clean_stale(out)  # what interrupted saves left behind (we hold the lock: nobody else is writing)
    existing = (out / MANIFEST_NAME).exists()
    info = CollectionInfo.read(out) if existing else None
    model_name = model if isinstance(model, str) else getattr(model, "model_id", None)
    if isinstance(model, (str, Path)):
        p = Path(model)
        model_name = str(p.resolve()) if p.is_dir() else str(model)
        if info is not None:  # updating: the index's engine decides
            engine = info.engine
        model = load_encoder(model, engine)
    fingerprint = weights_fingerprint(model)
    files = find_images(image_dir)
    report = BuildReport(total=len(files))
    current = {p.relative_to(image_dir).as_posix(): p for p in files}
    metadata_file = str(Path(metadata).resolve()) if metadata else (info.metadata_file if info is not None else None)
    user_meta = read_metadata_file(metadata_file) if metadata_file else {}  # read before any work: bad files fail fast
    report.metadata_unmatched = sum(1 for rel in user_meta if rel not in current)

    if existing:  # an earlier complete run: update it
        index = load_index(out, model_id=model.model_id, dimension=model.embedding_dim)
        check_fingerprint(read_manifest(out, verify=False), out, fingerprint, allow_model_mismatch)
    else:
        index = get_engine(engine).create(model.embedding_dim, model.model_id, out, **index_options)

    # What changed since the last run: ids whose file is new, gone, or of another size/mtime.
    sigs = {rel: _signature(p) for rel, p in current.items()}
    # engines that stream (id, metadata) pairs (Milvus: no local mirror) are read in batches, not per item
    pairs = index.metadata_items() if hasattr(index, "metadata_items") else ((i, index.metadata(i)) for i in index.ids())
    plan = plan_sync(sigs, {i: m.get("signature") for i, m in pairs})
    todo, stale = plan.to_encode, plan.to_remove
    report.unchanged = len(plan.unchanged)
    # metadata-only changes (manifest rows, sidecars) of unchanged files: new records, no re-encoding
    meta_updates = {}
    for rel in plan.unchanged:
        stored = index.metadata(rel)
        # facts of an unchanged file are those recorded (an index of an older version gets them once)
        facts = {k: stored[k] for k in FACT_KEYS if k in stored} if "size" in stored else file_facts(current[rel])
        wanted = _record(rel, sigs[rel], facts, user_meta, current[rel])
        if wanted != stored:
            meta_updates[rel] = wanted

    build_dir = out / BUILD_DIR
    build_dir.mkdir(parents=True, exist_ok=True)
    run = json.dumps({"root": str(image_dir), "model": model.model_id, "fingerprint": fingerprint}, sort_keys=True)
    resumed = {i: v for i, v in _load_chunks(build_dir, run).items() if i in current and v[1] == sigs[i]}
    report.resumed = sum(1 for rel in todo if rel in resumed)
    to_encode = [rel for rel in todo if rel not in resumed]
    side = _input_side(model)

    def load(rel: str) -> tuple[str, Any]:
        try:  # downscaled right after decoding: a 12 MP photo costs ~1 MB, not 36 MB, while it waits
            return rel, open_image(current[rel], min_side=side)
        except InvalidInputError as e:
            return rel, e

    n_chunks = len(list(build_dir.glob("chunk-*.npz")))
    bar = tqdm(total=len(to_encode), desc="indexing images", unit="img", disable=not show_progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(to_encode), chunk_size):
            chunk = to_encode[start:start + chunk_size]
            # Decoded images in flight are bounded by two encoder batches (this one and the next, decoding
            # meanwhile), not by the chunk: a chunk only bounds the work lost to an interruption.
            batches = [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
            ids: list[str] = []
            vecs: list[np.ndarray] = []
            pending = pool.map(load, batches[0]) if batches else iter(())
            for n in range(len(batches)):
                loaded = list(pending)
                pending = pool.map(load, batches[n + 1]) if n + 1 < len(batches) else iter(())
                good = [(rel, img) for rel, img in loaded if not isinstance(img, Exception)]
                report.failed += [(rel, str(img)) for rel, img in loaded if isinstance(img, Exception)]
                if good:
                    enc = model.encode_image([img for _, img in good], batch_size=batch_size, show_progress=False)
                    if isinstance(enc, list) and len({len(v) for v in enc}) > 1:  # ColQwen2: vectors per page vary
                        raise InvalidInputError(
                            f"{getattr(model, 'model_id', 'this model')} gives a different number of vectors per image "
                            "(pages of different sizes); folder indexes need one count per image. Use "
                            "xmodal.index_collection(model, pages, path) in Python, or pages of one size.")
                    vecs.append(np.asarray(enc))
                    ids += [rel for rel, _ in good]
                del loaded, good
                bar.update(len(batches[n]))
            if ids:
                with atomic_path(build_dir / f"chunk-{n_chunks:06d}.npz") as tmp, open(tmp, "wb") as f:
                    np.savez(f, ids=np.array(ids), vectors=_stack(vecs),
                             signatures=np.array([sigs[r] for r in ids], dtype=np.int64), run=np.array(run))
                n_chunks += 1
                fault_point("collection:chunk-saved")
    bar.close()

    # Apply the whole difference at once, then save atomically; resume state goes last. Only vectors of
    # this run whose file signature still matches the file being indexed are taken.
    encoded = _load_chunks(build_dir, run)
    new_ids = [rel for rel in todo if rel in encoded and encoded[rel][1] == sigs[rel]]
    report.removed = index.remove(stale) if stale else 0
    if new_ids:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # header reads only
            facts = list(pool.map(lambda r: file_facts(current[r]), new_ids))
        index.add(new_ids, np.stack([encoded[r][0] for r in new_ids]),
                  metadata=[_record(r, encoded[r][1], f, user_meta, current[r]) for r, f in zip(new_ids, facts)])
    if meta_updates:
        index.update_metadata(list(meta_updates), list(meta_updates.values()))
    report.metadata_updated = len(meta_updates)
    report.added = len(new_ids)
    fault_point("collection:merged")
    record = CollectionInfo(root=str(image_dir), model=model_name, engine=index.engine,
                            failed=[list(f) for f in report.failed], metadata_file=metadata_file)
    companions = {COLLECTION_FILE: record.to_bytes()}
    lexical = sync_lexical(out if existing else None, index, texts=texts, text_fields=text_fields)
    if lexical is not None:
        companions[LEXICAL_FILE] = lexical.to_bytes()
    with companion_files(companions, fingerprint=fingerprint):
        index.save(out)
    _drop_legacy_file(out)
    shutil.rmtree(build_dir, ignore_errors=True)
    report.index_size = len(index)
    report.lexical_size = len(lexical) if lexical is not None else None
    report.seconds = time.perf_counter() - t_start
    return report


def build_text_collection(file: str | Path, model: Any, out: str | Path, *, engine: str = "faiss",
                          id_field: str = "id", text_field: str = "text", text_fields: Sequence[str] | None = None,
                          batch_size: int = 64, show_progress: bool = True, allow_model_mismatch: bool = False,
                          **index_options: Any) -> BuildReport:
    """Index (or update the index of) the texts of a records file (``data.records``: JSONL/CSV/TSV/TXT).

    Every record is an item: its text is encoded with the model's text tower (so images and texts can
    query it), all its fields are kept as metadata (the text under ``text``), and a BM25 index is built
    over ``text_fields`` (default: the text). Re-runs encode only records that are new or changed and drop
    those gone from the file. ``out`` follows the rules of ``build_collection`` (checked, locked, atomic).
    """
    from .data.records import read_records
    from .models.fingerprint import weights_fingerprint

    t_start = time.perf_counter()
    records = read_records(file, id_field=id_field, text_field=text_field)
    out = Path(out)
    check_index_target(out)
    with folder_lock(out, "another `xmodal index` run"):
        clean_stale(out)
        existing = (out / MANIFEST_NAME).exists()
        info = CollectionInfo.read(out) if existing else None
        if existing and (info is None or info.kind != "texts"):
            raise InvalidInputError(f"'{out}' is an index of images, not of texts; give another --out for the texts.")
        model_name = model if isinstance(model, str) else getattr(model, "model_id", None)
        if isinstance(model, (str, Path)):
            p = Path(model)
            model_name = str(p.resolve()) if p.is_dir() else str(model)
            engine = info.engine if info is not None else engine
            model = load_encoder(model, engine)
        fingerprint = weights_fingerprint(model)
        if existing:
            index = load_index(out, model_id=model.model_id, dimension=model.embedding_dim)
            check_fingerprint(read_manifest(out, verify=False), out, fingerprint, allow_model_mismatch)
        else:
            index = get_engine(engine).create(model.embedding_dim, model.model_id, out, **index_options)
        rows = {r.id: {**r.fields, "text": r.text} for r in records}
        sigs = {i: hashlib.sha256(json.dumps(f, sort_keys=True, default=str).encode()).hexdigest()[:32]
                for i, f in rows.items()}
        plan = plan_sync(sigs, {i: index.metadata(i).get("signature") for i in index.ids()})
        report = BuildReport(total=len(records), unchanged=len(plan.unchanged), unit="texts")
        report.removed = index.remove(plan.to_remove) if plan.to_remove else 0
        todo = plan.to_encode
        bar = tqdm(total=len(todo), desc="indexing texts", unit="text", disable=not show_progress)
        for start in range(0, len(todo), 1024):  # bounded memory: a few thousand vectors per add
            ids = todo[start:start + 1024]
            vecs = model.encode_text([rows[i]["text"] for i in ids], batch_size=batch_size, show_progress=False)
            index.add(ids, vecs if isinstance(vecs, list) else np.asarray(vecs),
                      metadata=[{**rows[i], "signature": sigs[i]} for i in ids])
            bar.update(len(ids))
        bar.close()
        report.added = len(todo)
        record = CollectionInfo(root=None, model=model_name, engine=index.engine, kind="texts",
                                source=str(Path(file).resolve()))
        lexical = sync_lexical(out if existing else None, index, records=rows,
                               text_fields=text_fields or (None if existing else ["text"]))
        companions = {COLLECTION_FILE: record.to_bytes()}
        if lexical is not None:
            companions[LEXICAL_FILE] = lexical.to_bytes()
        with companion_files(companions, fingerprint=fingerprint):
            index.save(out)
        report.index_size = len(index)
        report.lexical_size = len(lexical) if lexical is not None else None
        report.seconds = time.perf_counter() - t_start
        return report


FACT_KEYS = ("size", "mtime", "width", "height", "taken")


def _record(rel: str, signature: list[int], facts: Mapping[str, Any], user_meta: Mapping[str, Mapping[str, Any]],
            path: Path) -> dict[str, Any]:
    """An item's metadata: file facts, then the manifest's fields, then its sidecar's; ``path``/``signature`` last
    (they are the collection's own bookkeeping and cannot be overridden)."""
    return {**facts, **user_meta.get(rel, {}), **sidecar(path), "path": rel, "signature": list(signature)}


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Vectors of several encoder batches as one array: (n, d), or (n, tokens, d) for multi-vector images."""
    return np.concatenate([np.asarray(p) for p in parts])

ALL_TEXT_FIELDS = "*"  # recorded for "every text field of the records file"


def sync_lexical(folder: Path | None, index: Any, *, texts: str | Path | None = None,
                 text_fields: Sequence[str] | None = None,
                 records: Mapping[str, Mapping[str, Any]] | None = None) -> LexicalIndex | None:
    """The lexical (BM25) index for the items now in ``index``, updated from the last saved one in ``folder``.

    Each item's fields are its index metadata (e.g. from ``--metadata``) overlaid with its row of the records
    file (``texts`` given now, else the one recorded last time); ``text_fields`` (else those recorded, else
    every text field of the records file) are joined into its text. Only new, changed and removed items touch
    the BM25 index. If a recorded texts file is gone, the texts indexed so far are kept for items still
    present. None when there is nothing to index (no texts file, no fields named, none recorded).
    """
    previous = LexicalIndex.read(folder) if folder is not None else None
    source = str(Path(texts).resolve()) if texts is not None else (previous.source if previous else None)
    if previous is None and source is None and records is None and not text_fields:
        return None
    fields = list(text_fields) if text_fields else (previous.fields if previous else [ALL_TEXT_FIELDS])
    if fields == [ALL_TEXT_FIELDS] and source is None and records is None:
        raise InvalidInputError("name the fields to index with BM25 (--text-fields caption,title), or give --texts FILE.")
    lexical = previous or LexicalIndex(fields=fields, source=source)
    present = set(index.ids())
    if records is None and source is not None:
        if texts is None and not Path(source).is_file():  # the recorded file is gone: keep what was indexed
            lexical.fields = fields
            lexical.sync({i: t for i, t in lexical.texts().items() if i in present})
            return lexical
        from .data.records import read_records

        records = {r.id: r.fields for r in read_records(source, id_field=None, require_text=False)}
    lexical.fields, lexical.source = fields, source
    wanted: dict[str, str] = {}
    for item_id in present:
        row = (records or {}).get(item_id, {})
        names = [k for k, v in row.items() if isinstance(v, str) and k not in ("id", "path", "signature")] \
            if fields == [ALL_TEXT_FIELDS] else fields
        text = item_text({**index.metadata(item_id), **row}, names)
        if text:
            wanted[item_id] = text
    lexical.sync(wanted)
    return lexical


class Collection:
    """An index folder made by ``build_collection``: the index, the image root and the model name."""

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder)
        info = CollectionInfo.read(self.folder)
        if info is None:
            if not self.folder.exists():
                raise IndexNotFoundError(f"no index at '{self.folder}': the folder does not exist. Build one with `xmodal index IMAGE_DIR --out {self.folder}`.")
            raise IndexNotFoundError(f"'{self.folder}' is not an xmodal image index (no {COLLECTION_FILE}). Build one with `xmodal index`.")
        if not info.root and info.kind != "texts":
            raise CorruptIndexError(f"'{self.folder}': its {COLLECTION_FILE} names no image root. Rebuild the index with `xmodal index`.")
        self.info = info
        self.kind = info.kind  # "images" or "texts"
        self.root = Path(info.root) if info.root else None
        self.model_name: str | None = info.model
        self.engine: str = info.engine
        self.failed: list = info.failed
        self.index = load_index(self.folder, verify=verify)
        self._lexical: LexicalIndex | None | bool = False  # False: not read yet

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lexical(self) -> LexicalIndex | None:
        """The BM25 index over the items' texts (None if built without texts); read on first use."""
        if self._lexical is False:
            self._lexical = LexicalIndex.read(self.folder)
        return self._lexical  # type: ignore[return-value]

    def text(self, item_id: str) -> str | None:
        """A text collection's item text (None for an image collection)."""
        return self.index.metadata(item_id).get("text") if self.kind == "texts" else None

    def image_path(self, item_id: str) -> Path:
        """The file of an item, refusing ids that are unknown or would point outside the root."""
        if not _contains(self.index, item_id):
            raise InvalidInputError(f"unknown item id '{item_id}'.")
        if self.root is None:
            raise InvalidInputError(f"item '{item_id}' is a text of a text collection; it has no image file.")
        rel = self.index.metadata(item_id).get("path", item_id)
        root = self.root.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise InvalidInputError(f"item '{item_id}' points outside the collection root; refused.")
        return path

    def load_model(self, model: str | None = None, device: str | None = None,
                   allow_model_mismatch: bool = False, dtype: Any = None) -> Any:
        name = model or self.model_name
        if not name:
            raise XmodalError(f"the index at '{self.folder}' does not record its model; pass --model.")
        encoder = load_encoder(name, self.engine, device=device, dtype=dtype)
        self.check_model(encoder, allow_model_mismatch)
        return encoder

    def check_model(self, encoder: Any, allow_model_mismatch: bool = False) -> None:
        """Refuse a model whose id, dimension or weights differ from those the index was built with."""
        from .models.fingerprint import weights_fingerprint

        manifest = read_manifest(self.folder, verify=False)
        check_compatible(manifest, self.folder, model_id=encoder.model_id, dimension=encoder.embedding_dim)
        if manifest.fingerprint is not None:
            check_fingerprint(manifest, self.folder, weights_fingerprint(encoder), allow_model_mismatch)

    def retriever(self, model: Any = None, reranker: Any = None, depth: int = 50,
                  allow_model_mismatch: bool = False, device: Any = None, dtype: Any = None,
                  lexical: bool = True) -> Any:
        """A ``Retriever`` over this collection (``lexical=False``: skip reading the BM25 index, dense only)."""
        from .retrieve.retriever import Retriever

        if model is not None and not isinstance(model, str):
            encoder = model
            self.check_model(encoder, allow_model_mismatch)
        else:  # loaded straight onto device/dtype (the fingerprint of the weights as loaded is kept)
            encoder = self.load_model(model, device=device, dtype=dtype, allow_model_mismatch=allow_model_mismatch)
        resolve = None if self.kind == "texts" else (lambda i: self.image_path(i))  # texts: metadata "text"
        return Retriever(encoder, self.index, reranker=reranker, depth=depth, resolve=resolve,
                         device=device, dtype=dtype, lexical=self.lexical if lexical else None)


def load_encoder(name: str | Path, engine: str = "faiss", device: str | None = None, dtype: Any = None) -> Any:
    """The encoder an index engine needs: the model's own class, in the role (single/multi-vector) of the engine.

    The multi-vector engines alone keep their old convenience: a plain dual encoder given to them is
    wrapped with fresh (untrained) token projections (``adapt_dual``).
    """
    from .models import load_model

    role = get_engine(engine).role
    return load_model(name, role=role, device=device, dtype=dtype, adapt_dual=role == "multi-vector")


def _contains(index: Any, item_id: str) -> bool:
    try:
        return item_id in index
    except TypeError:  # a backend without __contains__
        return item_id in set(index.ids())


def open_collection(folder: str | Path, verify: bool = True) -> Collection:
    """Open an index folder made by ``xmodal index`` / ``build_collection``."""
    return Collection(folder, verify=verify)
