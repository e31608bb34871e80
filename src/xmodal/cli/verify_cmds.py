"""``xmodal verify``: full checksum check of a saved index (opening checks only sizes and times)."""

from __future__ import annotations

from pathlib import Path

import typer


def verify(folder: Path = typer.Argument(..., help="An index folder (made by `xmodal index`).")) -> None:
    """Hash every file of an index against its manifest (exit 2 with the damaged file's name)."""
    from ..pipelines import verify_index

    typer.echo(verify_index(folder).summary())


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
