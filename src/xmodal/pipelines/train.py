"""``train`` and ``synth``: what ``xmodal train`` / ``xmodal synth`` do, as library calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError


@dataclass
class TrainRun:
    """Where a training run left its models, and its last evaluation."""

    out: Path
    steps: int
    final: Path
    best: Path | None  # None when no evaluation ran, so no best model was chosen and written
    curve: Path
    last_eval: dict[str, float] = field(default_factory=dict)  # R@K and mean recall of the last evaluation

    def summary(self) -> str:
        best = f"best in {self.best}" if self.best is not None else "no best model (no evaluation ran)"
        return f"trained {self.steps} steps; final model in {self.final}; {best}; curve {self.curve}"


def build_train_model(model: str | None, out: Path, texts: list[str], store: Any = None, *,
                      text_model: str | None = None, vision_model: str | None = None, embed_dim: int = 256,
                      image_size: int = 224, pooling: str = "auto") -> Any:
    """The model to train: ``tiny:ARCH`` from scratch (saved under ``out/init``), a composed dual encoder
    (``text_model`` + ``vision_model`` or ``compose:...``), else a saved/hub model."""
    if (text_model is None) != (vision_model is None):
        raise InvalidInputError("composing a model needs both --text-model and --vision-model.")
    if text_model is not None or (model or "").startswith("compose:"):
        from ..models.compose import ComposedEncoder, parse_compose_spec

        if text_model is not None and model:
            raise InvalidInputError("give either --model or --text-model/--vision-model, not both.")
        spec = parse_compose_spec(model) if model else {"text_model": text_model, "vision_model": vision_model,
                                                        "embed_dim": embed_dim, "image_size": image_size, "pooling": pooling}
        return ComposedEncoder.compose(**spec)
    if model is None:
        raise InvalidInputError("give --model (or --text-model and --vision-model to compose one).")
    if model.startswith("tiny:regions"):
        from ..models.regions import build_tiny_region_model

        if store is None:
            raise InvalidInputError(f"{model} reads region features: give --features PATH.")
        arch = "single-stream" if model.endswith("single-stream") else "two-stream"
        return build_tiny_region_model(arch, out / "init", region_dim=store.feature_dim, extra_texts=texts)
    if model.startswith("tiny:"):
        from ..models.tiny import build_tiny_model

        return build_tiny_model(model[5:], out / "init", extra_texts=texts)
    from ..models import load_model

    return load_model(model)


def train(dataset: str, model: str | None, out: str | Path, *, images: str | Path | None = None, split: str = "train",
          eval_split: str | None = "val", loss: str = "infonce", features: str | Path | None = None,
          resume: bool = True, hard_negatives: str | Path | None = None, text_model: str | None = None,
          vision_model: str | None = None, embed_dim: int = 256, image_size: int = 224, pooling: str = "auto",
          **config: Any) -> TrainRun:
    """Fine-tune ``model`` on ``dataset`` (``FORMAT:PATH``); evaluates on ``eval_split`` and keeps the best in ``out/best``.

    Args:
        model: a saved/hub model, ``tiny:clip|siglip|chinese_clip|regions|regions-single-stream`` from scratch,
            or ``compose:...`` / None with ``text_model`` + ``vision_model`` (a new composed dual encoder).
        hard_negatives: mined negatives from ``mine_negatives``.
        loss: a name in ``xmodal.losses.LOSSES``.
        features: a region-feature store (region-feature models).
        config: ``TrainConfig`` fields (epochs, max_steps, batch_size, grad_accum, lr, warmup_steps,
            eval_every, checkpoint_every, freeze, amp, ...).
    """
    from ..data.datasets import load_dataset
    from ..evaluation import RetrievalEvaluator
    from ..losses import LOSSES
    from ..train import TrainConfig, Trainer, init_distributed_from_env

    out = Path(out)
    init_distributed_from_env()
    train_ds = load_dataset(dataset, images=images, split=split)
    store = None
    if features is not None:
        from ..data.features import FeatureStore

        store = FeatureStore.open(features)
    net = build_train_model(model, out, [c.text for c in train_ds.captions], store, text_model=text_model,
                            vision_model=vision_model, embed_dim=embed_dim, image_size=image_size, pooling=pooling)
    if store is not None:
        net.attach_features(store)  # refuses pixel models with a clear InvalidInputError
    if loss not in LOSSES:
        raise InvalidInputError(f"unknown loss '{loss}'; choose from {sorted(LOSSES)}.")
    evaluator = RetrievalEvaluator(load_dataset(dataset, images=images, split=eval_split)) if eval_split else None
    if config.get("cache_dir") is not None:
        config["cache_dir"] = str(config["cache_dir"])
    cfg = TrainConfig(output_dir=str(out), **config)
    mined = None
    if hard_negatives is not None:
        from ..train.mining import read_negatives

        mined = read_negatives(hard_negatives, train_ds)
    trainer = Trainer(net, LOSSES[loss](net), train_ds, cfg, evaluator=evaluator, hard_negatives=mined)
    state = trainer.train(resume=resume)
    net.save(out / "final")
    last = next((h for h in reversed(state.history) if "mean_recall" in h), None)
    best = out / "best" if state.best_metric is not None and (out / "best").exists() else None
    return TrainRun(out=out, steps=state.step, final=out / "final", best=best, curve=out / "training_curve.png",
                    last_eval={k: v for k, v in (last or {}).items() if "R@" in k or k == "mean_recall"})


def synth(out: str | Path, **options: Any) -> Path:
    """Write the synthetic compositional benchmark (images/ + Karpathy dataset.json); see ``write_synthetic``."""
    from ..data.synthetic import write_synthetic

    return write_synthetic(out, **options)


def mine_negatives(dataset: str, model: str, *, images: str | Path | None = None, split: str = "train", k: int = 10,
                   out: str | Path | None = None, show_progress: bool = True) -> tuple[Path, int, int]:
    """Mine each caption's nearest non-matching images (and each image's nearest captions) with FAISS.

    Returns (file written, captions, images); ``out`` defaults to ``hard_negatives.SPLIT.json`` beside the dataset.
    """
    from ..data.datasets import load_dataset
    from ..models import load_model
    from ..train.mining import mine_negatives as mine, write_negatives

    ds = load_dataset(dataset, images=images, split=split)
    net = load_model(model)
    mined = mine(net, ds, k=k, show_progress=show_progress)
    if out is None:
        src = Path(dataset.partition(":")[2] or dataset)
        out = (src.parent if src.is_file() else src) / f"hard_negatives.{split}.json"
    write_negatives(out, mined, ds, model_id=getattr(net, "model_id", ""))
    return Path(out), len(ds.captions), len(ds.images)
