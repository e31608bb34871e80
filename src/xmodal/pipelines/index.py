"""``index_folder`` and ``index_from_embeddings``: what ``xmodal index`` does, as library calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..collection import COLLECTION_FILE, BuildReport, CollectionInfo, build_collection
from ..errors import InvalidInputError
from ..indexes.manifest import check_index_target, companion_files
from ..io import folder_lock
from ..indexes.registry import default_engine, get_engine


def recorded_model(out: str | Path) -> str:
    """The model an existing collection was built with (to update it without naming the model again)."""
    info = CollectionInfo.read(out)
    if info is None:
        raise InvalidInputError("no --model given and no existing index to take it from; pass --model.")
    model = info.model
    if not model:
        raise InvalidInputError(f"the index at '{out}' does not record a loadable model; pass --model.")
    return model


@dataclass
class FolderIndex:
    """What ``index_folder`` did: the ``BuildReport`` (its fields read through: ``.added``, ``.summary()``, ...)
    and the tuned ANN search settings, when the index has them."""

    report: BuildReport
    search_settings: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "report":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.report, name)


def index_folder(image_dir: str | Path, out: str | Path, model: Any = None, *, engine: str | None = None,
                 kind: str | None = None, nbits: int | None = None, uri: str | None = None,
                 collection: str | None = None, batch_size: int = 32, chunk_size: int = 256,
                 show_progress: bool = True, target_recall: float | None = None, texts: str | Path | None = None,
                 text_fields: Sequence[str] | None = None, metadata: str | Path | None = None,
                 quantize: str | None = None, rescore: str | None = None, runtime: str | None = None,
                 refine: str | None = None, **index_options: Any) -> FolderIndex:
    """Index (or incrementally update) every image below ``image_dir`` into the folder ``out``.

    Args:
        model: a model name/folder or a loaded encoder; default: the model recorded in an existing ``out``.
        engine: an index engine of ``xmodal.indexes.registry.ENGINES`` (default ``faiss``).
        kind / nbits / uri / collection: engine options (FAISS kind; late-interaction residual bits, 0 =
            uncompressed; Milvus URI and collection); each goes only to the engines that take it
            (``EngineSpec.options``), None keeps the engine's default.
        target_recall: FAISS hnsw/ivfpq: each save tunes the search settings to this recall@10 (when the index
            changed by more than 10% since the last tuning); kept in the manifest.
        texts / text_fields: a records file (JSONL/CSV/TSV keyed by relative path: a ``path`` or ``id`` column)
            giving images texts (captions, titles, ...) and the fields of it to index with BM25, for
            ``search(mode="lexical"|"hybrid")``; recorded, so later runs re-read the file.
        metadata: CSV/TSV/JSONL of per-image fields keyed by relative path, for ``search(where=...)`` (see
            ``build_collection``); recorded, so later runs re-read the file.
        quantize / rescore: FAISS flat: compact codes (``fp16``, ``int8``, ``binary``) and their re-scoring store
            (``auto``, ``none``, ``fp16``, ``int8``); see ``xmodal.indexes.quantize``. Fixed when the index is
            created: asking an existing index for other codes is refused (rebuild into a new folder).
        refine: FAISS ivfpq: the codes that re-score its candidates: ``sq8`` (default), ``fp16`` (tightly clustered
            embeddings, whose neighbours SQ8 cannot order), ``flat`` or ``none``; fixed when the index is created.
        runtime: ``torch`` or ``onnx`` (encode with onnxruntime: an ONNX export of ``model``, made once into the
            cache when ``model`` is not one); None: as the model is.
        index_options: passed as they are to the engine's factory.
    """
    spec = get_engine(engine or default_engine())
    if model is None:
        model = recorded_model(out)
    check_quantize(spec, out, quantize, rescore)
    check_refine(spec, out, kind, refine)
    if runtime is not None:  # torch / onnx (models/onnx_encoder.py); the index records the model actually used
        from ..models.onnx_encoder import with_runtime

        if not isinstance(model, (str, Path)):
            raise InvalidInputError("runtime= takes a model name or folder, not a loaded model.")
        model = with_runtime(model, runtime)
    options = {**spec.pick_options(kind=kind, nbits=nbits, uri=uri, collection=collection, target_recall=target_recall,
                                   quantize=quantize, rescore=rescore, refine=refine), **index_options}
    report = build_collection(image_dir, model, out, engine=spec.name, batch_size=batch_size, chunk_size=chunk_size,
                              show_progress=show_progress, texts=texts, text_fields=text_fields, metadata=metadata,
                              **options)
    return FolderIndex(report, search_settings(out))


def check_quantize(spec: Any, out: str | Path, quantize: str | None, rescore: str | None) -> None:
    """Refuse ``quantize``/``rescore`` for an engine without them, or one that differs from an existing index's."""
    if quantize is None and rescore in (None, "auto"):
        return
    if "quantize" not in spec.options:
        if quantize in (None, "none") and rescore in (None, "auto", "none"):
            return
        raise InvalidInputError(f"--quantize/--rescore are FAISS options; the '{spec.name}' engine does not take them.")
    from ..indexes.manifest import MANIFEST_NAME, read_manifest

    if not (Path(out) / MANIFEST_NAME).exists():
        return
    params = read_manifest(out, verify=False).params
    stored = params.get("quantize", "none")
    if quantize is not None and quantize != stored:
        raise InvalidInputError(f"the index at '{out}' stores {stored} vectors (quantize={stored}); its codes cannot "
                                f"change in place. Build a new index folder with --quantize {quantize}.")
    if rescore not in (None, "auto") and rescore != params.get("rescore", "none"):
        raise InvalidInputError(f"the index at '{out}' re-scores with {params.get('rescore', 'none')}; build a new "
                                f"index folder with --rescore {rescore}.")


def check_refine(spec: Any, out: str | Path, kind: str | None, refine: str | None) -> None:
    """Refuse ``refine`` for anything but a FAISS IVF-PQ index, or one that differs from an existing index's."""
    if refine is None:
        return
    from ..indexes.faiss_index import refine_codes
    from ..indexes.manifest import MANIFEST_NAME, read_manifest

    if "refine" not in spec.options:
        raise InvalidInputError(f"--refine is a FAISS ivfpq option; the '{spec.name}' engine does not take it.")
    refine_codes(refine)  # unknown names refused
    stored = read_manifest(out, verify=False).params if (Path(out) / MANIFEST_NAME).exists() else None
    if (kind or (stored or {}).get("kind") or "flat") != "ivfpq":
        raise InvalidInputError("--refine applies to --kind ivfpq (flat and hnsw keep float32 vectors).")
    if stored is not None and (stored.get("refine") or "none") != refine:
        raise InvalidInputError(f"the index at '{out}' re-scores with {stored.get('refine') or 'no'} refine codes; they "
                                f"cannot change in place. Build a new index folder with --refine {refine}.")


def search_settings(out: str | Path) -> str | None:
    """The ANN search settings and measured recall recorded in an index manifest, when tuned."""
    from ..indexes.manifest import read_manifest

    tuning = read_manifest(out, verify=False).params.get("tuning")
    if not tuning:
        return None
    from ..indexes.recall import Tuning

    return Tuning.from_dict(tuning).describe()


@dataclass
class EmbeddingsIndex:
    """What ``index_from_embeddings`` built; unpacks as ``index, choice``."""

    index: Any
    choice: Any  # xmodal.indexes.autoindex.IndexChoice
    collection: bool  # ids are image paths: the folder is also a collection (search by path, incremental updates)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.index, self.choice))

    def summary(self, out: str | Path) -> str:
        text = f"index '{out}': {len(self.index)} items, engine={self.index.engine}, index {self.choice.describe()}"
        tuning = getattr(self.index, "tuning", None)
        return text + (f"\nsearch settings: {tuning.describe()}" if tuning is not None else "")


def index_from_embeddings(emb_dir: str | Path, out: str | Path, *, engine: str | None = None, kind: str = "auto",
                          memory_budget_mb: float = 4096, nbits: int | None = None, uri: str | None = None,
                          collection: str = "xmodal", overwrite: bool = False, model_id: str | None = None,
                          train_sample: int | None = None, target_recall: float | None = 0.95,
                          refine: str | None = None) -> EmbeddingsIndex:
    """Build an index from ``xmodal encode`` shards without re-encoding (see ``distributed.embeddings``).

    When the shards come from an image folder or CSV (their ids are relative image paths), ``out``
    also becomes a collection: ``xmodal search OUT`` works, and ``index_folder(FOLDER, OUT)`` later
    adds and removes only the files that changed.
    """
    from ..distributed.embeddings import build_from_embeddings, inspect_embeddings

    out = Path(out)
    info = inspect_embeddings(emb_dir)
    engine_name = get_engine(engine or default_engine(info.multi_vector)).name
    # ids that are image paths make the folder a collection; the record is saved in the index's own commit
    record = ({COLLECTION_FILE: CollectionInfo(root=info.root, model=info.model, engine=engine_name, failed=[
        [f, "unreadable image (reported by xmodal encode)"] for f in info.failed]).to_bytes()} if info.root else {})
    check_index_target(out)
    with folder_lock(out, "another `xmodal index` run"), companion_files(record):
        index, choice = build_from_embeddings(emb_dir, out, model_id=model_id, memory_budget_mb=memory_budget_mb,
                                              kind=kind, train_sample=train_sample, engine=engine, uri=uri,
                                              collection=collection, nbits=nbits, overwrite=overwrite, info=info,
                                              target_recall=target_recall, refine=refine)
    (out / COLLECTION_FILE).unlink(missing_ok=True)  # an older version's plain record no longer applies
    return EmbeddingsIndex(index, choice, collection=bool(info.root))
