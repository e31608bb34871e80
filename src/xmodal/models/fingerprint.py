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
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if flat.numel() == 0:
                continue
            # Exact and order-independent: the tensor's bits read as integers, summed (integer addition does
            # not depend on thread count or summation order, unlike a float sum). Any single changed element
            # changes it; no float copy of the tensor is made.
            ints = flat.contiguous().view(_INT_OF_SIZE.get(flat.element_size(), torch.uint8))
            h.update(f"{int(ints.sum())}|".encode())
            step = max(1, flat.numel() // SAMPLE)
            sample = flat[::step][:SAMPLE].to("cpu")
            if sample.dtype == torch.bfloat16:
                sample = sample.to(torch.float32)
            h.update(sample.contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()
