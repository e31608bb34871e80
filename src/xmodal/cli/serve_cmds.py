"""``xmodal serve``: parse arguments, call ``pipelines.serve`` (the HTTP API and web page with uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def serve(
    index_dir: Path = typer.Argument(..., help="Index folder made by `xmodal index` (served as 'default')."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder/joint model for rerank=true."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model recorded in the index."),
    host: str = typer.Option("127.0.0.1", help="Address to bind: 127.0.0.1 (default) is this machine only; "
                                               "0.0.0.0 accepts other machines (use --api-key then)."),
    port: int = typer.Option(8000),
    max_upload_mb: int = typer.Option(10),
    allowed_host: Optional[List[str]] = typer.Option(
        None, "--allowed-host",
        help="Host header value the server answers to (repeatable; '*' = any). Default: localhost names, plus --host "
             "when it is a specific address."),
    index: Optional[List[str]] = typer.Option(
        None, "--index", help="Serve another index too, as NAME=DIR, under /indexes/NAME/ (repeatable)."),
    api_key: Optional[List[str]] = typer.Option(
        None, "--api-key", help="Require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every endpoint "
                                "but /health, the page and the docs (repeatable)."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File of keys, one per line."),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="Web origin allowed to call the API from its pages, e.g. https://app.example "
                                    "(repeatable; '*' = any)."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most concurrent requests merged into one model "
                                                                 "call (1 = no batching)."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0, help="How long a request may wait for "
                                                                           "others to join its batch."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One JSON line per request on stderr."),
) -> None:
    """Serve search over HTTP (POST /search, /v1/embeddings, /items, GET /metrics ...) and a web page at /."""
    from ..pipelines import serve as run_serve

    run_serve(index_dir, model=model, rerank=rerank, host=host, port=port, max_upload_mb=max_upload_mb,
              allowed_hosts=allowed_host, indexes=index, api_keys=api_key, api_key_file=api_key_file,
              cors_origins=cors_origin, max_batch=max_batch, max_wait_ms=max_wait_ms, access_log=access_log,
              echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
