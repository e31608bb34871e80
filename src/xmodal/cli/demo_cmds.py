"""``xmodal demo``: the offline end-to-end demo."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("xmodal-demo"), "--out", "-o", help="Folder for the demo's data, model and index."),
    steps: int = typer.Option(1000, help="Training steps for the tiny model."),
    seed: int = typer.Option(0),
) -> None:
    """Train a tiny model on generated scenes, index them with FAISS and search by text (all offline)."""
    from ..pipelines import demo as run_demo

    run_demo(out, steps=steps, seed=seed, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
