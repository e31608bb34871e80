"""``serve``: what ``xmodal serve`` does, as a library call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence


def serve(index_dir: str | Path, *, model: Any = None, rerank: Any = None, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: int = 10, allowed_hosts: Sequence[str] | None = None,
          echo: Callable[[str], Any] = print) -> None:
    """Serve search over HTTP (``xmodal.server.create_app``) with uvicorn until stopped.

    ``allowed_hosts``: Host header values the server answers to ('*' = any); default the localhost
    names, plus ``host`` when it is a specific address.
    """
    import uvicorn

    from ..collection import open_collection
    from ..server import create_app
    from ..server.limits import LOCAL_HOSTS, server_config

    open_collection(index_dir)  # fail now, with a clear message, rather than inside the server
    hosts = list(allowed_hosts or LOCAL_HOSTS) + ([host] if not allowed_hosts and host not in ("0.0.0.0", "::") else [])
    app = create_app(index_dir, model=model, reranker=rerank, max_upload_bytes=max_upload_mb * 1024 * 1024,
                     allowed_hosts=hosts)
    echo(f"xmodal serving {index_dir} on http://{host}:{port}/")
    uvicorn.Server(server_config(app, host=host, port=port)).run()
