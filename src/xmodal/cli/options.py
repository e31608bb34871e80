"""``--device``, ``--dtype`` and ``--threads``: one definition for every verb that runs a model.

``with_runtime_options(command)`` adds the three options to a command's signature and runs the command
inside ``xmodal.runtime.defaults(...)``, so every model the command loads (encoders, rerankers, the
server's model, the trainer's) lands on that device in that precision, and torch uses that many threads.
Nothing heavy is imported until the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import typer

DEVICE_HELP = "Where models run: auto (CUDA when available), cpu, cuda, cuda:N or mps."
DTYPE_HELP = "Model precision: auto (the weights' own), float32, float16 or bfloat16."
THREADS_HELP = ("CPU threads for torch (default: the CPUs idle at start, so a busy machine is not oversubscribed; "
                "also XMODAL_NUM_THREADS).")

_PARAMS = (
    inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option("auto", "--device", help=DEVICE_HELP, rich_help_panel="Hardware")),
    inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option("auto", "--dtype", help=DTYPE_HELP, rich_help_panel="Hardware")),
    inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int],
                      default=typer.Option(None, "--threads", help=THREADS_HELP, rich_help_panel="Hardware")),
)


def with_runtime_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command, taking ``--device/--dtype/--threads`` as well (it must not define them itself)."""
    sig = inspect.signature(command)
    clash = {p.name for p in _PARAMS} & set(sig.parameters)
    if clash:
        raise TypeError(f"{command.__name__} already defines {sorted(clash)}")

    @functools.wraps(command)
    def wrapper(*args: Any, device: str = "auto", dtype: str = "auto", threads: Optional[int] = None,
                **kwargs: Any) -> Any:
        from ..pipelines.hardware import runtime_defaults

        with runtime_defaults(device=device, dtype=dtype, threads=threads):
            return command(*args, **kwargs)

    params = list(sig.parameters.values())
    wrapper.__signature__ = sig.replace(parameters=[*params, *_PARAMS])  # type: ignore[attr-defined]
    return wrapper
