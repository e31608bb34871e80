"""``demo``: the offline end-to-end demo (``xmodal demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def demo(out: str | Path = "xmodal-demo", *, steps: int = 1000, seed: int = 0, echo: Callable[[str], Any] = print,
         **options: Any) -> dict[str, Any]:
    """Train a tiny model on generated scenes, index them and search by text, all offline (``xmodal.demo.run_demo``)."""
    from ..demo import run_demo

    return run_demo(out, steps=steps, seed=seed, echo=echo, **options)
