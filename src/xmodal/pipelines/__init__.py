"""One library function per command: ``xmodal <verb>`` parses arguments and calls exactly one of these.

The Python API can do everything the command line does by calling the same functions
(``xmodal.index_folder(...)``, ``xmodal.search(...)``, ...). Each lives in its own module and is
imported on first use, so ``import xmodal.pipelines`` (and ``xmodal --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

# function name -> module under xmodal.pipelines that defines it (a new command: one module + one line here)
PIPELINES: dict[str, str] = {
    "index_folder": "index",
    "index_from_embeddings": "index",
}

__all__ = sorted(PIPELINES)


def __getattr__(name: str) -> Any:
    if name in PIPELINES:
        return getattr(importlib.import_module(f"{__name__}.{PIPELINES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
