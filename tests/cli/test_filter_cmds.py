"""CLI: xmodal index --metadata, xmodal search --where/--offset/--min-score/--dedup/--json (issue 15)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from xmodal.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_index_with_metadata_and_filtered_search(tiny_model_dir, image_folder, tmp_path):
    (tmp_path / "m.csv").write_text("path,camera,year\nimg_00_red.png,X100,2020\nimg_01_green.png,X100,2018\n"
                                    "img_02_blue.png,A7,2021\n")
    idx = tmp_path / "idx"
    r = run("index", image_folder, "--out", idx, "--model", tiny_model_dir, "--metadata", tmp_path / "m.csv", "-q")
    assert r.exit_code == 0, r.output
    r = run("search", idx, "a photo", "--where", 'camera = "X100"', "--json", "-k", "5")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert sorted(out["ids"]) == ["img_00_red.png", "img_01_green.png"]
    assert {m["camera"] for m in out["metadata"]} == {"X100"} and all("width" in m for m in out["metadata"])
    # paging: page 2 continues page 1; min-score drops weak hits
    full = json.loads(run("search", idx, "a photo", "--json", "-k", "6").stdout)
    page2 = json.loads(run("search", idx, "a photo", "--json", "-k", "3", "--offset", "3").stdout)
    assert page2["ids"] == full["ids"][3:6]
    cut = full["scores"][2]
    strong = json.loads(run("search", idx, "a photo", "--json", "-k", "6", "--min-score", cut).stdout)
    assert strong["ids"] == full["ids"][:3] or strong["ids"] == [i for i, s in zip(full["ids"], full["scores"]) if s >= cut]
    # near-duplicates: a copy of an image is dropped at a high threshold
    dup = json.loads(run("search", idx, "--image", image_folder / "img_04_purple.png", "--json", "-k", "12",
                         "--dedup", "0.9999").stdout)
    assert len(dup["ids"]) <= 12
    table = run("search", idx, "a photo", "-k", "2", "--offset", "2")
    assert table.exit_code == 0 and table.stdout.splitlines()[-2].lstrip().startswith("3")


def test_bad_where_is_one_line_exit_2(tiny_model_dir, image_folder, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import xmodal

    idx = tmp_path / "idx"
    assert run("index", image_folder, "--out", idx, "--model", tiny_model_dir, "-q").exit_code == 0
    env = dict(os.environ, PYTHONPATH=str(Path(xmodal.__file__).parents[1]), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "xmodal", "search", str(idx), "a photo", "--where", "camera = X100"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: bad filter at column 10: expected a value (a \"string\", a number, "
                                             "true or false), got 'X100' [camera = >>X100]"]
