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


def test_odd_names_keep_the_table_one_row_per_result_and_huge_k_is_clamped(tiny_model_dir, tmp_path):
    """Issue 19 items 9 and 14: a newline / undecodable byte in a file name is escaped in the table;
    -k 1000000000 returns every item instead of a MemoryError."""
    from PIL import Image

    from xmodal.collection import build_collection

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, colour in [(b"two\nlines.png", "red"), (b"caf\xe9.png", "blue"), (b"plain.png", "green")]:
        Image.new("RGB", (32, 32), colour).save(os.path.join(os.fsencode(folder), name), format="PNG")
    build_collection(folder, str(tiny_model_dir), tmp_path / "idx", show_progress=False)
    r = run("search", str(tmp_path / "idx"), "a red square", "-k", "1000000000")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("3 results") and len(lines) == 4
    assert any("two\\nlines.png" in ln for ln in lines) and any("caf\\xe9.png" in ln for ln in lines)
