"""``evaluate``: what ``xmodal evaluate`` does, as a library call."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError


@dataclass
class EvaluationRun:
    """Metrics per setting (``retrieve``, ``retrieve+rerank@D``, ``rerank-all``) on one dataset split."""

    dataset: str
    split: str | None
    n_images: int
    n_captions: int
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: dict[str, Path] = field(default_factory=dict)  # "t2i"/"i2t" -> top-10 predictions file written

    def header(self) -> str:
        return f"{self.dataset} / {self.split}: {self.n_images} images, {self.n_captions} captions"

    def table(self) -> str:
        from ..evaluation import format_table

        return format_table(self.results)


def attach_feature_store(path: str | Path, *models: Any) -> None:
    """Open a region-feature store and give it to every region-feature model among ``models``."""
    from ..data.features import FeatureStore

    takers = [m for m in models if m is not None and hasattr(getattr(m, "backbone", None), "features")]
    if not takers:
        raise InvalidInputError("--features is for region-feature models; the given model(s) read pixels.")
    store = FeatureStore.open(path)
    for m in takers:
        m.attach_features(store)


def evaluate(dataset: str, model: Any = None, *, images: str | Path | None = None, split: str | None = None,
             rerank: Any = None, depth: int = 20, compare: bool = False, batch_size: int = 64,
             out: str | Path | None = None, muge_predictions: str | Path | None = None,
             tr_predictions: str | Path | None = None, features: str | Path | None = None,
             show_progress: bool = True, echo: Callable[[str], Any] | None = None) -> EvaluationRun:
    """Retrieval recalls of a model (optionally reranked) on ``dataset`` (``FORMAT:PATH``, see ``load_dataset``).

    Args:
        model / rerank: names/folders or loaded models; at least one of the two.
        compare: with both, also run retrieve-only and rerank-all (small sets).
        out: write the metrics as JSON there (``write_metrics``: values in percent, units recorded).
        muge_predictions: write top-10 text->image predictions (jsonl, in the ground truth's fields and id
            types: MUGE / Chinese-CLIP scorers) there; needs ``model``.
        tr_predictions: write top-10 image->text predictions (``{image_id, text_ids}``, Chinese-CLIP's
            evaluation_tr.py) there; needs ``model``.
        features: a region-feature store for region-feature models.
        echo: called with the header line and the metrics table as soon as they are known (before any
            prediction file is written, so a refused prediction file does not hide the metrics).
    """
    from ..data.datasets import load_dataset
    from ..evaluation import RetrievalEvaluator

    if model is None and rerank is None:
        raise InvalidInputError("give --model, --rerank, or both.")
    if (muge_predictions is not None or tr_predictions is not None) and model is None:
        raise InvalidInputError("--muge-predictions / --tr-predictions need --model.")
    ds = load_dataset(dataset, images=images, split=split)
    ev = RetrievalEvaluator(ds, batch_size=batch_size, show_progress=show_progress)
    encoder, reranker = model, rerank
    if isinstance(encoder, (str, Path)):
        from ..models import load_model

        encoder = load_model(str(encoder))
    if isinstance(reranker, (str, Path)):
        from ..models.cross import load_reranker

        reranker = load_reranker(str(reranker))
    if features is not None:
        attach_feature_store(features, encoder, reranker)
    run = EvaluationRun(ds.name, ds.split, len(ds.images), len(ds.captions))
    if encoder is not None and (reranker is None or compare):
        run.results["retrieve"] = ev(encoder)
    if reranker is not None and encoder is not None:
        run.results[f"retrieve+rerank@{depth}"] = ev(encoder, reranker=reranker, depth=depth)
    if reranker is not None and (encoder is None or compare):
        run.results["rerank-all"] = ev(None, reranker=reranker)
    if echo is not None:
        echo(run.header())
        echo(run.table())
    if out:
        from ..evaluation import write_metrics

        write_metrics(out, run.results)
    for pred_out, direction in ((muge_predictions, "t2i"), (tr_predictions, "i2t")):
        if pred_out:
            from ..evaluation import write_predictions

            write_predictions(pred_out, ds, encoder, direction=direction, batch_size=batch_size)
            run.predictions[direction] = Path(pred_out)
    return run
