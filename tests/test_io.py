"""xmodal.io: atomic files, in-place folder saves (mode/symlink kept), folder lock, crash-safe dir swap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xmodal import io
from xmodal.errors import XmodalError


class Crash(BaseException):
    """Stands for the process dying at a fault point (not an Exception: nothing may catch it)."""


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    io.atomic_write_json(p, {"x": 1})
    io.atomic_write(p, b'{"x": 2}')
    assert json.loads(p.read_text()) == {"x": 2}
    assert [c.name for c in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_crash_keeps_old_content(tmp_path):
    p = tmp_path / "a.json"
    io.atomic_write_json(p, {"x": 1})

    def hook(step):
        raise Crash(step)

    prev = io.set_fault_hook(hook)
    try:
        with pytest.raises(Crash):
            io.atomic_write_json(p, {"x": 2})
    finally:
        io.set_fault_hook(prev)
    assert json.loads(p.read_text()) == {"x": 1}
    assert [c.name for c in tmp_path.iterdir()] == ["a.json"]


def _save(folder, version: int, files=("a.bin", "b.txt")):
    with io.atomic_folder(folder) as st:
        for name in files:
            (st / name).write_text(f"{name}:{version}")
        (st / "manifest.json").write_text(json.dumps({"version": version, "checksums": {n: "" for n in files}}))


def _read(folder) -> int:
    """Load the version a folder holds: manifest + every file it lists must agree."""
    m = json.loads((folder / "manifest.json").read_text())
    for logical, stored in m["files"].items():
        assert (folder / stored).read_text() == f"{logical}:{m['version']}"
    return m["version"]


def test_atomic_folder_keeps_mode_symlink_and_foreign_files(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    os.chmod(target, 0o755)
    (target / "photo.jpg").write_bytes(b"user data")
    link = tmp_path / "link"
    link.symlink_to(target)
    _save(link, 1)
    _save(link, 2)
    assert link.is_symlink() and _read(link) == 2 and _read(target) == 2
    assert (target.stat().st_mode & 0o777) == 0o755
    assert (target / "photo.jpg").read_bytes() == b"user data"
    # only the current version's files remain (the old ones are removed after the commit)
    names = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
    assert len(names) == 4 and "manifest.json" in names and "photo.jpg" in names


def test_atomic_folder_crash_at_every_step_leaves_old_or_new(tmp_path):
    """Kill semantics: the folder as it is on disk at each fault point (copied there) must load."""
    import shutil

    def scenario(folder):
        _save(folder, 1, files=("a.bin", "b.txt", "gone.dat"))
        steps: list[str] = []
        prev = io.set_fault_hook(steps.append)
        try:
            _save(folder, 2)
        finally:
            io.set_fault_hook(prev)
        return steps

    steps = scenario(tmp_path / "probe")
    assert "folder:committed" in steps and any(s.startswith("folder:renamed") for s in steps)
    assert any(s.startswith("folder:removed") for s in steps)
    for n, step in enumerate(steps):
        folder = tmp_path / f"f{n}"
        _save(folder, 1, files=("a.bin", "b.txt", "gone.dat"))
        snapshot = tmp_path / f"snap{n}"
        calls = []

        def hook(s, folder=folder, snapshot=snapshot, n=n, calls=calls):
            calls.append(s)
            if len(calls) == n + 1:
                shutil.copytree(folder, snapshot, symlinks=True)  # the disk as a kill -9 here leaves it
                raise Crash(s)

        prev = io.set_fault_hook(hook)
        try:
            with pytest.raises(Crash):
                _save(folder, 2)
        finally:
            io.set_fault_hook(prev)
        assert _read(snapshot) in (1, 2), step
        assert _read(folder) in (1, 2), step
        # the next save cleans whatever the crash left behind
        _save(folder, 3)
        io.clean_stale(folder)
        assert _read(folder) == 3
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
            ["manifest.json", *json.loads((folder / "manifest.json").read_text())["files"].values()])


def test_folder_lock_refuses_a_second_process(tmp_path):
    code = ("import sys, time; from xmodal.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(XmodalError, match="in use"):
            with io.folder_lock(tmp_path / "out"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with io.folder_lock(tmp_path / "out"):  # released by the kernel when the holder died
        with io.folder_lock(tmp_path / "out"):  # re-entrant in one process
            pass


def test_replace_dir_crash_between_renames_is_recovered(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "state").write_text("old")
    new = tmp_path / "tmp"
    new.mkdir()
    (new / "state").write_text("new")

    def hook(step):
        if step == "dir:moved-old":
            raise Crash(step)

    prev = io.set_fault_hook(hook)
    try:
        with pytest.raises(Crash):
            io.replace_dir(new, final)
    finally:
        io.set_fault_hook(prev)
    assert not final.exists()  # the window the old code left open
    assert io.recover_dir(final) == final and (final / "state").read_text() == "old"
    assert not list(tmp_path.glob(".ckpt.old-*"))


def test_clean_stale_keeps_data_when_the_manifest_is_unreadable(tmp_path):
    _save(tmp_path / "f", 1)
    (tmp_path / "f" / "manifest.json").write_text("{ damaged")
    io.clean_stale(tmp_path / "f")
    assert len([p for p in (tmp_path / "f").iterdir() if io.is_versioned_name(p.name)]) == 2
