"""``xmodal <verb>``: a thin command line; every verb calls library functions.

Each verb group lives in its own module under ``xmodal.cli`` and registers itself on ``app`` via
``register(app)``; add a module name to ``COMMAND_MODULES`` to add verbs.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ..errors import XmodalError

app = typer.Typer(
    name="xmodal",
    help="Cross-modal retrieval: index images, search by text or image, evaluate, train, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES: tuple[str, ...] = (
    "search_cmds",  # index, search
    "texts_cmds",  # index-texts
    "eval_cmds",  # evaluate
    "demo_cmds",  # demo
    "train_cmds",  # train, synth
    "serve_cmds",  # serve
    "scale_cmds",  # encode, index-embeddings
    "feature_cmds",  # features split/info
    "export_cmds",  # export
    "verify_cmds",  # verify
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)

# Verbs that run a model take --device/--dtype/--threads, defined once in cli/options.py.
MODEL_COMMANDS = frozenset({"index", "index-texts", "search", "evaluate", "train", "serve", "encode", "demo"})


def _add_runtime_options() -> None:
    from .options import with_runtime_options

    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        if name in MODEL_COMMANDS and info.callback is not None:
            info.callback = with_runtime_options(info.callback)


_add_runtime_options()


def _quiet_libraries() -> None:
    """Hide transformers' per-load progress bars and info logs (the CLI prints its own progress).

    Logs: an environment variable read when transformers is first imported (importing it here would cost
    seconds on every ``--help``); progress bars: switched off by the model verbs' runtime options
    (``pipelines.hardware``), just before they load a model. A process that already imported transformers
    (tests, notebooks) is told directly.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: xmodal errors become one clear line on stderr and exit code 2."""
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except XmodalError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
