"""``serve``: what ``xmodal serve`` does, as a library call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ALL_INTERFACES = ("0.0.0.0", "::", "")


def parse_named_indexes(index_dir: str | Path, extra: Sequence[str] | None) -> str | Path | dict[str, str]:
    """``INDEX_DIR`` plus ``--index NAME=DIR`` options -> what ``create_app`` takes (one folder or {name: folder})."""
    from ..errors import InvalidInputError
    from ..server.app import DEFAULT_NAME

    if not extra:
        return index_dir
    named: dict[str, str] = {DEFAULT_NAME: str(index_dir)}
    for spec in extra:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise InvalidInputError(f"--index takes NAME=DIR; got '{spec}'.")
        if name in named:
            raise InvalidInputError(f"index name '{name}' is given twice ('{DEFAULT_NAME}' is INDEX_DIR).")
        named[name] = folder
    return named


def serve(index_dir: str | Path | Mapping[str, str | Path], *, model: Any = None, rerank: Any = None,
          host: str = "127.0.0.1", port: int = 8000, max_upload_mb: int = 10,
          allowed_hosts: Sequence[str] | None = None, indexes: Sequence[str] | None = None,
          api_keys: Sequence[str] | None = None, api_key_file: str | Path | None = None,
          cors_origins: Sequence[str] | None = None, max_batch: int = 32, max_wait_ms: float = 2.0,
          access_log: bool = True, echo: Callable[[str], Any] = print) -> None:
    """Serve search over HTTP (``xmodal.server.create_app``) with uvicorn until stopped.

    ``allowed_hosts``: Host header values the server answers to ('*' = any); default the localhost
    names, plus ``host`` when it is a specific address. ``indexes``: more indexes as ``NAME=DIR`` (served under
    ``/indexes/NAME/``; ``index_dir`` is 'default'). ``api_keys``/``api_key_file``: keys required by every
    endpoint but /health, the page and the docs. ``access_log``: one JSON line per request on stderr.
    """
    import uvicorn

    from ..collection import open_collection
    from ..server import create_app
    from ..server.auth import check_keys, read_key_file
    from ..server.limits import LOCAL_HOSTS, server_config
    from ..server.metrics import configure_access_log

    from ..server.app import index_folders

    folders = parse_named_indexes(index_dir, indexes) if not isinstance(index_dir, Mapping) else index_dir
    for folder in index_folders(folders).values():
        open_collection(folder)  # fail now, with a clear message, rather than inside the server
    keys = check_keys(list(api_keys or []) + (read_key_file(api_key_file) if api_key_file else []))
    hosts = list(allowed_hosts or LOCAL_HOSTS) + ([host] if not allowed_hosts and host not in ALL_INTERFACES else [])
    app = create_app(folders, model=model, reranker=rerank, max_upload_bytes=max_upload_mb * 1024 * 1024,
                     allowed_hosts=hosts, api_keys=keys or None, cors_origins=cors_origins, max_batch=max_batch,
                     max_wait_ms=max_wait_ms)
    if access_log:
        configure_access_log()
    shown = f"[{host}]" if ":" in host else host
    if host in ALL_INTERFACES:
        echo(f"xmodal serving on all interfaces, port {port} (http://127.0.0.1:{port}/ from this machine); "
             "other machines can reach it.")
        if not keys:
            echo("warning: serving on all interfaces without an API key: anyone who can reach this machine can "
                 "search and change the index. Add --api-key KEY (or --api-key-file FILE).")
    elif host in LOCAL_HOSTS:
        echo(f"xmodal serving on http://{shown}:{port}/ (this machine only; --host 0.0.0.0 to accept others)")
    else:
        echo(f"xmodal serving on http://{shown}:{port}/")
    echo(f"indexes: {', '.join(f'{n}={p}' for n, p in folders.items()) if isinstance(folders, Mapping) else folders}"
         f"; API key {'required' if keys else 'not required'}; batching up to {max_batch} requests / {max_wait_ms:g} ms")
    uvicorn.Server(server_config(app, host=host, port=port)).run()
