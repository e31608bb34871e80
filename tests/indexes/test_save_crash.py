"""An index save killed at any step leaves the previous or the new version loadable (#19 items 8, 10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from xmodal import io
from xmodal.indexes import load_index
from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.multivector import MultiVectorIndex


class Crash(BaseException):
    pass


class Killer:
    """Counts renames and named fault points; at event ``at`` copies the folder as a kill -9 leaves it, then dies."""

    def __init__(self, folder, snapshot, at):
        self.folder, self.snapshot, self.at, self.n, self.events = folder, snapshot, at, 0, []

    def event(self, what):
        self.events.append(what)
        self.n += 1
        if self.n == self.at:
            if self.folder.exists():
                shutil.copytree(self.folder, self.snapshot, symlinks=True)
            else:
                self.snapshot.mkdir()
            raise Crash(what)


def _save_with(monkeypatch, index, folder, killer):
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        killer.event(f"os.replace {os.path.basename(str(src))}")
        return real_replace(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        prev = io.set_fault_hook(killer.event)
        try:
            index.save(folder)
        finally:
            io.set_fault_hook(prev)


def _faiss(n):
    idx = FaissIndex(8, model_id="m")
    idx.add([f"i{k}" for k in range(n)], np.random.default_rng(n).standard_normal((n, 8)).astype("float32"))
    return idx


def _late(n):
    idx = MultiVectorIndex(8, nbits=None, model_id="m")
    rng = np.random.default_rng(n)
    idx.add([f"i{k}" for k in range(n)], [rng.standard_normal((3, 8)).astype("float32") for _ in range(n)])
    return idx


@pytest.mark.parametrize("make", [_faiss, _late], ids=["faiss", "late"])
def test_crash_at_every_step_of_index_save_leaves_old_or_new(make, tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    make(3).save(probe)
    counter = Killer(probe, tmp_path / "unused", at=-1)
    _save_with(monkeypatch, make(5), probe, counter)
    assert counter.n >= 3, counter.events
    for at in range(1, counter.n + 1):
        folder, snap = tmp_path / f"idx{at}", tmp_path / f"snap{at}"
        make(3).save(folder)
        killer = Killer(folder, snap, at)
        with pytest.raises(Crash):
            _save_with(monkeypatch, make(5), folder, killer)
        for f in (snap, folder):
            assert len(load_index(f)) in (3, 5), f"no loadable index after a crash at {killer.events[-1]}"
        make(7).save(folder)  # the next save works and cleans up what the crash left
        assert len(load_index(folder)) == 7
        assert not [p for p in folder.iterdir() if "staging" in p.name or ".tmp-" in p.name]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".idx{at}.")]


def test_kill_9_during_index_save_keeps_previous_version(tmp_path):
    """A real SIGKILL (no Python cleanup runs) in the middle of a save, once per kind of step."""
    folder = tmp_path / "idx"
    _faiss(3).save(folder)
    script = textwrap.dedent("""
        import os, signal, sys
        import numpy as np
        from xmodal import io
        from xmodal.indexes.faiss_index import FaissIndex
        target = sys.argv[2]
        def hook(step):
            if step.startswith(target):
                os.kill(os.getpid(), signal.SIGKILL)
        io.set_fault_hook(hook)
        idx = FaissIndex(8, model_id="m")
        idx.add([f"i{k}" for k in range(5)], np.random.default_rng(5).standard_normal((5, 8)).astype("float32"))
        idx.save(sys.argv[1])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for step, expect in [("folder:synced", 3), ("folder:renamed", 3), ("folder:committed", 5)]:
        proc = subprocess.run([sys.executable, "-c", script, str(folder), step], env=env, capture_output=True)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        assert len(load_index(folder)) == expect, step
        _faiss(3).save(folder)
