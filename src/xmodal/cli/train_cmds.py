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
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to fine-tune (hub id, folder) or tiny:clip|siglip|chinese_clip|"
                                        "regions|regions-single-stream to start from scratch (region models need --features), or "
                                        "compose:text=T,vision=V[,dim=256,pooling=mean,image_size=224,projection=mlp]."),
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
    text_model: Optional[str] = typer.Option(None, "--text-model", help="Compose a new dual encoder: a transformers text "
                                             "encoder folder (e.g. a sentence-transformers all-MiniLM-L6-v2 folder)."),
    vision_model: Optional[str] = typer.Option(None, "--vision-model", help="...with this vision tower: timm:NAME[@pretrained], "
                                               "torchvision:NAME, open_clip:ARCH[/TAG] or a transformers vision folder."),
    embed_dim: int = typer.Option(256, help="Composed models: size of the shared embedding space."),
    image_size: int = typer.Option(224, help="Composed models: input image size (must suit the vision tower)."),
    pooling: str = typer.Option("auto", help="Composed models: text pooling auto | mean | cls | max."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Cached-gradient contrastive training: "
                                              "--batch-size negatives in the memory of this many rows (GradCache)."),
    num_workers: int = typer.Option(-1, "--num-workers", help="Image-decoding processes (-1: one per spare core, at most 4)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Preprocessed image cache (memory-mapped), "
                                             "reused across epochs and runs."),
    augment: Optional[str] = typer.Option(None, help="crop | flip | crop,flip (for vision towers trained from scratch)."),
    unlock_last: int = typer.Option(0, "--unlock-last", help="With --freeze: train the locked tower's last N layers."),
    hard_negatives: Optional[Path] = typer.Option(None, "--hard-negatives", help="Mined negatives from `xmodal mine-negatives`."),
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
    if (text_model is None) != (vision_model is None):
        raise InvalidInputError("composing a model needs both --text-model and --vision-model.")
    if text_model is not None or (model or "").startswith("compose:"):
        from ..models.compose import ComposedEncoder, parse_compose_spec

        if text_model is not None and model:
            raise InvalidInputError("give either --model or --text-model/--vision-model, not both.")
        spec = parse_compose_spec(model) if model else {"text_model": text_model, "vision_model": vision_model,
                                                        "embed_dim": embed_dim, "image_size": image_size, "pooling": pooling}
        net = ComposedEncoder.compose(**spec)
    elif model is None:
        raise InvalidInputError("give --model (or --text-model and --vision-model to compose one).")
    elif model.startswith("tiny:regions"):
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
                      freeze=freeze, amp=amp, micro_batch=micro_batch, num_workers=num_workers,
                      cache_dir=str(cache_dir) if cache_dir else None, augment=augment, unlock_last=unlock_last)
    mined = None
    if hard_negatives is not None:
        from ..train.mining import read_negatives

        mined = read_negatives(hard_negatives, train_ds)
    trainer = Trainer(net, LOSSES[loss](net), train_ds, cfg, evaluator=evaluator, hard_negatives=mined)
    state = trainer.train(resume=resume)
    net.save(out / "final")
    last = next((h for h in reversed(state.history) if "mean_recall" in h), None)
    typer.echo(f"trained {state.step} steps; final model in {out / 'final'}; best in {out / 'best'}; curve {out / 'training_curve.png'}")
    if last:
        typer.echo(json.dumps({k: round(v, 2) for k, v in last.items() if "R@" in k or k == "mean_recall"}))


def mine_negatives(
    dataset: str = typer.Option(..., "--dataset", "-d", help="FORMAT:PATH of the training data."),
    model: str = typer.Option(..., "--model", "-m", help="The current model (folder) that encodes the training set."),
    images: Optional[Path] = typer.Option(None, "--images"),
    split: str = typer.Option("train", "--split"),
    k: int = typer.Option(10, "-k", help="Negatives kept per caption and per image (hardest first)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default: hard_negatives.SPLIT.json beside the dataset."),
) -> None:
    """Mine each caption's nearest non-matching images (and each image's nearest non-matching captions) with FAISS."""
    from ..data.datasets import load_dataset
    from ..models import load_model
    from ..train.mining import mine_negatives as mine, write_negatives

    ds = load_dataset(dataset, images=images, split=split)
    net = load_model(model)
    mined = mine(net, ds, k=k, show_progress=True)
    if out is None:
        src = Path(dataset.partition(":")[2] or dataset)
        out = (src.parent if src.is_file() else src) / f"hard_negatives.{split}.json"
    write_negatives(out, mined, ds, model_id=getattr(net, "model_id", ""))
    typer.echo(f"mined {k} negatives for {len(ds.captions)} captions and {len(ds.images)} images -> {out}")


def register(app: typer.Typer) -> None:
    app.command("mine-negatives")(mine_negatives)
    app.command("synth")(synth)
    app.command("train")(train)
