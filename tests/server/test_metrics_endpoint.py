"""Issue 17 item 6: /metrics in Prometheus text format; one JSON access-log line per request."""

from __future__ import annotations

import io
import json
import logging

import httpx
from prometheus_client.parser import text_string_to_metric_families


def families(base: str, **kw) -> dict:
    r = httpx.get(base + "/metrics", **kw)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams, name, sample, **labels) -> float:
    return sum(s.value for s in fams[name].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_count(served):
    base = served["base"]
    before = families(base)
    assert httpx.post(base + "/search", json={"text": "a red circle", "k": 2}).status_code == 200
    assert httpx.post(base + "/search", json={"text": "", "k": 2}).status_code == 422
    assert httpx.get(base + "/items/red.png").status_code == 200
    fams = families(base)
    for name in ["xmodal_requests", "xmodal_request_duration_seconds", "xmodal_batch_requests", "xmodal_batch_items",
                 "xmodal_queue_depth", "xmodal_index_items", "xmodal_requests_in_flight"]:
        assert name in fams, name

    def grew(**labels):
        return (value(fams, "xmodal_requests", "xmodal_requests_total", **labels)
                - value(before, "xmodal_requests", "xmodal_requests_total", **labels))

    assert grew(route="/search", status="200", method="POST") == 1
    assert grew(route="/search", status="422", method="POST") == 1
    assert grew(route="/items/{item_id}", status="200") == 1  # the template, not the id
    assert value(fams, "xmodal_request_duration_seconds", "xmodal_request_duration_seconds_count", route="/search") >= 2
    assert value(fams, "xmodal_index_items", "xmodal_index_items", index="default") == 8
    assert value(fams, "xmodal_queue_depth", "xmodal_queue_depth", index="default") == 0
    assert value(fams, "xmodal_batch_requests", "xmodal_batch_requests_count", kind="encode_text") >= 1


def test_metrics_need_the_key_when_one_is_set(served, serve_app):
    from xmodal.server import create_app

    with serve_app(create_app(served["root"] / "idx", api_keys=["metrics-key-123"])) as base:
        assert httpx.get(base + "/metrics").status_code == 401
        fams = families(base, headers={"authorization": "Bearer metrics-key-123"})
        # the refused request is counted too, under its route
        assert value(fams, "xmodal_requests", "xmodal_requests_total", route="/metrics", status="401") == 1


def test_access_log_is_one_json_line_per_request(served):
    from xmodal.server.metrics import ACCESS_LOGGER, configure_access_log

    stream = io.StringIO()
    log = configure_access_log(stream)
    try:
        r = httpx.post(served["base"] + "/search", json={"text": "a blue circle", "k": 1})
        httpx.get(served["base"] + "/items/nope.png")
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    search = next(x for x in lines if x["path"] == "/search")
    assert search["status"] == 200 and search["method"] == "POST" and search["ms"] > 0
    assert search["request_id"] == r.headers["x-request-id"]
    miss = next(x for x in lines if x["path"] == "/items/nope.png")
    assert miss["status"] == 404 and miss["route"] == "/items/{item_id}"
