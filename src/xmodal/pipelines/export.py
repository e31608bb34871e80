"""``export``: what ``xmodal export`` does, as a library call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

FORMATS = ("onnx",)


def export(model: Any, out: str | Path, *, format: str = "onnx", check: bool = True) -> dict[str, Any]:
    """Export ``model`` (name/folder or a loaded dual encoder) to ``out`` in ``format`` (``onnx``: text and image
    towers, see ``xmodal.models.onnx_encoder``). Returns the folder, files and, with ``check``, the largest
    |difference| from torch on sample inputs."""
    if format not in FORMATS:
        raise InvalidInputError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}.")
    from ..models.onnx_encoder import export_onnx

    return export_onnx(model, out, check=check)
