"""save_checkpoint survives a crash at every step: the previous or the new checkpoint always loads (#19 item 10)."""

from __future__ import annotations

import os
import shutil

import pytest

from xmodal import io
from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.losses import InfoNCELoss
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer


class Crash(BaseException):
    pass


def _trainer(splits, out):
    model = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)
    cfg = TrainConfig(output_dir=str(out), max_steps=4, batch_size=8, checkpoint_every=100)
    return Trainer(model, InfoNCELoss(model), splits["train"], cfg)


class Killer:
    """Counts every rename (``os.replace``) and named fault point of a save; at event ``at`` it copies the
    output folder as a ``kill -9`` would leave it and dies. Renames are counted too, so the same test
    finds the crash window of an implementation without fault points."""

    def __init__(self, out, snapshot, at):
        self.out, self.snapshot, self.at, self.n, self.events = out, snapshot, at, 0, []

    def event(self, what):
        self.events.append(what)
        self.n += 1
        if self.n == self.at:
            shutil.copytree(self.out, self.snapshot, symlinks=True)
            raise Crash(what)


def _save_with(monkeypatch, trainer, killer):
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        killer.event(f"os.replace {os.path.basename(str(src))} -> {os.path.basename(str(dst))}")
        return real_replace(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        prev = io.set_fault_hook(killer.event)
        try:
            trainer.save_checkpoint()
        finally:
            io.set_fault_hook(prev)


def test_crash_at_every_step_of_save_checkpoint_loads_old_or_new(tmp_path, monkeypatch):
    splits = generate(n_train=40, n_val=8, n_test=8, n_unseen=2, seed=0)
    probe = _trainer(splits, tmp_path / "probe")
    probe.save_checkpoint()
    probe.state.step = 3
    counter = Killer(tmp_path / "probe", tmp_path / "unused", at=-1)
    _save_with(monkeypatch, probe, counter)
    assert counter.n >= 2, counter.events
    for at in range(1, counter.n + 1):
        out, snap = tmp_path / f"run{at}", tmp_path / f"snap{at}"
        t = _trainer(splits, out)
        t.save_checkpoint()  # the previous checkpoint: step 0
        t.state.step = 3
        killer = Killer(out, snap, at)
        with pytest.raises(Crash):
            _save_with(monkeypatch, t, killer)
        for folder in (snap, out):  # the disk at the kill, and after the crash unwound
            fresh = _trainer(splits, folder)
            assert fresh.load_checkpoint(), f"no checkpoint after a crash at {killer.events[-1]}"
            assert fresh.state.step in (0, 3), killer.events[-1]
            assert not list(folder.glob(".checkpoint-*")), "leftovers of the crashed save are cleaned up"
