"""``Trainer``: fine-tune any xmodal model with any xmodal loss on any ``ImageTextDataset``.

Mixed precision (bf16/fp16 autocast where a GPU supports it), gradient accumulation, clipping,
linear warm-up + cosine decay, periodic evaluation (the evaluator's primary metric picks the best
checkpoint), checkpoint + exact resume (model, loss parameters, optimiser, scheduler, RNG states and
position in the epoch), a tqdm bar, a PNG curve of loss and recall, LiT-style tower freezing, and
DDP when launched with ```torchrun`` (gloo on CPU, nccl on GPU): global-batch contrastive losses and gradient averaging
that reproduce single-process training with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..data.types import ImageTextDataset
from ..io import recover_dir, replace_dir
from ..errors import InvalidInputError
from ..losses.cached import cached_backward, supports_cached
from .data import PairCollator, PairDataset
from .freeze import freeze_tower
from .image_cache import Augment, ImageCache, ImagePrep, model_image_size


@dataclass
class TrainConfig:
    output_dir: str = "runs/xmodal"
    epochs: int = 1
    max_steps: int | None = None  # optimiser steps; overrides epochs when set
    batch_size: int = 64  # per process: the contrastive batch (in-batch negatives, x world size under DDP)
    micro_batch: int | None = None  # embed batch_size rows this many at a time with cached gradients (GradCache)
    grad_accum: int = 1  # average gradients of this many batches per optimiser step
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    clip_norm: float | None = 1.0
    amp: str = "auto"  # auto | bf16 | fp16 | none
    eval_every: int = 0  # optimiser steps; 0 = at the end of each epoch only
    checkpoint_every: int = 200
    freeze: str | None = None  # "text" or "image": lock that tower (LiT locks the image tower)
    unlock_last: int = 0  # with freeze: keep the frozen tower's last N layers (and its head) trainable
    seed: int = 0
    num_workers: int = 0  # DataLoader processes decoding images; -1 = auto (cores - 1, at most 4)
    cache_dir: str | None = None  # preprocessed uint8 image cache (memory-mapped), reused across epochs and runs
    cache_max_gb: float | None = None  # bound on the cache's pixel file: images this run does not need are evicted
    augment: str | None = None  # "crop", "flip" or "crop,flip" (random resized crop / horizontal flip)
    log_every: int = 10


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches done in the current epoch
    best_metric: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class _EpochSampler(Sampler[int]):
    """A seeded permutation per epoch (same order after a resume), sharded across ranks, with a start offset.

    Rank r takes the r-th block of ``batch_size`` items out of every global batch of ``batch_size * world``,
    so the gathered global batch is exactly the batch a single process would see.
    """

    def __init__(self, n: int, seed: int, epoch: int, rank: int, world: int, batch_size: int, skip: int = 0) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        glob = batch_size * world
        perm = perm[: (n // glob) * glob]  # drop the ragged tail so every rank does the same number of steps
        self.indices = [perm[j] for j in range(len(perm)) if (j // batch_size) % world == rank][skip:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def resolve_workers(n: int) -> int:
    """``-1`` = one decoding process per spare core (at most 4); the main process trains meanwhile."""
    if n >= 0:
        return n
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


class Trainer:
    """Train ``loss.model`` on ``train_data``.

    Args:
        model: the model being trained (``DualEncoder``, ``JointModel``, region model...).
        loss: an ``nn.Module(model, ...)``; its own parameters (temperature...) are trained too.
        train_data: pairs to train on.
        evaluator: called as ``evaluator(model) -> dict``; ``evaluator.primary_metric`` picks the best model.
        save_model: how to save the model for the best/last checkpoints (default ``model.save(dir)``).
        hard_negatives: ``xmodal.train.mining.read_negatives(...)``: mined negatives for every caption and image.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, train_data: ImageTextDataset, config: TrainConfig | None = None,
                 evaluator: Callable[[nn.Module], dict[str, float]] | None = None,
                 save_model: Callable[[nn.Module, Path], Any] | None = None,
                 hard_negatives: Any = None, device: Any = None, dtype: Any = None) -> None:
        from ..runtime import move_model, resolve_dtype

        # device: where to train (None: where the model is); dtype: the autocast precision, i.e. the same
        # as config.amp (float16 -> fp16, bfloat16 -> bf16, float32 -> none); the weights stay float32.
        model, loss = move_model(model, device, None), move_model(loss, device, None)
        config = config or TrainConfig()
        if dtype is not None:
            wanted = resolve_dtype(dtype, next(model.parameters()).device)
            config.amp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(wanted, "none")
        self.model, self.loss, self.config = model, loss, config
        self.train_data, self.evaluator = train_data, evaluator
        self.save_model = save_model or (lambda m, p: m.save(p))
        self.out = Path(self.config.output_dir)
        self.state = TrainState()
        self.rank, self.world = _dist()
        self.device = next(model.parameters()).device
        self._apply_freeze()
        params = [p for p in list(model.parameters()) + [p for n, p in loss.named_parameters() if not n.startswith("model.")]
                  if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases, norms, temperature: no weight decay
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=self.config.lr)
        # hard_negatives: train.mining.MinedNegatives (or caption index -> image ids); each caption brings one mined
        # negative image and its image one mined negative caption into the batch
        if hard_negatives is not None and not getattr(loss, "accepts_mined", False):
            raise InvalidInputError(f"{type(loss).__name__} does not use mined hard negatives (infonce, siglip, vsepp, itm "
                                    "and joint do); drop --hard-negatives or choose one of those losses.")
        self.pairs = PairDataset(train_data, seed=self.config.seed, hard_negatives=hard_negatives)
        self.num_workers = resolve_workers(self.config.num_workers)
        self.augment = self._augment()
        mb = self.config.micro_batch
        if mb is not None and not 0 < mb <= self.config.batch_size:
            raise InvalidInputError(f"--micro-batch must be between 1 and --batch-size ({self.config.batch_size}); got {mb}.")
        self.cached = mb is not None and mb < self.config.batch_size
        if self.cached and not supports_cached(loss):
            cached_backward(loss, {}, mb)  # raises the clear error
        self.steps_per_epoch = max(1, (len(self.pairs) // self.world) // (self.config.batch_size * self.config.grad_accum))
        self.total_steps = self.config.max_steps or self.steps_per_epoch * self.config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.autocast_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        if self.world > 1:  # every rank starts from rank 0's weights
            for t in list(model.state_dict().values()) + [p.data for p in self.loss.parameters()]:
                torch.distributed.broadcast(t, 0)

    # ------------------------------------------------------------------ set-up helpers
    def _apply_freeze(self) -> None:
        if self.config.freeze is None:
            if self.config.unlock_last:
                raise InvalidInputError("--unlock-last needs --freeze text|image (it unlocks layers of the locked tower).")
            return
        freeze_tower(self.model, self.config.freeze, self.config.unlock_last)

    def _lr_factor(self, step: int) -> float:
        warm = self.config.warmup_steps
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.amp
        if amp == "none" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp in ("bf16", "auto") and (self.device.type != "cuda" or torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def _augment(self) -> Augment | None:
        if not self.config.augment:
            return None
        size = model_image_size(self.model.backbone)
        if size is None:
            raise InvalidInputError(f"--augment needs a model that reads pixels; {type(self.model).__name__} does not.")
        return Augment(self.config.augment, size)

    def prepare_cache(self, show_progress: bool = False) -> None:
        """Fill ``cache_dir`` with the training images (decoded once, in worker processes) and read from it."""
        if not self.config.cache_dir or self.pairs.cache is not None:
            return
        size = model_image_size(self.model.backbone)
        if size is None or hasattr(self.model.backbone, "features"):
            raise InvalidInputError("--cache-dir caches decoded pixels; this model reads region features, not images.")
        gb = self.config.cache_max_gb
        if gb is not None and gb <= 0:
            raise InvalidInputError(f"--cache-max-gb must be positive; got {gb}.")
        cache = ImageCache(self.config.cache_dir, ImagePrep(size), max_bytes=None if gb is None else int(gb * 1e9))
        sources = list(self.train_data.images.values())
        if self.rank == 0:
            cache.ensure(sources, num_workers=self.num_workers, show_progress=show_progress)
        if self.world > 1:
            torch.distributed.barrier()
        self.pairs.cache, self.pairs.slots = cache, cache.ensure(sources)  # all cached by now: only reads the index

    def _loader(self) -> DataLoader:
        sampler = _EpochSampler(len(self.pairs), self.config.seed, self.state.epoch, self.rank, self.world,
                                self.config.batch_size, skip=self.state.batch_in_epoch * self.config.batch_size)
        self.pairs.epoch = self.state.epoch
        return DataLoader(self.pairs, batch_size=self.config.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=PairCollator(self.model.backbone, self.augment), num_workers=self.num_workers,
                          prefetch_factor=4 if self.num_workers else None)

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoint-last"

    def save_checkpoint(self) -> Path:
        if self.rank != 0:
            return self._ckpt_dir()
        final = self._ckpt_dir()
        tmp = self.out / f".checkpoint-tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_model(self.model, tmp / "model")
        torch.save({
            "model": self.model.state_dict(),
            "loss": {k: v for k, v in self.loss.state_dict().items() if not k.startswith("model.")},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }, tmp / "trainer_state.pt")
        (tmp / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2))
        # fsync, then swap; a crash between the two renames is undone by recover_dir in load_checkpoint
        return replace_dir(tmp, final)

    def load_checkpoint(self) -> bool:
        recover_dir(self._ckpt_dir())
        if self.rank == 0:
            for stale in self.out.glob(".checkpoint-tmp-*"):  # a save cut off before its swap
                shutil.rmtree(stale, ignore_errors=True)
        path = self._ckpt_dir() / "trainer_state.pt"
        if not path.exists():
            return False
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.loss.load_state_dict({**{f"model.{k}": v for k, v in self.model.state_dict().items()}, **ck["loss"]},
                                  strict=False)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.state = TrainState(**ck["state"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        return True

    # ------------------------------------------------------------------ loop
    def evaluate(self) -> dict[str, float]:
        if self.evaluator is None or self.rank != 0:
            return {}
        metrics = dict(self.evaluator(self.model))
        metrics["eval_seconds"] = metrics.pop("seconds", 0.0)
        self.model.train()
        key = getattr(self.evaluator, "primary_metric", None)
        if key and key in metrics and (self.state.best_metric is None or metrics[key] > self.state.best_metric):
            self.state.best_metric = metrics[key]
            self.save_model(self.model, self.out / "best")
        return metrics

    def train(self, resume: bool = True, show_progress: bool = True) -> TrainState:
        """Run until ``max_steps``/``epochs``; with ``resume`` continue from ``output_dir/checkpoint-last``."""
        torch.manual_seed(self.config.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc="training", unit="step",
                   disable=not show_progress or self.rank != 0)
        self.prepare_cache(show_progress=show_progress and self.rank == 0)
        running, n_running, t0 = 0.0, 0, time.perf_counter()
        # throughput over the current log window: samples trained, wall time, time blocked waiting for a batch
        samples, waited, t_window = 0, 0.0, time.perf_counter()
        while self.state.step < self.total_steps:
            micro = 0
            t_ask = time.perf_counter()
            for batch in self._loader():
                waited += time.perf_counter() - t_ask
                samples += len(batch["labels"]) * self.world
                loss = self._micro_step(batch)
                running, n_running = running + loss, n_running + 1
                micro += 1
                self.state.batch_in_epoch += 1
                if micro % self.config.grad_accum:
                    t_ask = time.perf_counter()
                    continue
                self._optimizer_step()
                self.state.step += 1
                bar.update(1)
                entry: dict[str, float] = {}
                if self.state.step % self.config.log_every == 0 or self.state.step == self.total_steps:
                    span = max(1e-9, time.perf_counter() - t_window)
                    entry = {"step": self.state.step, "loss": running / max(1, n_running),
                             "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0,
                             "samples_per_s": samples / span, "data_wait": waited / span}
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", samples_s=f"{entry['samples_per_s']:.0f}",
                                    data_wait=f"{100 * entry['data_wait']:.0f}%")
                    running, n_running = 0.0, 0
                    samples, waited, t_window = 0, 0.0, time.perf_counter()
                if self.config.eval_every and self.state.step % self.config.eval_every == 0:
                    entry = {"step": self.state.step, **entry, **self.evaluate()}
                if entry:
                    self.state.history.append(entry)
                if self.state.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.state.step >= self.total_steps:
                    break
                t_ask = time.perf_counter()
            else:  # epoch finished
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                if not self.config.eval_every and self.evaluator is not None:
                    self.state.history.append({"step": self.state.step, **self.evaluate()})
                continue
            break
        bar.close()
        if self.config.eval_every and self.evaluator is not None and (
                not self.state.history or "mean_recall" not in self.state.history[-1]
                or self.state.history[-1].get("step") != self.state.step):
            self.state.history.append({"step": self.state.step, **self.evaluate()})
        self.save_checkpoint()
        if self.rank == 0:
            (self.out / "history.json").write_text(json.dumps(self.state.history, indent=1))
            plot_history(self.state.history, self.out / "training_curve.png")
        return self.state

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _micro_step(self, batch: dict[str, Any]) -> float:
        if self.cached:  # GradCache: the whole batch's negatives, micro_batch rows in memory at a time
            return cached_backward(self.loss, batch, self.config.micro_batch, autocast=self._autocast,
                                   scale=lambda v: self.scaler.scale(v / self.config.grad_accum))
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss = self.loss(batch)
        self.scaler.scale(loss / self.config.grad_accum).backward()
        return float(loss.detach())

    def _all_reduce_grads(self) -> None:
        """Average gradients over ranks once per optimiser step (DDP's semantics, without bucketing/overlap).

        Losses gather embeddings from all ranks with gradients, so every rank computes the global-batch
        loss; gathering's backward sums each rank's share, and the average here gives exactly the
        single-process gradient of the global batch.
        """
        if self.world == 1:
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def _optimizer_step(self) -> None:
        self._all_reduce_grads()
        if self.config.clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


def plot_history(history: list[dict[str, float]], path: str | Path) -> Path | None:
    """Loss (left axis) and R@1 / mean recall (right axis) against optimiser steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the [train] extra
        return None
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [h for h in history if "mean_recall" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="train loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        for key, colour in (("t2i_R@1", "tab:orange"), ("i2t_R@1", "tab:green"), ("mean_recall", "tab:red")):
            pts = [(h["step"], h[key]) for h in evals if key in h]
            if pts:
                ax2.plot(*zip(*pts), marker="o", color=colour, label=key)
        ax2.set_ylabel("recall (%)")
        ax2.legend(loc="center right")
    ax.set_title("xmodal training")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
