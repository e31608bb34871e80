"""A fingerprint of a model's weights: tells two models with the same id but other weights apart.

A fine-tuned model keeps its base model's id, so an index records this fingerprint next to the id and
refuses a model whose fingerprint differs (issue #19 item 3).

Cost: one vectorised pass over the parameters in torch (per tensor the integer sum of its bits, exact
and independent of thread count), plus SHA-256 over at most ``SAMPLE`` evenly spaced elements per tensor
and over names, shapes, dtypes and the model config. Measured by ``benchmarks/fingerprint_cost.py``
against SHA-256 over every weight byte; any changed element changes the bit sum.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SAMPLE = 4096  # elements hashed exactly per tensor
_SLICE = 1 << 24  # elements widened to float32 at a time
_REMEMBERED = "_xmodal_weights_fingerprint"  # (fingerprint, stamp) set by place_weights


def _int_types() -> dict[int, Any]:
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


_INT_OF_SIZE: dict[int, Any] = {}


def _config_json(model: Any) -> str:
    for obj in (model, getattr(model, "backbone", None), getattr(getattr(model, "backbone", None), "model", None)):
        cfg = getattr(obj, "config", None)
        if cfg is None:
            continue
        to_dict = getattr(cfg, "to_dict", None)
        try:
            data = to_dict() if callable(to_dict) else (cfg if isinstance(cfg, dict) else vars(cfg))
            return json.dumps(_stable(data), sort_keys=True, default=str)
        except TypeError:
            continue
    return ""


def _stable(obj: Any) -> Any:
    """The config without what changes when the same weights move (``_name_or_path``, library versions)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if not str(k).startswith("_") and not str(k).endswith("_version")}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    return obj


def weights_fingerprint(model: Any) -> str | None:
    """``"sha256:<hex>"`` over the model's config and state dict, or None for objects without weights."""
    import torch

    recorded = getattr(model, "recorded_fingerprint", None)  # an export (ONNX) carries its torch source's
    if isinstance(recorded, str):
        return recorded
    remembered = getattr(model, _REMEMBERED, None)
    if remembered is not None and remembered[1] == _stamp(model):
        return remembered[0]
    state_dict = getattr(model, "state_dict", None)
    if not callable(state_dict):
        inner = getattr(model, "model", None)  # wrappers (e.g. a counting encoder in tests)
        return weights_fingerprint(inner) if inner is not None and inner is not model else None
    if not _INT_OF_SIZE:
        _INT_OF_SIZE.update(_int_types())
    h = hashlib.sha256()
    h.update(_config_json(model).encode())
    with torch.no_grad():
        for name, t in sorted(state_dict().items()):
            if not isinstance(t, torch.Tensor):
                continue
            flat = t.detach().reshape(-1)
            # Floating weights are hashed by value in float32 (exact for float16/bfloat16), so the same values
            # held in another precision or on another device give the same fingerprint.
            kind = "float" if flat.is_floating_point() else str(t.dtype)
            h.update(f"{name}|{tuple(t.shape)}|{kind}|".encode())
            if flat.numel() == 0:
                continue
            # Exact and order-independent: the tensor's bits read as integers, summed (integer addition does
            # not depend on thread count or summation order, unlike a float sum). Any single changed element
            # changes it; low-precision tensors are widened in slices, so no full float32 copy is made.
            total = 0
            for start in range(0, flat.numel(), _SLICE):
                part = flat[start:start + _SLICE]
                if part.is_floating_point() and part.dtype != torch.float32 and part.element_size() < 4:
                    part = part.to(torch.float32)
                ints = part.contiguous().view(_INT_OF_SIZE.get(part.element_size(), torch.uint8))
                total += int(ints.sum())
            h.update(f"{total}|".encode())
            step = max(1, flat.numel() // SAMPLE)
            sample = flat[::step][:SAMPLE].to("cpu")
            if sample.is_floating_point() and sample.element_size() < 4:
                sample = sample.to(torch.float32)
            h.update(sample.contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _stamp(model: Any) -> tuple:
    """Which tensors the model holds and how often each was changed in place (torch's version counters)."""
    state_dict = getattr(model, "state_dict", None)
    if not callable(state_dict):
        return ()
    return tuple((name, t.data_ptr(), t._version) for name, t in state_dict().items() if hasattr(t, "_version"))


def place_weights(model: Any, device: Any = None, dtype: Any = None) -> Any:
    """``runtime.place_model`` that keeps the fingerprint of the weights as loaded.

    Casting to a narrower precision (float32 weights loaded as float16 for a GPU) changes the values, so an
    index built in one precision would refuse the same checkpoint loaded in another. The fingerprint is taken
    before such a cast and remembered with a stamp of the placed tensors; training the model afterwards (any
    in-place change) invalidates it, and ``weights_fingerprint`` then hashes the current weights again.
    """
    from ..runtime import place_model, resolve_device, resolve_dtype

    target = resolve_dtype(dtype, resolve_device(device))
    current = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    narrowing = target is not None and current is not None and target != current and target.itemsize < current.itemsize
    fingerprint = weights_fingerprint(model) if narrowing else None
    model = place_model(model, device, dtype)
    if fingerprint is not None:
        setattr(model, _REMEMBERED, (fingerprint, _stamp(model)))
    return model
