"""`xmodal index` / `xmodal search` end to end, through the console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import xmodal


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(xmodal.__file__).parents[1]), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "xmodal", *args], capture_output=True, text=True, env=env, timeout=120)


def test_index_then_search_end_to_end(tiny_model_dir, image_folder, tmp_path):
    idx = tmp_path / "idx"
    r = run("index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(idx), "-q")
    assert r.returncode == 0, r.stderr
    assert "12 added" in r.stdout and "1 failed" in r.stdout and "broken.jpg" in r.stderr
    r = run("index", str(image_folder), "--out", str(idx), "-q")  # model taken from the index; nothing to do
    assert r.returncode == 0 and "0 added" in r.stdout and "12 unchanged" in r.stdout
    r = run("search", str(idx), "a red circle", "-k", "3", "--gallery", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[0] > 3 * 96
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["1", "2", "3"] and all(row[3].startswith("/") for row in rows)
    r = run("search", str(idx), "--image", str(image_folder / "img_04_purple.png"), "--json", "-k", "2")
    out = json.loads(r.stdout)
    assert out["ids"][0] == "img_04_purple.png" and out["stage"] == "retrieve" and len(out["paths"]) == 2


def test_clear_errors_without_tracebacks(tiny_model_dir, image_folder, tmp_path):
    idx = tmp_path / "idx"
    assert run("index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(idx), "-q").returncode == 0
    for args, expected in [
        (("search", str(idx), "   "), "query is empty"),
        (("search", str(tmp_path / "nope"), "dog"), "no index at"),
        (("search", str(image_folder), "dog"), "not an xmodal image index"),
        (("search", str(idx), "dog", "--model", str(tmp_path / "missing-model")), "not found"),
        (("index", str(image_folder), "--out", str(tmp_path / "new")), "--model"),
        (("search", str(idx)), "give a text query"),
    ]:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
