"""Region-feature models from the command line: synth with features -> train -> evaluate with --features."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xmodal.cli import app, main


def test_synth_train_evaluate_region_models(tmp_path):
    runner = CliRunner()
    data = tmp_path / "data"
    r = runner.invoke(app, ["synth", str(data), "--n-train", "300", "--n-val", "30", "--n-test", "40", "--n-unseen", "10",
                            "--region-features", "32"])
    assert r.exit_code == 0, r.output
    assert len(list((data / "features").glob("*.npz"))) == 380
    ds = f"karpathy:{data / 'dataset.json'}"
    common = ["--dataset", ds, "--features", str(data / "features"), "--max-steps", "150", "--batch-size", "32",
              "--lr", "2e-3", "--warmup-steps", "5"]
    r = runner.invoke(app, ["train", "--model", "tiny:regions", "--out", str(tmp_path / "two"), "--eval-every", "150", *common])
    assert r.exit_code == 0, r.output
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert history[-1]["t2i_R@5"] > 40  # 30 val images: chance R@5 is ~17 %
    r = runner.invoke(app, ["train", "--model", "tiny:regions-single-stream", "--loss", "joint", "--eval-split", "",
                            "--out", str(tmp_path / "one"), *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--dataset", ds, "--split", "test", "--features", str(data / "features"),
                            "--model", str(tmp_path / "two" / "final"), "--rerank", str(tmp_path / "one" / "final"),
                            "--depth", "5", "--compare", "--out", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"units", "retrieve", "retrieve+rerank@5", "rerank-all"}  # metrics files name their units (#21)
    assert metrics["retrieve"]["t2i_R@5"] > 30  # 40 test images: chance ~12.5 %


def test_region_models_need_features_and_pixel_models_refuse_them(tmp_path, tiny_model_dir, capsys):
    runner = CliRunner()
    r = runner.invoke(app, ["synth", str(tmp_path / "d"), "--n-train", "20", "--n-val", "5", "--n-test", "5",
                            "--n-unseen", "5", "--region-features", "16"])
    assert r.exit_code == 0, r.output
    ds = f"karpathy:{tmp_path / 'd' / 'dataset.json'}"
    for argv in (["train", "--dataset", ds, "--model", "tiny:regions", "--out", str(tmp_path / "x")],
                 ["evaluate", "--dataset", ds, "--model", str(tiny_model_dir), "--features", str(tmp_path / "d" / "features")]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err and ("--features" in err)
