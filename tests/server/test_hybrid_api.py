"""HTTP: mode=dense|lexical|hybrid, metadata under each hit, a text collection searched by image (issue #15)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image


@pytest.fixture(scope="module")
def hybrid_server(tmp_path_factory, tiny_model_dir):
    from xmodal.collection import build_collection, build_text_collection
    from xmodal.server import create_app

    root = tmp_path_factory.mktemp("hybrid-served")
    images = root / "images"
    images.mkdir()
    colours = ["red", "green", "blue", "yellow"]
    for c in colours:
        Image.new("RGB", (40, 40), c).save(images / f"{c}.png")
    caps = root / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"path": f"{c}.png", "caption": f"a {c} tile",
                                          "sku": "KX-2291" if c == "green" else f"std-{c}"}) for c in colours))
    build_collection(images, str(tiny_model_dir), root / "idx", show_progress=False, texts=caps)
    texts = root / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"id": f"t-{c}", "text": f"a {c} square", "lang": "en"}) for c in colours))
    build_text_collection(texts, str(tiny_model_dir), root / "tidx", show_progress=False)
    app = create_app({"imgs": root / "idx", "texts": root / "tidx"})
    with TestClient(app, base_url="http://127.0.0.1") as client:  # runs the app's start-up (model loading)
        yield client, images


def test_modes_and_metadata_over_http(hybrid_server):
    client, _ = hybrid_server
    assert client.get("/info").json()["lexical"] is True
    r = client.post("/search", json={"text": "kx-2291", "k": 3, "mode": "lexical"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ids"] == ["green.png"] and body["stage"] == "lexical"
    assert body["results"][0]["url"].endswith("/image")
    r = client.post("/search", json={"text": "KX-2291", "k": 2, "mode": "hybrid", "fusion": "weighted", "alpha": 0.3})
    assert r.status_code == 200 and r.json()["ids"][0] == "green.png" and r.json()["stage"] == "hybrid"
    for payload, status, message in [({"text": "red", "mode": "bm25"}, 422, "mode"),
                                     ({"text": "red", "mode": "hybrid", "alpha": 2}, 422, "alpha"),
                                     ({"text": "red", "fusion": "max"}, 422, "fusion")]:
        r = client.post("/search", json=payload)
        assert r.status_code == status and message in r.json()["error"], (payload, r.text)


def test_text_collection_searched_by_image_over_http(hybrid_server):
    client, images = hybrid_server
    info = client.get("/indexes/texts/info").json()
    assert info["kind"] == "texts" and info["items"] == 4
    data = (images / "blue.png").read_bytes()
    r = client.post("/indexes/texts/search", files={"image": ("q.png", data, "image/png")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert sorted(h["id"] for h in hits) == ["t-blue", "t-green", "t-red", "t-yellow"]
    assert all(h["text"] == h["metadata"]["text"] and h["url"] is None and h["metadata"]["lang"] == "en" for h in hits)
    r = client.post("/indexes/texts/search", files={"image": ("q.png", data, "image/png")},
                    data={"k": "2", "mode": "lexical"})
    assert r.status_code == 400 and "needs a text query" in r.json()["error"]
    item = client.get("/indexes/texts/items/t-red").json()
    assert item["metadata"]["text"] == "a red square" and item["url"] is None
    assert client.get("/indexes/texts/items/nope").status_code == 404
