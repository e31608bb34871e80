"""Ready-made training runs: the offline demo model trained on the synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.synthetic import all_caption_texts, generate
from ..evaluation import RetrievalEvaluator
from ..losses import InfoNCELoss
from ..models.tiny import build_tiny_model
from .trainer import TrainConfig, Trainer


def train_demo_model(out_dir: str | Path, *, seed: int = 0, steps: int = 600, n_train: int = 3000,
                     langs: tuple[str, ...] = ("en",), show_progress: bool = True) -> dict[str, Any]:
    """Train a tiny CLIP from scratch on synthetic shapes so text->image search works offline.

    Returns ``{"model_dir", "splits", "before", "after", "history"}``: metrics on the seen-combination
    test split before and after training.
    """
    out = Path(out_dir)
    splits = generate(n_train=n_train, n_val=150, n_test=150, n_unseen=150, seed=seed, langs=langs,
                      captions_per_image=2, max_objects=2)
    model = build_tiny_model("clip", out / "init", extra_texts=all_caption_texts(splits), image_size=30, patch_size=6,
                             hidden=64, projection_dim=64, seed=seed)
    evaluator = RetrievalEvaluator(splits["val"], name="val")
    before = RetrievalEvaluator(splits["test"])(model)
    cfg = TrainConfig(output_dir=str(out / "run"), max_steps=steps, batch_size=64, lr=2e-3, warmup_steps=30,
                      eval_every=max(1, steps // 4), checkpoint_every=steps, seed=seed, log_every=20)
    trainer = Trainer(model, InfoNCELoss(model), splits["train"], cfg, evaluator=evaluator)
    state = trainer.train(resume=False, show_progress=show_progress)
    model.save(out / "model")
    after = RetrievalEvaluator(splits["test"])(model)
    unseen = RetrievalEvaluator(splits["test_unseen"])(model)
    return {"model_dir": out / "model", "splits": splits, "before": before, "after": after, "unseen": unseen,
            "history": state.history, "curve": Path(cfg.output_dir) / "training_curve.png"}
