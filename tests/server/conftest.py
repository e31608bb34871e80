"""A real uvicorn server on 127.0.0.1 (free port) over a tiny indexed folder, shared by the server tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from PIL import Image, ImageDraw


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(tmp_path_factory, tiny_model_dir):
    from xmodal.collection import build_collection
    from xmodal.models.tiny_cross import build_tiny_joint
    from xmodal.server import create_app

    root = tmp_path_factory.mktemp("served")
    images = root / "images"
    images.mkdir()
    for i, c in enumerate(["red", "green", "blue", "yellow", "purple", "orange", "white", "gray"]):
        img = Image.new("RGB", (48, 48), (20, 20, 20))
        ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=c)
        img.save(images / f"{c}.png")
    (images / "secret.txt").write_text("not an image")
    build_collection(images, str(tiny_model_dir), root / "idx", show_progress=False)
    build_tiny_joint(root / "joint")
    app = create_app(root / "idx", reranker=str(root / "joint"), max_upload_bytes=200_000)
    with running(app) as base:
        yield {"base": base, "root": root, "images": images}


@contextmanager
def running(app, header_timeout: float = 2.0):
    """Serve ``app`` with uvicorn on a free loopback port (xmodal's config: header timeout) while inside."""
    import uvicorn

    from xmodal.server.limits import server_config

    port = _free_port()
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, header_timeout=header_timeout))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).json()["status"] == "ok":
                break
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
    else:
        raise RuntimeError("server did not start")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve_app():
    """``with serve_app(app) as base_url:`` runs another app for the duration of a test module."""
    return running
