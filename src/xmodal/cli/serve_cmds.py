"""``xmodal serve``: the HTTP API and web page with uvicorn."""

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
    import uvicorn

    from ..collection import open_collection
    from ..server import create_app
    from ..server.limits import LOCAL_HOSTS, server_config

    open_collection(index_dir)  # fail now, with a clear message, rather than inside the server
    hosts = list(allowed_host or LOCAL_HOSTS) + ([host] if not allowed_host and host not in ("0.0.0.0", "::") else [])
    app = create_app(index_dir, model=model, reranker=rerank, max_upload_bytes=max_upload_mb * 1024 * 1024,
                     allowed_hosts=hosts)
    typer.echo(f"xmodal serving {index_dir} on http://{host}:{port}/")
    uvicorn.Server(server_config(app, host=host, port=port)).run()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
