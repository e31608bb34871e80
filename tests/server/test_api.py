"""The HTTP API through a real server: success paths and every bad input."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served["base"], timeout=30) as c:
        yield c


def png(colour="red", size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_health_info_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["items"] == 8 and info["engine"] == "faiss" and info["rerank"] is True and info["model"] == "tiny-clip"
    assert info["search"] == {"kind": "flat", "search_params": {}}  # exact: nothing to tune
    page = client.get("/")
    assert page.status_code == 200 and "search-form" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_text_search_json(client):
    r = client.post("/search", json={"text": "a red circle", "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["stage"] == "retrieve" and len(body["results"]) == 3
    assert body["results"][0]["url"].startswith("/items/") and {"encode", "retrieve", "total"} <= set(body["timings"])
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_image_upload_finds_itself(client, served):
    data = (served["images"] / "blue.png").read_bytes()
    r = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    assert r.json()["ids"][0] == "blue.png"
    both = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"text": "blue", "k": "2"})
    assert both.status_code == 200 and len(both.json()["ids"]) == 2


def test_rerank_and_depth(client):
    r = client.post("/search", json={"text": "a red circle", "k": 2, "depth": 5, "rerank": True})
    assert r.status_code == 200 and r.json()["stage"] == "rerank" and "rerank" in r.json()["timings"]


def test_items_and_images(client):
    meta = client.get("/items/red.png").json()
    assert meta["metadata"]["path"] == "red.png"
    full = client.get("/items/red.png/image")
    assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).size == (48, 48)
    thumb = client.get("/items/red.png/image", params={"thumb": 16})
    assert thumb.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(thumb.content)).size) == 16


def test_embed_openai_shape(client):
    r = client.post("/embed", json={"input": ["a dog", "a cat"]}).json()
    assert r["object"] == "list" and len(r["data"]) == 2 and len(r["data"][0]["embedding"]) == 32
    v = np.array(r["data"][0]["embedding"])
    assert abs(np.linalg.norm(v) - 1) < 1e-4
    r = client.post("/embed", files=[("image", ("a.png", png(), "image/png")), ("image", ("b.png", png("blue"), "image/png"))])
    assert r.status_code == 200 and len(r.json()["data"]) == 2


@pytest.mark.parametrize("kwargs, status, message", [
    ({"json": {"text": "   "}}, 422, "empty"),
    ({"json": {}}, 422, "give a text query"),
    ({"json": {"text": "x" * 5000}}, 413, "longer"),
    ({"json": {"text": "dog", "k": 0}}, 422, "k must be between"),
    ({"json": {"text": "dog", "k": 10_000}}, 422, "k must be between"),
    ({"json": {"text": "dog", "k": "ten"}}, 422, "integer"),
    ({"json": {"text": "dog", "depth": -1}}, 422, "depth"),
    ({"content": b"not json", "headers": {"content-type": "application/json"}}, 400, "send JSON"),
    ({"files": {"image": ("x.txt", b"hello", "text/plain")}}, 415, "unsupported image type"),
    ({"files": {"image": ("x.png", b"\x89PNG broken", "image/png")}}, 400, "not a readable image"),
    ({"files": {"image": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}}, 413, "larger than"),
])
def test_bad_search_requests(client, kwargs, status, message):
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/health").status_code == 200  # nothing crashed


def test_no_path_traversal(client, served):
    for path in ["/items/..%2F..%2Fetc%2Fpasswd/image", "/items/../../etc/passwd/image", "/items/secret.txt/image",
                 "/items/%2Fetc%2Fpasswd", "/items/nope.png"]:
        r = client.get(path)
        assert r.status_code in (403, 404), path
        assert "root:" not in r.text
    assert client.get("/items/red.png/image", params={"thumb": 100_000}).status_code == 422


def test_concurrent_requests_are_all_answered(client):
    def one(i):
        return client.post("/search", json={"text": ["red", "blue", "a green circle"][i % 3], "k": 3}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes == [200] * 40
