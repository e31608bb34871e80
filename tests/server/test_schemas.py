"""Issue 17 item 2: every endpoint declares its request/response schemas; errors keep {"error": ...} and 4xx codes."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served["base"], timeout=30) as c:
        yield c


def test_openapi_documents_bodies_and_responses(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"].endswith("/SearchRequest")
    assert body["multipart/form-data"]["schema"]["$ref"].endswith("/SearchForm")
    assert {"text", "k", "depth", "rerank"} <= set(schemas["SearchRequest"]["properties"])
    assert schemas["SearchForm"]["properties"]["image"]["format"] == "binary"
    ok = spec["paths"]["/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SearchResponse")
    assert spec["paths"]["/search"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]\
        .endswith("/ErrorResponse")
    emb = spec["paths"]["/v1/embeddings"]["post"]
    assert emb["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")
    assert set(schemas["EmbeddingRequest"]["properties"]) >= {"input", "model", "encoding_format"}
    for path in ["/indexes/{name}/search", "/embed", "/info", "/health", "/items/{item_id}"]:
        assert path in spec["paths"], path
    # the plain routes take no hidden 'name' query parameter
    assert not spec["paths"]["/search"]["post"].get("parameters")
    assert client.get("/docs").status_code == 200


def test_form_and_json_validated_by_the_same_model(client, served):
    data = (served["images"] / "red.png").read_bytes()
    r = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "0"})
    assert r.status_code == 422 and "k must be between 1 and 100; got 0." == r.json()["error"]
    r = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "3", "depth": "", "text": ""})
    assert r.status_code == 200 and len(r.json()["ids"]) == 3


@pytest.mark.parametrize("body, status, message", [
    ([1, 2], 400, "must be an object"),
    ({"text": 5}, 422, "text must be a string"),
    ({"text": "red", "depth": 10_000}, 422, "depth must be between 1 and 500"),
    ({"text": "red", "k": 2.0}, 422, "k must be an integer"),
])
def test_json_errors_are_one_line_with_status(client, body, status, message):
    r = client.post("/search", json=body)
    assert r.status_code == status and message in r.json()["error"] and set(r.json()) == {"error"}


def test_unknown_index_is_404(client):
    r = client.post("/indexes/nope/search", json={"text": "red"})
    assert r.status_code == 404 and "no index named 'nope'" in r.json()["error"]
