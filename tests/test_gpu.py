"""GPU checks: run on a machine with CUDA (skipped elsewhere). Models load on the GPU in the asked precision
and give the CPU's vectors; pretrained late-interaction models too; a missing GPU index is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEXTS = ["a red circle", "two blue squares", "a green star left of a circle"]


def _images():
    return [Image.new("RGB", (40, 36), c) for c in ("red", "blue", "green")]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dual_encoder_on_cuda_matches_cpu(tiny_model_dir, dtype):
    from xmodal.models import load_model

    cpu = load_model(str(tiny_model_dir), device="cpu")
    gpu = load_model(str(tiny_model_dir), device="cuda", dtype=dtype)
    assert gpu.device.type == "cuda" and gpu.dtype == getattr(torch, dtype)
    tol = 1e-4 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(gpu.encode_text(TEXTS), cpu.encode_text(TEXTS), atol=tol)
    np.testing.assert_allclose(gpu.encode_image(_images()), cpu.encode_image(_images()), atol=tol)


def test_auto_device_picks_the_gpu(tiny_model_dir):
    from xmodal.models import load_model

    assert load_model(str(tiny_model_dir), device="auto").device.type == "cuda"


def test_colpali_and_flmr_on_cuda_match_cpu(tmp_path):
    from xmodal.models import load_model
    from xmodal.models.tiny_late import build_tiny_colpali, build_tiny_flmr

    for folder in (build_tiny_colpali(tmp_path / "colpali"), build_tiny_flmr(tmp_path / "flmr")):
        cpu = load_model(str(folder), device="cpu")
        gpu = load_model(str(folder), device="cuda", dtype="float32")
        assert gpu.device.type == "cuda"
        for a, b in zip(gpu.encode_text(TEXTS), cpu.encode_text(TEXTS)):
            np.testing.assert_allclose(a, b, atol=1e-3)
        q = ("which one is red?", _images()[0])
        np.testing.assert_allclose(gpu.encode_query(*q), cpu.encode_query(*q), atol=1e-3)
        half = load_model(str(folder), device="cuda", dtype="bfloat16")
        assert half.dtype == torch.bfloat16 and np.isfinite(np.concatenate(half.encode_text(TEXTS))).all()


def test_a_gpu_that_is_not_there_is_one_clear_error():
    from xmodal.errors import InvalidInputError
    from xmodal.runtime import resolve_device

    with pytest.raises(InvalidInputError, match="cuda:"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
