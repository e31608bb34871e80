"""``search``: what ``xmodal search`` does, as a library call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..collection import open_collection
from ..errors import InvalidInputError
from ..retrieve.results import SearchResult


@dataclass
class SearchHits:
    """Ranked hits of one query on a collection, with the image file of each hit."""

    result: SearchResult
    paths: list[str]
    gallery: Path | None = None  # the contact sheet, when one was asked for
    search_settings: str | None = None  # "KIND: tuned ANN settings and measured recall", when the index has them
    texts: list[str] | None = None  # a text collection's hit texts (then ``paths`` is empty)
    first_rank: int = 1  # rank of the first hit (offset + 1 when paging)

    def rows(self) -> list[str]:
        """One printable line per hit: rank, score, id, path or text (newlines/undecodable bytes escaped)."""
        from ..data.ids import printable_id

        r = self.result
        shown = self.paths if self.texts is None else [t if len(t) <= 100 else t[:99] + "…" for t in self.texts]
        return [f"{rank:>3}  {s:+.4f}  {printable_id(i)}  {printable_id(p)}"
                for rank, (i, s, p) in enumerate(zip(r.ids, r.scores, shown), start=self.first_rank)]

    def to_dict(self) -> dict[str, Any]:
        payload = self.result.to_dict()  # ids, scores, stage, metadata (one record per hit), timings
        payload["paths"] = list(self.paths)
        if self.texts is not None:
            payload["texts"] = list(self.texts)
        return payload


def search(index_dir: str | Path, text: str | None = None, image: str | Path | None = None, *, k: int = 10,
           model: Any = None, rerank: Any = None, depth: int = 50, gallery: str | Path | None = None,
           allow_model_mismatch: bool = False, runtime: str | None = None, mode: str = "dense", fusion: str = "rrf",
           alpha: float = 0.5, where: str | None = None, offset: int = 0, min_score: float | None = None,
           dedup: float | None = None) -> SearchHits:
    """Search a collection made by ``index_folder`` (images) or ``index_texts`` (texts) by text and/or image.

    Args:
        model: override the model recorded in the index (name/folder or a loaded encoder).
        rerank: a cross-encoder (name/folder or loaded) reranking the top ``depth`` candidates.
        gallery: also save the hits as a PNG contact sheet there.
        allow_model_mismatch: search although the model's weights differ from those the index was built with.
        mode: ``dense`` (vectors), ``lexical`` (BM25 over the items' texts) or ``hybrid`` (both fused);
            lexical and hybrid need a text query and an index built with texts.
        fusion / alpha: hybrid fusion, ``rrf`` or ``weighted``, and the dense share (0..1).
        where: a metadata filter expression, e.g. ``'camera = "X100" and taken >= "2021"'`` (docs/filters.md).
        offset / min_score / dedup: skip the first results (paging), drop results scoring below a threshold,
            drop near-duplicates (cosine similarity >= dedup to a higher-ranked result).
    """
    if text is not None and not text.strip():
        raise InvalidInputError("the query is empty; give some text or --image.")
    if text is None and image is None:
        raise InvalidInputError("give a text query or --image PATH.")
    if k < 1:
        raise InvalidInputError(f"-k must be >= 1; got {k}.")
    from ..retrieve.fusion import check_mode

    check_mode(mode)
    if where is not None:  # a bad filter fails before any model is loaded
        from ..indexes.filters import parse_filter

        parse_filter(where)
    collection = open_collection(index_dir)
    if isinstance(rerank, (str, Path)):
        from ..models.cross import load_reranker

        rerank = load_reranker(str(rerank))
    if runtime is not None:  # torch / onnx: the recorded (or given) model run by that runtime (models/onnx_encoder.py)
        from ..models.onnx_encoder import with_runtime

        if model is not None and not isinstance(model, (str, Path)):
            raise InvalidInputError("runtime= takes a model name or folder, not a loaded model.")
        model = with_runtime(model or collection.model_name, runtime)
    retriever = collection.retriever(model=model, reranker=rerank, depth=depth,
                                     allow_model_mismatch=allow_model_mismatch, lexical=mode != "dense")
    result = retriever.search(text=text, image=image, k=k, mode=mode, fusion=fusion, alpha=alpha, where=where,
                              offset=offset, min_score=min_score, dedup=dedup)
    if collection.kind == "texts":
        texts = [collection.text(i) or "" for i in result.ids]
        if gallery is not None:
            raise InvalidInputError("--gallery shows images; this is a text collection (its hits are texts).")
        return SearchHits(result, [], None, None, texts, first_rank=offset + 1)
    paths = [str(collection.image_path(i)) for i in result.ids]
    if gallery is not None:
        from ..visualize import save_gallery

        label = " + ".join(x for x in (text and f"'{text}'", image and f"image {Path(image).name}") if x)
        gallery = save_gallery([(label, paths, result.scores)], gallery)
    tuning = getattr(collection.index, "tuning", None)
    settings = f"{collection.index.kind}: {tuning.describe()}" if tuning is not None else None
    return SearchHits(result, paths, Path(gallery) if gallery is not None else None, settings, first_rank=offset + 1)
