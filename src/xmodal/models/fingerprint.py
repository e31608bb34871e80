"""A fingerprint of a model's weights: tells two models with the same id but other weights apart.

A fine-tuned model keeps its base model's id, so an index records this fingerprint next to the id and
refuses a model whose fingerprint differs (issue #19 item 3).

Cost: one pass over the parameters in torch (per tensor a float64 sum and sum of squares, vectorised),
plus SHA-256 over at most ``SAMPLE`` evenly spaced elements per tensor and over names, shapes, dtypes
and the model config. For a 150M-parameter CLIP that is about 0.1-0.3 s on a CPU, independent of disk
speed; any training step changes the sums (and almost surely the samples), so fine-tuned weights differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SAMPLE = 4096  # elements hashed exactly per tensor


def _config_json(model: Any) -> str:
    for obj in (model, getattr(model, "backbone", None), getattr(getattr(model, "backbone", None), "model", None)):
        cfg = getattr(obj, "config", None)
        if cfg is None:
            continue
        to_dict = getattr(cfg, "to_dict", None)
        try:
            data = to_dict() if callable(to_dict) else (cfg if isinstance(cfg, dict) else vars(cfg))
            return json.dumps(data, sort_keys=True, default=str)
        except TypeError:
            continue
    return ""


def weights_fingerprint(model: Any) -> str | None:
    """``"sha256:<hex>"`` over the model's config and state dict, or None for objects without weights."""
    import torch

    state_dict = getattr(model, "state_dict", None)
    if not callable(state_dict):
        inner = getattr(model, "model", None)  # wrappers (e.g. a counting encoder in tests)
        return weights_fingerprint(inner) if inner is not None and inner is not model else None
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
            f64 = flat.real.double() if flat.is_complex() else flat.double()
            h.update(f"{f64.sum().item():.17g}|{(f64 * f64).sum().item():.17g}|".encode())
            step = max(1, flat.numel() // SAMPLE)
            sample = flat[::step][:SAMPLE].to("cpu")
            if sample.dtype == torch.bfloat16:
                sample = sample.to(torch.float32)
            h.update(sample.contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()
