"""HTTP API + web page. ``create_app(index_dir)``; ``xmodal serve`` runs it with uvicorn."""

from .app import create_app

__all__ = ["create_app"]
