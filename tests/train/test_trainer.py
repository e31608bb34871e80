"""Trainer: learning, exact resume, freezing, the curve, and DDP equivalence with one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xmodal
from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.evaluation import RetrievalEvaluator
from xmodal.losses import InfoNCELoss
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def splits():
    return generate(n_train=400, n_val=60, n_test=60, n_unseen=10, seed=0)


def fresh_model(splits, seed=0):
    return build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=seed)


def test_training_improves_recall_and_draws_curve(splits, tmp_path):
    model = fresh_model(splits)
    ev = RetrievalEvaluator(splits["test"])
    before = ev(model)
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=120, batch_size=32, lr=2e-3, warmup_steps=10,
                      eval_every=60, checkpoint_every=1000, log_every=10)
    state = Trainer(model, InfoNCELoss(model), splits["train"], cfg, evaluator=RetrievalEvaluator(splits["val"])).train(
        show_progress=False)
    after = ev(model)
    assert after["t2i_R@5"] > before["t2i_R@5"] + 20 and after["mean_recall"] > before["mean_recall"] + 20
    losses = [h["loss"] for h in state.history if "loss" in h]
    assert losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "training_curve.png").stat().st_size > 5000 and (tmp_path / "best" / "model.safetensors").exists()
    assert sum("mean_recall" in h for h in state.history) == 2


class CrashingTrainer(Trainer):
    """Dies (like a killed job) in the middle of step ``crash_at``, after the last checkpoint."""

    crash_at = 12

    def _optimizer_step(self):
        if self.state.step + 1 == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        super()._optimizer_step()


def test_interrupted_training_resumes_exactly(splits, tmp_path):
    def config(out):
        return TrainConfig(output_dir=str(out), max_steps=16, batch_size=16, lr=1e-3, warmup_steps=3,
                           checkpoint_every=5, log_every=5, grad_accum=2)

    straight = fresh_model(splits)
    Trainer(straight, InfoNCELoss(straight), splits["train"], config(tmp_path / "a")).train(show_progress=False)

    crashed = fresh_model(splits)
    with pytest.raises(KeyboardInterrupt):
        CrashingTrainer(crashed, InfoNCELoss(crashed), splits["train"], config(tmp_path / "b")).train(show_progress=False)
    resumed = fresh_model(splits, seed=123)  # a different init: everything must come from the checkpoint (step 10)
    state = Trainer(resumed, InfoNCELoss(resumed), splits["train"], config(tmp_path / "b")).train(show_progress=False)
    assert state.step == 16
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_augmented_batches_do_not_depend_on_workers_or_the_global_rng(splits, tmp_path):
    """Random crops/flips are seeded per item from (seed, epoch, index): 0 or 2 DataLoader workers, any global RNG
    state, the same pixels - which is what makes a resumed run with --augment and workers exact."""
    model = fresh_model(splits)

    def first_batches(workers, rng_seed):
        cfg = TrainConfig(output_dir=str(tmp_path / f"w{workers}"), batch_size=8, augment="crop,flip", num_workers=workers)
        trainer = Trainer(model, InfoNCELoss(model), splits["train"], cfg)
        torch.manual_seed(rng_seed)
        it = iter(trainer._loader())
        return [next(it)["image"]["pixel_values"] for _ in range(3)]

    a, b = first_batches(0, 0), first_batches(2, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    plain = Trainer(model, InfoNCELoss(model), splits["train"], TrainConfig(output_dir=str(tmp_path / "p"), batch_size=8))
    assert not torch.equal(next(iter(plain._loader()))["image"]["pixel_values"], a[0])  # the augmentation did act


def test_interrupted_training_with_augmentation_and_workers_resumes_exactly(splits, tmp_path):
    def config(out):
        return TrainConfig(output_dir=str(out), max_steps=16, batch_size=16, lr=1e-3, warmup_steps=3,
                           checkpoint_every=5, log_every=5, augment="crop,flip", num_workers=2)

    straight = fresh_model(splits)
    Trainer(straight, InfoNCELoss(straight), splits["train"], config(tmp_path / "a")).train(show_progress=False)
    crashed = fresh_model(splits)
    with pytest.raises(KeyboardInterrupt):
        CrashingTrainer(crashed, InfoNCELoss(crashed), splits["train"], config(tmp_path / "b")).train(show_progress=False)
    resumed = fresh_model(splits, seed=123)
    Trainer(resumed, InfoNCELoss(resumed), splits["train"], config(tmp_path / "b")).train(show_progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_freezing_the_image_tower(splits, tmp_path):
    model = fresh_model(splits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=5, batch_size=16, freeze="image", checkpoint_every=100)
    Trainer(model, InfoNCELoss(model), splits["train"], cfg).train(show_progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "vision_model" in k or "visual_projection" in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "text_model" in k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("micro", [None, "3"], ids=["plain", "cached-gradients"])
def test_ddp_two_processes_equal_one_process_with_same_global_batch(tmp_path, micro):
    """With ``micro`` each rank embeds its 8 rows 3 at a time (GradCache) and gathers all ranks' embeddings
    for the negatives: still the plain single-process batch-16 gradient."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = dict(os.environ, PYTHONPATH=str(Path(xmodal.__file__).parents[1]), OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "single"), "16"], env=env,
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                          str(worker), str(tmp_path / "ddp"), "8", *([micro] if micro else [])], env=env,
                         capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    g_one, g_ddp = torch.load(tmp_path / "single" / "grads-rank0.pt"), torch.load(tmp_path / "ddp" / "grads-rank0.pt")
    assert len(g_one) > 20
    for k in g_one.keys() | g_ddp.keys():  # the first step's global-batch gradient (DDP fills unused ones with 0)
        a, b = g_one.get(k), g_ddp.get(k)
        a, b = (torch.zeros_like(b) if a is None else a), (torch.zeros_like(a) if b is None else b)
        assert torch.allclose(a, b, atol=1e-5), k
    if micro:
        return  # later steps: Adam amplifies the float noise of a different summation order (see the worker)
    one = torch.load(tmp_path / "single" / "weights-rank0.pt")
    r0, r1 = torch.load(tmp_path / "ddp" / "weights-rank0.pt"), torch.load(tmp_path / "ddp" / "weights-rank1.pt")
    for k in one:
        assert torch.equal(r0[k], r1[k]), k  # ranks stay in sync
        if k.endswith("k_proj.bias"):
            # attention is invariant to the key bias: its true gradient is 0, and Adam turns float noise
            # around 0 into full-size steps, so these differ by noise in any two runs that sum differently.
            continue
        assert torch.allclose(one[k], r0[k], atol=1e-5), k  # and equal single-process training
    assert any(not torch.equal(one[k], fresh) for k, fresh in
               build_tiny_model("clip", None, extra_texts=all_caption_texts(generate(n_train=64, n_val=1, n_test=1, n_unseen=1, seed=0)), seed=0).state_dict().items())


def test_trainer_takes_device_and_dtype(splits, tmp_path):
    """device/dtype reach the Trainer like every other model API (#14): dtype is the autocast precision."""
    from xmodal.errors import InvalidInputError

    model = fresh_model(splits)
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=2, batch_size=8, checkpoint_every=100)
    trainer = Trainer(model, InfoNCELoss(model), splits["train"], cfg, device="cpu", dtype="bfloat16")
    assert trainer.device.type == "cpu" and trainer.autocast_dtype == torch.bfloat16 and cfg.amp == "bf16"
    trainer.train(show_progress=False)
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32; only the compute is bf16
    cfg32 = TrainConfig(output_dir=str(tmp_path / "b"), max_steps=1, batch_size=8)
    assert Trainer(model, InfoNCELoss(model), splits["train"], cfg32, dtype="float32").autocast_dtype is None
    with pytest.raises(InvalidInputError, match="cuda:7"):
        Trainer(model, InfoNCELoss(model), splits["train"], cfg32, device="cuda:7")
