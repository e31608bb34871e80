"""Compact FAISS codes (fp16 / int8 / binary) with re-scoring: recall, remove, filter, save/load, manifest, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xmodal
from xmodal import FaissIndex, load_index
from xmodal.errors import InvalidInputError
from xmodal.indexes.quantize import resolve


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items and held-out queries around 50 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d))
    x = unit(centres[rng.integers(0, 50, n + 40)] + 0.3 * rng.standard_normal((n + 40, d)))
    return x[:n], x[n:]


def recall(got: np.ndarray, ref: np.ndarray, ids: list[str]) -> float:
    return float(np.mean([len(set(g) & {ids[j] for j in r}) / ref.shape[1] for g, r in zip(got.tolist(), ref)]))


X, Q = clustered(4000, 64)
IDS = [f"item-{i}" for i in range(len(X))]
REF = np.argsort(-(Q @ X.T), axis=1)[:, :10]

MODES = [("fp16", "auto"), ("int8", "none"), ("int8", "auto"), ("binary", "auto"), ("binary", "fp16")]
# recall@10 floors: re-scored against (or stored in) fp16 is near exact; int8 as final scores is coarser
FLOOR = {("fp16", "auto"): 0.98, ("int8", "none"): 0.85, ("int8", "auto"): 0.98, ("binary", "auto"): 0.85,
         ("binary", "fp16"): 0.98}


@pytest.mark.parametrize("quantize,rescore", MODES)
def test_quantized_search_recall_and_float_scores(quantize, rescore):
    index = FaissIndex(64, quantize=quantize, rescore=rescore)
    index.add(IDS, X)
    scores, got = index.search(Q, 10)
    assert recall(got, REF, IDS) >= FLOOR[quantize, rescore]
    # scores are inner products with the stored (or re-scoring) vectors, not code distances
    exact = np.sum(Q[:, None, :] * X[[[IDS.index(i) for i in row] for row in got]], axis=2)
    np.testing.assert_allclose(scores, exact, atol=0.02)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_int8_rescoring_beats_int8_alone():
    got = {}
    for rescore in ("none", "fp16"):
        index = FaissIndex(64, quantize="int8", rescore=rescore)
        index.add(IDS, X)
        got[rescore] = recall(index.search(Q, 10)[1], REF, IDS)
    assert got["fp16"] > got["none"] + 0.02 and got["fp16"] >= 0.98


@pytest.mark.parametrize("quantize,rescore", MODES)
def test_remove_filter_save_load_add(quantize, rescore, tmp_path):
    index = FaissIndex(64, quantize=quantize, rescore=rescore, model_id="m")
    index.add(IDS, X, metadata=[{"n": i} for i in range(len(IDS))])
    gone = IDS[:2000:2]
    assert index.remove(gone) == 1000
    allowed = {IDS[1], IDS[3], IDS[5], IDS[0]}  # IDS[0] was removed
    for idx in (index, load_index(index.save(tmp_path / "idx"), model_id="m")):
        _, got = idx.search(X[:5], 10)
        assert not set(got.ravel()) & set(gone)
        _, got = idx.search(Q[:3], 5, filter=allowed)
        assert {i for i in got.ravel() if i is not None} == {IDS[1], IDS[3], IDS[5]}
        assert len(idx) == 3000 and idx.metadata(IDS[7]) == {"n": 7}
    again = load_index(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["params"]["quantize"] == quantize
    assert again.params["quantize"] == quantize and again.params["rescore"] == index.params["rescore"]
    np.testing.assert_array_equal(again.search(Q, 10)[1], index.search(Q, 10)[1])
    again.add(["new"], X[1:2] * -1)  # a loaded (memory-mapped) quantized index takes new items
    assert again.search(-X[1:2], 1)[1][0, 0] == "new"


@pytest.mark.parametrize("quantize", ["int8", "binary"])
def test_appended_segments_and_compaction_keep_removals_masked(quantize, tmp_path):
    index = FaissIndex(64, quantize=quantize)
    index.add(IDS[:2000], X[:2000])
    index.save(tmp_path / "idx")
    index.remove(IDS[:10])
    index.add(IDS[2000:2050], X[2000:2050])  # small: appended as a segment
    index.save(tmp_path / "idx")
    index.add(IDS[2050:], X[2050:])  # large: compacted into a new base (a refine wrapper cannot delete: masked)
    index.save(tmp_path / "idx")
    again = load_index(tmp_path / "idx")
    assert len(again) == len(IDS) - 10
    _, got = again.search(X[:12], 1)
    assert got[:10, 0].tolist() != IDS[:10] and got[10:, 0].tolist() == IDS[10:12]
    assert not set(again.search(X[:10], 10)[1].ravel()) & set(IDS[:10])
    assert again.search(X[3000:3001], 1)[1][0, 0] == IDS[3000]


def test_unquantized_manifest_unchanged(tmp_path):
    index = FaissIndex(8)
    index.add(["a"], np.ones((1, 8)))
    params = json.loads((index.save(tmp_path / "i") / "manifest.json").read_text())["params"]
    assert "quantize" not in params  # older readers keep reading new float indexes


def test_small_first_add_is_calibrated_with_margin():
    index = FaissIndex(16, quantize="int8", rescore="none")
    first = unit(np.random.default_rng(0).standard_normal((1, 16)))
    index.add(["one"], first)  # a single vector: a range around it, not an empty one
    more = unit(np.random.default_rng(1).standard_normal((20, 16)))
    index.add([str(i) for i in range(20)], more)
    assert index.search(first, 1)[1][0, 0] == "one"
    assert index.search(more[3:4], 1)[1][0, 0] == "3"


def test_bad_options_are_one_clear_line():
    with pytest.raises(InvalidInputError, match="unknown quantize 'int4'"):
        FaissIndex(8, quantize="int4")
    with pytest.raises(InvalidInputError, match="kind='flat'"):
        FaissIndex(8, kind="hnsw", quantize="int8")
    with pytest.raises(InvalidInputError, match="need a re-scoring store"):
        FaissIndex(8, quantize="binary", rescore="none")
    with pytest.raises(InvalidInputError, match="gains nothing"):
        FaissIndex(8, quantize="int8", rescore="int8")
    with pytest.raises(InvalidInputError, match="rescore_factor"):
        FaissIndex(8, quantize="int8", rescore_factor=0)


def test_bytes_per_item():
    assert resolve("int8", "auto", None, "flat").bytes_per_item(512) == {"searched": 512, "rescore_store": 1024,
                                                                         "total": 1536}
    assert resolve("binary", "auto", None, "flat").bytes_per_item(512)["searched"] == 64


def test_index_command_quantize(tiny_model_dir, image_folder, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(xmodal.__file__).parents[1]), HF_HUB_OFFLINE="1")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xmodal", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    idx = tmp_path / "idx"
    r = run("index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(idx), "-q", "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    assert json.loads((idx / "manifest.json").read_text())["params"]["rescore"] == "fp16"
    r = run("search", str(idx), "--image", str(image_folder / "img_04_purple.png"), "--json", "-k", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ids"] == ["img_04_purple.png"]
    r = run("index", str(image_folder), "--out", str(idx), "-q", "--quantize", "binary")
    assert r.returncode == 2 and "stores int8 vectors" in r.stderr and "Traceback" not in r.stderr
    r = run("index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), "-q",
            "--quantize", "int4")
    assert r.returncode == 2 and "unknown quantize 'int4'" in r.stderr and "Traceback" not in r.stderr
