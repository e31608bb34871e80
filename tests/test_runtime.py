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


def test_float16_on_cpu_reaches_the_model(tiny_model_dir):
    from xmodal.models import load_model

    m = load_model(tiny_model_dir, device="cpu", dtype="float16")
    assert m.dtype is torch.float16 and m.device.type == "cpu"
    v = m.encode_text(["a red circle"])
    assert v.dtype.name == "float32" and abs(float((v ** 2).sum()) - 1) < 1e-2


def test_a_dtype_the_device_cannot_run_is_one_clear_line(monkeypatch, tiny_model_dir):
    import xmodal.runtime as rt
    from xmodal.models import load_model

    monkeypatch.setattr(rt, "_RUNS", {(torch.float16, "cpu"): False})  # as on a CPU build without half kernels
    with pytest.raises(InvalidInputError, match="dtype float16 cannot run on device 'cpu'") as e:
        load_model(tiny_model_dir, device="cpu", dtype="float16")
    assert "\n" not in str(e.value)
    assert resolve_dtype("auto", "cpu") is None


def test_threads_from_argument_environment_or_idle_cpus(monkeypatch):
    from xmodal.runtime import THREADS_ENV, default_num_threads, set_num_threads, usable_cpus

    before = torch.get_num_threads()
    try:
        assert set_num_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv(THREADS_ENV, "2")
        assert set_num_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(InvalidInputError, match=THREADS_ENV):
            set_num_threads()
        with pytest.raises(InvalidInputError, match="--threads"):
            set_num_threads("0")
        monkeypatch.delenv(THREADS_ENV)
        assert 1 <= default_num_threads() <= usable_cpus()
        import xmodal.runtime as rt

        monkeypatch.setattr(rt, "idle_cpus", lambda sample_s=0.1: 0.2)  # another process keeps the CPUs busy
        assert default_num_threads() == 1
        monkeypatch.setattr(rt, "idle_cpus", lambda sample_s=0.1: 64.0)  # never more than the usable CPUs
        assert default_num_threads() == usable_cpus()
    finally:
        torch.set_num_threads(before)
