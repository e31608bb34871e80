"""`xmodal index-texts` and `xmodal search --mode` end to end (issue #15): one run through the console entry
point, the rest in-process (a CLI subprocess costs ~10 s of imports on the shared 2-core machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import xmodal
from xmodal.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_index_texts_then_search_by_image_and_by_text(tiny_model_dir, image_folder, tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("id,text,brand\nr,a red circle,acme\ng,a green circle,acme\ncode,spare part QX-9931,bolt\n")
    idx = tmp_path / "tidx"
    code, out, err = cli(capsys, "index-texts", str(texts), "--model", str(tiny_model_dir), "--out", str(idx), "-q",
                         "--text-fields", "text,brand")
    assert code == 0, err
    assert "3 texts: 3 added" in out and "lexical (BM25) index: 3 texts" in out
    # image -> text through the real console entry point
    env = dict(os.environ, PYTHONPATH=str(Path(xmodal.__file__).parents[1]), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "xmodal", "search", str(idx), "--image",
                        str(image_folder / "img_00_red.png"), "--json", "-k", "3"],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert sorted(hits["ids"]) == ["code", "g", "r"] and hits["paths"] == [] and len(hits["texts"]) == 3
    code, out, err = cli(capsys, "search", str(idx), "qx-9931", "--mode", "lexical", "-k", "2")
    rows = out.splitlines()[1:]
    assert code == 0 and len(rows) == 1 and "code" in rows[0] and "spare part QX-9931" in rows[0], (out, err)
    code, out, _ = cli(capsys, "search", str(idx), "bolt", "--mode", "hybrid", "--json", "-k", "1")
    assert json.loads(out)["ids"] == ["code"] and json.loads(out)["stage"] == "hybrid"
    code, out, _ = cli(capsys, "index-texts", str(texts), "--out", str(idx), "-q")  # model/fields from the index
    assert code == 0 and "0 added" in out and "3 unchanged" in out


def test_index_with_texts_and_mode_errors(tiny_model_dir, image_folder, tmp_path, capsys):
    caps = tmp_path / "caps.tsv"
    caps.write_text("path\tcaption\nimg_03_yellow.png\ta yellow ball, SKU YB-1\nsub/img_10_brown.png\tbrown box\n")
    idx = tmp_path / "idx"
    code, _, err = cli(capsys, "index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(idx), "-q",
                       "--texts", str(caps))
    assert code == 0, err
    code, out, _ = cli(capsys, "search", str(idx), "SKU yb-1", "--mode", "lexical", "--json")
    assert json.loads(out)["ids"] == ["img_03_yellow.png"]
    for args, expected in [
        (("search", str(idx), "--image", str(image_folder / "img_00_red.png"), "--mode", "lexical"), "needs a text query"),
        (("search", str(idx), "red", "--mode", "sparse"), "unknown search mode"),
        (("search", str(idx), "red", "--mode", "hybrid", "--fusion", "max"), "unknown fusion"),
        (("index-texts", str(tmp_path / "none.jsonl"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "t")),
         "not found"),
        (("index-texts", str(caps), "--model", str(tiny_model_dir), "--out", str(tmp_path / "t")), "no 'text' field"),
    ]:
        code, out, err = cli(capsys, *args)
        assert code == 2 and expected in err and "Traceback" not in err, (args, out, err)


def test_metadata_fields_as_texts_with_a_filter(tiny_model_dir, image_folder, tmp_path, capsys):
    meta = tmp_path / "meta.csv"
    meta.write_text("path,caption,shop\nimg_03_yellow.png,yellow ball SKU YB-1,north\n"
                    "img_04_purple.png,purple ball SKU YB-1,south\n")
    idx = tmp_path / "idx"
    code, _, err = cli(capsys, "index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(idx), "-q",
                       "--metadata", str(meta), "--text-fields", "caption")
    assert code == 0, err
    code, out, err = cli(capsys, "search", str(idx), "YB-1", "--mode", "hybrid", "--where", 'shop = "south"', "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert hits["ids"][0] == "img_04_purple.png" and "img_03_yellow.png" not in hits["ids"]
    code, out, _ = cli(capsys, "search", str(idx), "YB-1", "--mode", "lexical", "--json")
    assert sorted(json.loads(out)["ids"]) == ["img_03_yellow.png", "img_04_purple.png"]
