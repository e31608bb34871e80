"""``xmodal features split|info|convert`` through the real command line."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from typer.testing import CliRunner

from xmodal.cli import app, main
from xmodal.data.features import FeatureStore


def _b64(a) -> str:
    return base64.b64encode(np.asarray(a, dtype="<f4").tobytes()).decode()


@pytest.fixture()
def big_tsv(tmp_path):
    """A classic headerless bottom-up TSV of 6 good rows (36 x 64) and one bad one (line 4)."""
    rng = np.random.default_rng(0)
    good = {}
    lines = []
    for i in range(7):
        feats, boxes = rng.standard_normal((36, 64)).astype(np.float32), rng.uniform(0, 300, (36, 4)).astype(np.float32)
        if i == 3:
            lines.append("\t".join(["bad", "640", "480", "36", _b64(boxes), _b64(feats[:, :60])]))
            continue
        good[str(1000 + i)] = (feats, boxes)
        lines.append("\t".join([str(1000 + i), "640", "480", "36", _b64(boxes), _b64(feats)]))
    path = tmp_path / "trainval_36.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path, good


def test_split_reports_bad_rows_and_resumes(big_tsv, tmp_path):
    path, good = big_tsv
    out = tmp_path / "npz"
    runner = CliRunner()
    r = runner.invoke(app, ["features", "split", str(path), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "wrote 6 npz files, 0 already there, skipped 1 malformed rows" in r.output
    assert "skipped trainval_36.tsv:4: features length 2160 is not num_boxes*64" in r.output
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(good)
    store = FeatureStore.open(out)
    for k, (feats, boxes) in good.items():
        np.testing.assert_array_equal(store[k].regions, feats)
        np.testing.assert_array_equal(store[k].boxes, boxes)
        assert (store[k].image_w, store[k].image_h) == (640, 480)

    (out / "1002.npz").unlink()  # an interrupted run: one file missing
    before = (out / "1000.npz").stat().st_mtime_ns
    r = runner.invoke(app, ["features", "split", str(path), "-o", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "wrote 1 npz files, 5 already there" in r.output
    assert (out / "1000.npz").stat().st_mtime_ns == before  # not rewritten
    np.testing.assert_array_equal(FeatureStore.open(out)["1002"].regions, good["1002"][0])


def test_info_and_convert(big_tsv, tmp_path):
    path, good = big_tsv
    runner = CliRunner()
    r = runner.invoke(app, ["features", "info", str(path)])
    assert r.exit_code == 0, r.output
    assert "tsv, 6 images, feature dim 64" in r.output
    assert "regions per image: min 36, mean 36.0, max 36 (216 in all)" in r.output
    assert "boxes: mean size" in r.output and "skipped records: 1" in r.output
    assert "trainval_36.tsv:4" in r.output

    h5 = tmp_path / "f.h5"
    r = runner.invoke(app, ["features", "convert", str(path), "--to", "hdf5", "--out", str(h5), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "hdf5, 6 images" in r.output
    store = FeatureStore.open(h5, in_memory=True)
    for k, (feats, _) in good.items():
        np.testing.assert_array_equal(store[k].regions, feats)
    r = runner.invoke(app, ["features", "info", str(h5), "--limit", "2"])
    assert r.exit_code == 0 and "hdf5, 6 images (statistics over the first 2)" in r.output, r.output


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["features", "info", str(tmp_path / "missing.tsv")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: feature store not found") and "\n" not in err
    (tmp_path / "out.h5").write_bytes(b"x")
    src = tmp_path / "src"
    src.mkdir()
    np.savez(src / "a.npz", regions=np.ones((2, 4)), boxes=np.ones((2, 4)))
    with pytest.raises(SystemExit) as e:
        main(["features", "convert", str(src), "--out", str(tmp_path / "out.h5"), "--no-progress"])
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err
