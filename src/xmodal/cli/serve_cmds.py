"""``xmodal serve``: parse arguments, call ``pipelines.serve`` (the HTTP API and web page with uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def serve(
    index_dir: Path = typer.Argument(..., help="Index folder made by `xmodal index`."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder/joint model for rerank=true."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model recorded in the index."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    max_upload_mb: int = typer.Option(10),
    allowed_host: Optional[List[str]] = typer.Option(
        None, "--allowed-host",
        help="Host header value the server answers to (repeatable; '*' = any). Default: localhost names, plus --host "
             "when it is a specific address."),
) -> None:
    """Serve search over HTTP (POST /search, /embed, GET /items/...) and a web page at /."""
    from ..pipelines import serve as run_serve

    run_serve(index_dir, model=model, rerank=rerank, host=host, port=port, max_upload_mb=max_upload_mb,
              allowed_hosts=allowed_host, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
