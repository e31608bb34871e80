"""`xmodal evaluate` end to end on a Karpathy JSON and images made here."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from xmodal.cli import app


def test_evaluate_karpathy(tiny_model_dir, tmp_path):
    colours = ["red", "green", "blue", "yellow"]
    for c in colours:
        Image.new("RGB", (30, 30), c).save(tmp_path / f"{c}.png")
    data = {"dataset": "toy", "images": [{"filename": f"{c}.png", "split": "test",
                                           "sentences": [{"raw": f"a {c} square"}, {"raw": f"{c}"}]} for c in colours]}
    (tmp_path / "ds.json").write_text(json.dumps(data))
    r = CliRunner().invoke(app, ["evaluate", "--dataset", f"karpathy:{tmp_path / 'ds.json'}", "--images", str(tmp_path),
                                 "--model", str(tiny_model_dir), "--out", str(tmp_path / "m.json"),
                                 "--muge-predictions", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    assert "toy / test: 4 images, 8 captions" in r.output and "mean_recall" in r.output
    m = json.loads((tmp_path / "m.json").read_text())["retrieve"]
    assert m["t2i_R@10"] == 100.0 and 0 <= m["t2i_R@1"] <= 100
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 8 and len(json.loads(lines[0])["item_ids"]) == 4
