"""Hardware choices of one command: device, precision and CPU threads (see ``xmodal.runtime.defaults``)."""

from __future__ import annotations

from typing import Any


def runtime_defaults(device: Any = None, dtype: Any = None, threads: Any = None) -> Any:
    """A context in which models load on ``device`` in ``dtype`` and torch uses ``threads`` threads."""
    from ..runtime import defaults

    try:  # the command prints its own progress; transformers' per-load bars would only add noise
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    return defaults(device=device, dtype=dtype, threads=threads)
