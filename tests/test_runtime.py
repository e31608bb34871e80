"""``xmodal.runtime``: device and dtype specs resolve in one place, bad ones give one clear line."""

from __future__ import annotations

import pytest
import torch

from xmodal.errors import InvalidInputError
from xmodal.runtime import resolve_device, resolve_dtype


def test_auto_device_is_cuda_when_available_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None) == expected and resolve_device("auto") == expected and resolve_device("AUTO") == expected


def test_explicit_devices():
    assert resolve_device("cpu") == "cpu" and resolve_device(torch.device("cpu")) == "cpu"
    for bad in ("gpu", "cuda:x", "tpu", "", "cpu:1"):
        with pytest.raises(InvalidInputError):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_cuda_is_one_clear_line():
    with pytest.raises(InvalidInputError, match="no CUDA GPU is available") as e:
        resolve_device("cuda:0")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_index_out_of_range():
    with pytest.raises(InvalidInputError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_dtypes():
    assert resolve_dtype(None) is None and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    with pytest.raises(InvalidInputError, match="unknown dtype 'int7'"):
        resolve_dtype("int7")


def test_from_pretrained_routes_device_and_dtype_through_runtime(tiny_model_dir):
    from xmodal.models import load_model

    with pytest.raises(InvalidInputError, match="unknown device 'gpu0'"):
        load_model(tiny_model_dir, device="gpu0")
    m = load_model(tiny_model_dir, dtype="bf16")
    assert m.dtype is torch.bfloat16 and str(m.device) == resolve_device(None).replace("cuda", "cuda:0")
