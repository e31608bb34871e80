"""`xmodal evaluate` end to end on a Karpathy JSON and images made here."""

from __future__ import annotations

import json

import pytest
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
    assert "toy / test: 4 images, 8 captions" in r.output and "mean_recall" in r.output
    assert r.exit_code != 0 and "at least 10 images" in str(r.exception)  # 4 images: no scorer-valid top 10
    m = json.loads((tmp_path / "m.json").read_text())["retrieve"]  # the metrics were written before
    assert m["t2i_R@10"] == 100.0 and 0 <= m["t2i_R@1"] <= 100
    assert not (tmp_path / "p.jsonl").exists()


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
    """MUGE: queries jsonl + image_id<TAB>base64 TSV, with --muge-predictions in the ground truth's id types."""
    from jsonl_datasets import write_split

    texts, tsv, recs = write_split(tmp_path, "muge")
    r = CliRunner().invoke(app, ["evaluate", "--dataset", f"muge:{texts}", "--images", str(tsv),
                                 "--model", str(tiny_model_dir), "--muge-predictions", str(tmp_path / "preds.jsonl")])
    assert r.exit_code == 0, r.output
    assert "muge / valid: 12 images, 13 captions" in r.output and "t2i predictions written" in r.output
    preds = [json.loads(ln) for ln in (tmp_path / "preds.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["query_id"] for p in preds] == [q["query_id"] for q in recs]
    for p in preds:  # 10 distinct integer ids out of the 12 images
        assert len(set(p["item_ids"])) == 10 and all(type(i) is int and 1000 <= i < 1012 for i in p["item_ids"])


def test_evaluate_chinese_clip_end_to_end(tiny_model_dir, tmp_path):
    """A Chinese-CLIP split (text_id/text/image_ids + base64 TSV) through `xmodal evaluate --dataset cnclip:`:
    metrics file with its units, both prediction files accepted by the reference scorer, R@K equal to muge_score."""
    import reference_scorer as ref
    from jsonl_datasets import write_split

    from xmodal.evaluation import METRIC_UNITS, muge_score

    texts, tsv, _ = write_split(tmp_path, "cnclip", split="test")
    r = CliRunner().invoke(app, ["evaluate", "--dataset", f"cnclip:{texts}", "--images", str(tsv), "--split", "test",
                                 "--model", str(tiny_model_dir), "--out", str(tmp_path / "m.json"),
                                 "--muge-predictions", str(tmp_path / "t2i.jsonl"),
                                 "--tr-predictions", str(tmp_path / "i2t.jsonl")])
    assert r.exit_code == 0, r.output
    assert "cnclip / test: 12 images, 13 captions" in r.output and "i2t predictions written" in r.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["units"] == METRIC_UNITS
    m = saved["retrieve"]
    assert all(0 <= m[k] <= 100 for k in m if k.split("_", 1)[-1] in ("R@1", "R@10", "MRR", "nDCG@10"))
    reference = ref.read_reference(texts, "text_id", "image_ids")
    for pred, gt, keys in ((tmp_path / "t2i.jsonl", reference, ("text_id", "image_ids")),
                           (tmp_path / "i2t.jsonl", ref.invert(reference), ("image_id", "text_ids"))):
        theirs = ref.score(gt, pred, *keys)
        ours = muge_score(pred, texts)
        assert [ours[f"R@{k}"] for k in (1, 5, 10)] == pytest.approx([theirs[f"r{k}"] for k in (1, 5, 10)])
    # the same recall as the evaluator's table (no ties with a random model)
    assert muge_score(tmp_path / "t2i.jsonl", texts)["R@5"] == pytest.approx(m["t2i_R@5"])
