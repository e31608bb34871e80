"""--device / --dtype / --threads: on every verb that runs a model, reaching the models it loads; bad values
are one line and exit code 2."""

from __future__ import annotations

import contextlib
import io
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from xmodal.cli import MODEL_COMMANDS, app, main

runner = CliRunner()


def run(*args) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("verb", sorted(MODEL_COMMANDS))
def test_every_model_verb_takes_the_options(verb):
    r = runner.invoke(app, [verb, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for opt in ("--device", "--dtype", "--threads"):
        assert opt in r.output


@pytest.fixture()
def placed(monkeypatch):
    """Records the device/dtype of every model xmodal places."""
    import xmodal.runtime as runtime

    seen = []
    original = runtime.place_model

    def spy(model, device=None, dtype=None):
        out = original(model, device, dtype)
        seen.append((next(out.parameters()).device.type, next(out.parameters()).dtype, torch.get_num_threads()))
        return out

    monkeypatch.setattr(runtime, "place_model", spy)
    return seen


def test_dtype_and_threads_reach_the_model(tiny_model_dir, image_folder, tmp_path, placed):
    before = torch.get_num_threads()
    try:
        idx = tmp_path / "idx"
        r = run("index", image_folder, "--model", tiny_model_dir, "--out", idx, "-q", "--device", "cpu",
                "--dtype", "float16", "--threads", "1")
        assert r.returncode == 0, r.stderr
        assert placed[-1] == ("cpu", torch.float16, 1)
        # the same checkpoint in another precision is the same model: no --allow-model-mismatch needed
        r = run("search", idx, "a red circle", "-k", "2", "--dtype", "bfloat16", "--threads", "2")
        assert r.returncode == 0, r.stderr
        assert placed[-1] == ("cpu", torch.bfloat16, 2)
        r = run("search", idx, "a red circle", "-k", "2")  # default: the weights' own dtype
        assert r.returncode == 0 and placed[-1][1] == torch.float32
    finally:
        torch.set_num_threads(before)


def test_pretrained_late_model_follows_the_options(image_folder, tmp_path):
    from xmodal.models import colpali
    from xmodal.models.tiny_late import build_tiny_colpali

    seen = []
    original = colpali.ColPaliEncoder.from_pretrained.__func__

    def spy(cls, *a, **k):
        m = original(cls, *a, **k)
        seen.append(m.dtype)
        return m

    folder = build_tiny_colpali(tmp_path / "c")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(colpali.ColPaliEncoder, "from_pretrained", classmethod(spy))
        r = run("index", image_folder, "--engine", "late-interaction", "--model", folder, "--out", tmp_path / "i",
                "-q", "--dtype", "bfloat16", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("args, message", [
    (("--device", "cuda:7"), "cuda:7"),
    (("--device", "tpu"), "unknown device 'tpu'"),
    (("--dtype", "int3"), "unknown dtype 'int3'"),
    (("--threads", "0"), "--threads must be a positive whole number"),
])
def test_bad_hardware_options_are_one_line(tiny_model_dir, image_folder, tmp_path, args, message):
    r = run("index", image_folder, "--model", tiny_model_dir, "--out", tmp_path / "idx", "-q", *args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "idx").exists()  # refused before any work


def test_a_dtype_the_device_cannot_run_is_exit_2(tiny_model_dir, image_folder, tmp_path, monkeypatch):
    import xmodal.runtime as rt

    monkeypatch.setattr(rt, "_RUNS", {(torch.float16, "cpu"): False})
    r = run("index", image_folder, "--model", tiny_model_dir, "--out", tmp_path / "idx", "-q", "--dtype", "float16",
            "--device", "cpu")
    assert r.returncode == 2 and "cannot run on device 'cpu'" in r.stderr
