"""``xmodal train``, ``xmodal synth`` and ``xmodal mine-negatives``: parse arguments, call one pipelines function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

# Written out here (not read from xmodal.losses) so `xmodal --help` imports no torch;
# tests/cli/test_train_cmds.py checks it names every loss in LOSSES.
LOSS_HELP = ("infonce | siglip | vsepp (dual encoders) | maxsim (late-interaction token vectors) | "
             "itm (cross-encoder matching with hard negatives) | joint (contrastive + ITM; needs a JointModel)")


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
    from ..pipelines import synth as run_synth

    path = run_synth(out, n_train=n_train, n_val=n_val, n_test=n_test, n_unseen=n_unseen, seed=seed,
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
    loss: str = typer.Option("infonce", help=LOSS_HELP),
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
                                               "torchvision:NAME, open_clip:ARCH\\[/TAG] or a transformers vision folder."),
    embed_dim: int = typer.Option(256, help="Composed models: size of the shared embedding space."),
    image_size: int = typer.Option(224, help="Composed models: input image size (must suit the vision tower)."),
    pooling: str = typer.Option("auto", help="Composed models: text pooling auto | mean | cls | max."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Cached-gradient contrastive training: "
                                              "--batch-size negatives in the memory of this many rows (GradCache)."),
    num_workers: int = typer.Option(-1, "--num-workers", help="Image-decoding processes (-1: one per spare core, at most 4)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Preprocessed image cache (memory-mapped), "
                                             "reused across epochs and runs."),
    cache_max_gb: Optional[float] = typer.Option(None, "--cache-max-gb", help="Bound the image cache: images this run "
                                                 "does not need are evicted, oldest first."),
    augment: Optional[str] = typer.Option(None, help="crop | flip | crop,flip (for vision towers trained from scratch)."),
    unlock_last: int = typer.Option(0, "--unlock-last", help="With --freeze: train the locked tower's last N layers."),
    hard_negatives: Optional[Path] = typer.Option(None, "--hard-negatives", help="Mined negatives from `xmodal mine-negatives`."),
) -> None:
    """Fine-tune a model; evaluates on --eval-split and keeps the best model in OUT/best."""
    from ..pipelines import train as run_train

    run = run_train(dataset, model, out, images=images, split=split, eval_split=eval_split, loss=loss, features=features,
                    resume=resume, hard_negatives=hard_negatives, text_model=text_model, vision_model=vision_model,
                    embed_dim=embed_dim, image_size=image_size, pooling=pooling, epochs=epochs, max_steps=max_steps,
                    batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
                    eval_every=eval_every, checkpoint_every=checkpoint_every, freeze=freeze, amp=amp,
                    micro_batch=micro_batch, num_workers=num_workers, cache_dir=cache_dir, cache_max_gb=cache_max_gb, augment=augment,
                    unlock_last=unlock_last)
    typer.echo(run.summary())
    if run.last_eval:
        typer.echo(json.dumps({k: round(v, 2) for k, v in run.last_eval.items()}))


def mine_negatives(
    dataset: str = typer.Option(..., "--dataset", "-d", help="FORMAT:PATH of the training data."),
    model: str = typer.Option(..., "--model", "-m", help="The current model (folder) that encodes the training set."),
    images: Optional[Path] = typer.Option(None, "--images"),
    split: str = typer.Option("train", "--split"),
    k: int = typer.Option(10, "-k", help="Negatives kept per caption and per image (hardest first)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Default: hard_negatives.SPLIT.json beside the dataset."),
) -> None:
    """Mine each caption's nearest non-matching images (and each image's nearest non-matching captions) with FAISS."""
    from ..pipelines import mine_negatives as run_mine

    path, n_captions, n_images = run_mine(dataset, model, images=images, split=split, k=k, out=out)
    typer.echo(f"mined {k} negatives for {n_captions} captions and {n_images} images -> {path}")


def register(app: typer.Typer) -> None:
    app.command("mine-negatives")(mine_negatives)
    app.command("synth")(synth)
    app.command("train")(train)
