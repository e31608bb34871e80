"""`xmodal index-texts` and `xmodal search --mode` end to end, through the console entry point (issue #15)."""

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


def test_index_texts_then_search_by_image_and_by_text(tiny_model_dir, image_folder, tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("id,text,brand\nr,a red circle,acme\ng,a green circle,acme\ncode,spare part QX-9931,bolt\n")
    idx = tmp_path / "tidx"
    r = run("index-texts", str(texts), "--model", str(tiny_model_dir), "--out", str(idx), "-q",
            "--text-fields", "text,brand")
    assert r.returncode == 0, r.stderr
    assert "3 texts: 3 added" in r.stdout and "lexical (BM25) index: 3 texts" in r.stdout
    r = run("search", str(idx), "--image", str(image_folder / "img_00_red.png"), "--json", "-k", "3")  # image -> text
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out["ids"]) == ["code", "g", "r"] and out["paths"] == [] and len(out["texts"]) == 3
    r = run("search", str(idx), "qx-9931", "--mode", "lexical", "-k", "2")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == 1 and "code" in rows[0] and "spare part QX-9931" in rows[0]
    r = run("search", str(idx), "bolt", "--mode", "hybrid", "--json", "-k", "1")
    assert json.loads(r.stdout)["ids"] == ["code"] and json.loads(r.stdout)["stage"] == "hybrid"
    r = run("index-texts", str(texts), "--out", str(idx), "-q")  # model and fields taken from the index
    assert r.returncode == 0 and "0 added" in r.stdout and "3 unchanged" in r.stdout


def test_index_with_texts_and_mode_errors(tiny_model_dir, image_folder, tmp_path):
    caps = tmp_path / "caps.tsv"
    caps.write_text("path\tcaption\nimg_03_yellow.png\ta yellow ball, SKU YB-1\nsub/img_10_brown.png\tbrown box\n")
    idx = tmp_path / "idx"
    r = run("index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(idx), "-q", "--texts", str(caps))
    assert r.returncode == 0, r.stderr
    r = run("search", str(idx), "SKU yb-1", "--mode", "lexical", "--json")
    assert json.loads(r.stdout)["ids"] == ["img_03_yellow.png"]
    for args, expected in [
        (("search", str(idx), "--image", str(image_folder / "img_00_red.png"), "--mode", "lexical"), "needs a text query"),
        (("search", str(idx), "red", "--mode", "sparse"), "unknown search mode"),
        (("search", str(idx), "red", "--mode", "hybrid", "--fusion", "max"), "unknown fusion"),
        (("index-texts", str(tmp_path / "none.jsonl"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "t")),
         "not found"),
        (("index-texts", str(caps), "--model", str(tiny_model_dir), "--out", str(tmp_path / "t")), "no 'text' field"),
    ]:
        r = run(*args)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
