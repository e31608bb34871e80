"""ONNX export (xmodal export) and the onnx model kind: parity with torch, dynamic batch, indexes, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import xmodal  # noqa: E402
from xmodal.errors import InvalidInputError, ModelNotFoundError  # noqa: E402
from xmodal.models import load_model  # noqa: E402
from xmodal.models.fingerprint import weights_fingerprint  # noqa: E402
from xmodal.models.onnx_encoder import OnnxEncoder, export_onnx  # noqa: E402
from xmodal.models.tiny import build_tiny_model  # noqa: E402

TEXTS = ["a", "a red circle", "a small blue square left of a big green star", "一 个 红 色 的 圆", "the dog on the beach"]


def images(n: int):
    from PIL import Image

    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (20 + 9 * i, 50 - 4 * i, 3), dtype=np.uint8)) for i in range(n)]


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(xmodal.__file__).parents[1]), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "xmodal", *args], capture_output=True, text=True, env=env, timeout=180)


@pytest.mark.parametrize("arch", ["clip", "siglip", "chinese_clip"])
def test_onnx_parity_with_torch(arch, tmp_path):
    build_tiny_model(arch, tmp_path / "m")
    torch_model = load_model(tmp_path / "m")
    done = export_onnx(str(tmp_path / "m"), tmp_path / "onnx")
    assert done["parity"]["text"] < 1e-4 and done["parity"]["image"] < 1e-4
    enc = load_model(tmp_path / "onnx", role="single-vector")  # the folder's own config says: onnx
    assert isinstance(enc, OnnxEncoder) and enc.embedding_dim == torch_model.embedding_dim
    for n in (1, 2, 5):  # dynamic batch (and, for CLIP/Chinese-CLIP, sequence length)
        np.testing.assert_allclose(enc.encode_text(TEXTS[:n]), torch_model.encode_text(TEXTS[:n]), atol=1e-4, rtol=0)
        ims = images(n)
        np.testing.assert_allclose(enc.encode_image(ims), torch_model.encode_image(ims), atol=1e-4, rtol=0)
    # one batch of 5 == five batches of 1
    np.testing.assert_allclose(enc.encode_text(TEXTS, batch_size=1), enc.encode_text(TEXTS, batch_size=5), atol=1e-5)
    # same model id and weight fingerprint as the torch source: indexes accept either
    assert enc.model_id == torch_model.model_id
    assert weights_fingerprint(enc) == weights_fingerprint(torch_model)


def test_index_with_torch_search_with_onnx_runtime(tiny_model_dir, image_folder, tmp_path):
    idx = tmp_path / "idx"
    xmodal.index_folder(image_folder, idx, str(tiny_model_dir), show_progress=False)
    query = image_folder / "img_04_purple.png"
    torch_hits = xmodal.search(idx, "a red circle", k=5)
    cache = tmp_path / "cache"
    os.environ["XMODAL_CACHE"] = str(cache)
    try:
        onnx_hits = xmodal.search(idx, "a red circle", k=5, runtime="onnx")  # exported once into the cache
        assert (cache / "onnx").is_dir() and len(list((cache / "onnx").iterdir())) == 1
        assert onnx_hits.result.ids == torch_hits.result.ids
        np.testing.assert_allclose(onnx_hits.result.scores, torch_hits.result.scores, atol=1e-4)
        assert xmodal.search(idx, image=query, k=1, runtime="onnx").result.ids == ["img_04_purple.png"]
        # and an index built with onnxruntime records the export and is searched with it
        built = xmodal.index_folder(image_folder, tmp_path / "idx2", str(tiny_model_dir), runtime="onnx",
                                    show_progress=False)
        assert built.added == 12
        assert xmodal.search(tmp_path / "idx2", "a red circle", k=5).result.ids == torch_hits.result.ids
        assert len(list((cache / "onnx").iterdir())) == 1  # reused, not exported again
    finally:
        os.environ.pop("XMODAL_CACHE", None)


def test_export_command_and_runtime_flag(tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "onnx"
    r = run("export", str(tiny_model_dir), "--format", "onnx", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "max |onnxruntime - torch|" in r.stdout and (out / "text.onnx").is_file() and (out / "image.onnx").is_file()
    idx = tmp_path / "idx"
    r = run("index", str(image_folder), "--model", str(out), "--out", str(idx), "-q")  # the export is a model
    assert r.returncode == 0, r.stderr
    r = run("search", str(idx), "a red circle", "-k", "3", "--runtime", "torch")  # back to the torch source
    assert r.returncode == 0, r.stderr
    r2 = run("search", str(idx), "a red circle", "-k", "3")
    assert r2.returncode == 0 and [ln.split()[2] for ln in r.stdout.splitlines()[1:]] == \
        [ln.split()[2] for ln in r2.stdout.splitlines()[1:]]
    # an existing export is replaced; another folder with files is refused
    assert run("export", str(tiny_model_dir), "--out", str(out), "--no-check").returncode == 0
    r = run("export", str(tiny_model_dir), "--out", str(image_folder))
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr


def test_clear_errors(tmp_path, monkeypatch):
    from xmodal.models.tiny_cross import build_tiny_blip

    build_tiny_blip(tmp_path / "cross")
    r = run("export", str(tmp_path / "cross"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'cross' model" in r.stderr and "dual encoders" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("export", str(tmp_path / "cross"), "--format", "tflite", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown export format 'tflite'" in r.stderr
    build_tiny_model("clip", tmp_path / "m")
    export_onnx(str(tmp_path / "m"), tmp_path / "onnx", check=False)
    with pytest.raises(InvalidInputError, match="already an ONNX export"):
        export_onnx(str(tmp_path / "onnx"), tmp_path / "again")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ModelNotFoundError, match=r"needs onnxruntime: pip install 'xmodal\[onnx\]'"):
        load_model(tmp_path / "onnx")
