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


COLOURS = ["red", "green", "blue", "yellow", "purple"]


def test_evaluate_multi30k(tiny_model_dir, tmp_path):
    """Multi30k-style parallel files (image list + one caption file per language) via the CLI."""
    imgs = tmp_path / "flickr30k-images"
    imgs.mkdir()
    for c in COLOURS:
        Image.new("RGB", (30, 30), c).save(imgs / f"{c}.jpg")
    (tmp_path / "test_2016_flickr.txt").write_text("".join(f"{c}.jpg\n" for c in COLOURS))
    (tmp_path / "test_2016_flickr.en").write_text("".join(f"a {c} square\n" for c in COLOURS))
    (tmp_path / "test_2016_flickr.de").write_text("".join(f"ein {c} Quadrat\n" for c in COLOURS))
    spec = (f"multi30k:{tmp_path / 'test_2016_flickr.txt'},en={tmp_path / 'test_2016_flickr.en'},"
            f"de={tmp_path / 'test_2016_flickr.de'}")
    r = CliRunner().invoke(app, ["evaluate", "--dataset", spec, "--images", str(imgs), "--model", str(tiny_model_dir),
                                 "--out", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    assert "multi30k / test: 5 images, 10 captions" in r.output
    header = next(ln for ln in r.output.splitlines() if ln.startswith("run ")).split()
    assert "i2t_R@10" in header and "mean_recall" in header  # headers are separated
    m = json.loads((tmp_path / "m.json").read_text())["retrieve"]
    assert m["t2i_R@10"] == 100.0 and m["i2t_R@10"] == 100.0 and 0 <= m["mean_recall"] <= 100

    bad = CliRunner().invoke(app, ["evaluate", "--dataset", f"multi30k:{tmp_path / 'test_2016_flickr.txt'}",
                                   "--images", str(imgs), "--model", str(tiny_model_dir)])
    assert bad.exit_code != 0 and "LANG=CAPTIONS" in str(bad.exception or bad.output)


def test_evaluate_muge_with_predictions(tiny_model_dir, tmp_path):
    """MUGE: queries jsonl + image_id<TAB>base64 TSV, with --muge-predictions."""
    import base64
    import io

    rows = []
    for n, c in enumerate(COLOURS):
        buf = io.BytesIO()
        Image.new("RGB", (30, 30), c).save(buf, format="PNG")
        rows.append(f"{1000 + n}\t{base64.b64encode(buf.getvalue()).decode()}\n")
    (tmp_path / "valid_imgs.tsv").write_text("".join(rows))
    queries = [{"query_id": 10 + n, "query_text": f"{c} 方块", "item_ids": [1000 + n]} for n, c in enumerate(COLOURS)]
    queries.append({"query_id": 99, "query_text": "red or green", "item_ids": [1000, 1001]})
    (tmp_path / "valid_texts.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries))
    r = CliRunner().invoke(app, ["evaluate", "--dataset", f"muge:{tmp_path / 'valid_texts.jsonl'}",
                                 "--images", str(tmp_path / "valid_imgs.tsv"), "--model", str(tiny_model_dir),
                                 "--muge-predictions", str(tmp_path / "preds.jsonl")])
    assert r.exit_code == 0, r.output
    assert "muge / valid: 5 images, 6 captions" in r.output and "MUGE predictions written" in r.output
    preds = [json.loads(ln) for ln in (tmp_path / "preds.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["query_id"] for p in preds] == [q["query_id"] for q in queries]
    for p in preds:  # every image ranked once (5 < top 10)
        assert sorted(p["item_ids"]) == [str(1000 + n) for n in range(5)]
