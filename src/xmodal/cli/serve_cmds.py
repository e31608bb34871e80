"""``xmodal serve``: the HTTP API and web page with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    index_dir: Path = typer.Argument(..., help="Index folder made by `xmodal index`."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder/joint model for rerank=true."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model recorded in the index."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    max_upload_mb: int = typer.Option(10),
) -> None:
    """Serve search over HTTP (POST /search, /embed, GET /items/...) and a web page at /."""
    import uvicorn

    from ..collection import open_collection
    from ..server import create_app

    open_collection(index_dir)  # fail now, with a clear message, rather than inside the server
    app = create_app(index_dir, model=model, reranker=rerank, max_upload_bytes=max_upload_mb * 1024 * 1024)
    typer.echo(f"xmodal serving {index_dir} on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
