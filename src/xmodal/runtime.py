"""Where and in which precision models run: one place that turns user specs into torch devices/dtypes.

The lowest layer of xmodal next to ``errors``: every loader (``from_pretrained``, ``load_model``) and
later the CLI's ``--device``/``--dtype`` options resolve their arguments here, so a bad value gives the
same one-line ``InvalidInputError`` everywhere.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidInputError

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}
_DEVICE = re.compile(r"^(cpu|mps|cuda)(:(\d+))?$")


def resolve_dtype(spec: Any, device: Any = None) -> Any:
    """``None`` (keep the weights' dtype), a ``torch.dtype`` or a name (``fp16``, ``bfloat16``, ...) -> ``torch.dtype | None``.

    ``device`` is accepted so device-dependent defaults can be added without changing callers.
    """
    import torch

    if spec is None or isinstance(spec, torch.dtype):
        return spec
    name = _DTYPES.get(str(spec).lower())
    if name is None:
        raise InvalidInputError(f"unknown dtype '{spec}'; use one of {sorted(_DTYPES)}.")
    return getattr(torch, name)


def resolve_device(spec: Any = None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; checks ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    An unknown or unavailable device raises ``InvalidInputError`` (one line) instead of failing later
    inside torch with a long traceback.
    """
    import torch

    if spec is None or str(spec).lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(spec).strip().lower()
    m = _DEVICE.match(text)
    if m is None:
        raise InvalidInputError(f"unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps.")
    kind, index = m.group(1), m.group(3)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device '{spec}' asked for, but no CUDA GPU is available here; use --device cpu.")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise InvalidInputError(f"device '{spec}' does not exist: this machine has {torch.cuda.device_count()} "
                                    "CUDA GPU(s), numbered from 0.")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidInputError(f"device '{spec}' asked for, but Apple MPS is not available here; use --device cpu.")
    if kind == "cpu" and index is not None:
        raise InvalidInputError(f"device '{spec}': the CPU takes no index; use 'cpu'.")
    return text


def place_model(model: Any, device: Any = None, dtype: Any = None) -> Any:
    """What every ``from_pretrained`` ends with: eval mode, on the resolved device, in the resolved dtype."""
    model.eval()
    return model.to(device=resolve_device(device), dtype=resolve_dtype(dtype, device))
