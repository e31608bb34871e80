"""``xmodal train`` and ``xmodal synth``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError


def synth(
    out: Path = typer.Argument(..., help="Folder for images/ and dataset.json (Karpathy format)."),
    n_train: int = typer.Option(2000), n_val: int = typer.Option(200), n_test: int = typer.Option(200),
    n_unseen: int = typer.Option(200, help="Scenes with colour-shape combinations never seen in training."),
    langs: str = typer.Option("en", help="Comma-separated: en,de,zh"),
    max_objects: int = typer.Option(2, min=1, max=4),
    hard_negatives: int = typer.Option(0, help="Hard-negative captions per caption."),
    seed: int = typer.Option(0),
    region_features: int = typer.Option(0, help="Also write detector-style region features of this size to OUT/features/."),
) -> None:
    """Generate the synthetic compositional benchmark."""
    from ..data.synthetic import write_synthetic

    path = write_synthetic(out, n_train=n_train, n_val=n_val, n_test=n_test, n_unseen=n_unseen, seed=seed,
                           langs=tuple(langs.split(",")), max_objects=max_objects,
                           hard_negatives_per_caption=hard_negatives, region_feature_dim=region_features)
    typer.echo(f"wrote {path}")


def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="FORMAT:PATH of the training data (see `xmodal evaluate`)."),
    model: str = typer.Option(..., "--model", "-m", help="Model to fine-tune (hub id, folder) or tiny:clip|siglip|chinese_clip|"
                              "regions|regions-single-stream to start from scratch (region models need --features)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, best/, history.json, training_curve.png."),
    images: Optional[Path] = typer.Option(None, "--images"),
    split: str = typer.Option("train", "--split"),
    eval_split: Optional[str] = typer.Option("val", "--eval-split", help="Split of the same dataset to evaluate on ('' for none)."),
    loss: str = typer.Option("infonce", help="infonce | siglip | vsepp | joint (joint needs a JointModel)"),
    epochs: int = typer.Option(1), max_steps: Optional[int] = typer.Option(None), batch_size: int = typer.Option(64),
    grad_accum: int = typer.Option(1), lr: float = typer.Option(5e-4), warmup_steps: int = typer.Option(50),
    eval_every: int = typer.Option(0), checkpoint_every: int = typer.Option(200),
    freeze: Optional[str] = typer.Option(None, help="Lock a tower: text | image (LiT locks image)."),
    amp: str = typer.Option("auto", help="auto | bf16 | fp16 | none"),
    resume: bool = typer.Option(True, help="Continue from OUT/checkpoint-last if present."),
    features: Optional[Path] = typer.Option(None, "--features", help="Region-feature store for region-feature models."),
) -> None:
    """Fine-tune a model; evaluates on --eval-split and keeps the best model in OUT/best."""
    from ..data.datasets import load_dataset
    from ..evaluation import RetrievalEvaluator
    from ..losses import LOSSES
    from ..train import TrainConfig, Trainer, init_distributed_from_env

    init_distributed_from_env()
    train_ds = load_dataset(dataset, images=images, split=split)
    store = None
    if features is not None:
        from ..data.features import FeatureStore

        store = FeatureStore.open(features)
    if model.startswith("tiny:regions"):
        from ..models.regions import build_tiny_region_model

        if store is None:
            raise InvalidInputError(f"{model} reads region features: give --features PATH.")
        arch = "single-stream" if model.endswith("single-stream") else "two-stream"
        net = build_tiny_region_model(arch, out / "init", region_dim=store.feature_dim,
                                      extra_texts=[c.text for c in train_ds.captions])
    elif model.startswith("tiny:"):
        from ..models.tiny import build_tiny_model

        texts = [c.text for c in train_ds.captions]
        net = build_tiny_model(model[5:], out / "init", extra_texts=texts)
    else:
        from ..models import load_model

        net = load_model(model)
    if store is not None:
        net.attach_features(store)  # refuses pixel models with a clear InvalidInputError
    if loss not in LOSSES:
        raise InvalidInputError(f"unknown loss '{loss}'; choose from {sorted(LOSSES)}.")
    evaluator = RetrievalEvaluator(load_dataset(dataset, images=images, split=eval_split)) if eval_split else None
    cfg = TrainConfig(output_dir=str(out), epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                      lr=lr, warmup_steps=warmup_steps, eval_every=eval_every, checkpoint_every=checkpoint_every,
                      freeze=freeze, amp=amp)
    trainer = Trainer(net, LOSSES[loss](net), train_ds, cfg, evaluator=evaluator)
    state = trainer.train(resume=resume)
    net.save(out / "final")
    last = next((h for h in reversed(state.history) if "mean_recall" in h), None)
    typer.echo(f"trained {state.step} steps; final model in {out / 'final'}; best in {out / 'best'}; curve {out / 'training_curve.png'}")
    if last:
        typer.echo(json.dumps({k: round(v, 2) for k, v in last.items() if "R@" in k or k == "mean_recall"}))


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("train")(train)
