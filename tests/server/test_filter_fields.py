"""HTTP: where / offset / min_score / dedup request fields and metadata under each result (issue 15)."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served["base"], timeout=60) as c:
        yield c


def test_where_offset_min_score_and_metadata(client):
    r = client.post("/search", json={"text": "a circle", "k": 8, "where": "width = 48 and exists(mtime)"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 8 and all(h["metadata"]["width"] == 48 for h in body["results"])
    assert client.post("/search", json={"text": "a circle", "k": 8, "where": "width > 48"}).json()["ids"] == []
    only_red = client.post("/search", json={"text": "a circle", "k": 8, "where": 'path = "red.png"'}).json()
    assert only_red["ids"] == ["red.png"]
    page2 = client.post("/search", json={"text": "a circle", "k": 3, "offset": 3}).json()
    assert page2["ids"] == body["ids"][3:6]
    cut = body["scores"][1]
    strong = client.post("/search", json={"text": "a circle", "k": 8, "min_score": cut}).json()
    assert strong["ids"] == [i for i, s in zip(body["ids"], body["scores"]) if s >= cut]
    deduped = client.post("/search", json={"text": "a circle", "k": 8, "dedup": 0.999999}).json()
    assert 1 <= len(deduped["ids"]) <= 8
    form = client.post("/search", files={"text": (None, "a circle"), "k": (None, "2"),
                                         "where": (None, 'path in ["blue.png", "red.png"]')})
    assert form.status_code == 200 and sorted(form.json()["ids"]) == ["blue.png", "red.png"]


@pytest.mark.parametrize("field, value, needle", [
    ("where", 'path = red.png', "column 8"),
    ("where", "__import__('os')", "bad filter"),
    ("where", 5, "filter expression"),
    ("offset", -1, "offset"),
    ("offset", 1.5, "offset"),
    ("min_score", "high", "min_score"),
    ("dedup", 2, "dedup"),
])
def test_bad_fields_are_422_with_one_clear_line(client, field, value, needle):
    r = client.post("/search", json={"text": "a circle", field: value})
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"] and "\n" not in r.json()["error"]
