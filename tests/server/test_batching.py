"""Issue 17 item 1: concurrent requests share model calls, and each caller gets its own answer."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from xmodal.server.batching import ModelWorker

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "gray"]


def png(colour, size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def requests_mix(n: int) -> list[tuple]:
    """n different requests of five kinds: text, image, rerank searches, text and image embeddings."""
    out = []
    for i in range(n):
        c, d = COLOURS[i % 8], COLOURS[(i * 3 + 1) % 8]
        kind = i % 5
        if kind == 0:
            out.append(("search", {"json": {"text": f"a {c} circle next to a {d} square", "k": 1 + i % 5}}))
        elif kind == 1:
            out.append(("search", {"files": {"image": ("q.png", png(c, (30 + i, 40)), "image/png")},
                                   "data": {"k": str(2 + i % 4)}}))
        elif kind == 2:
            out.append(("search", {"json": {"text": f"{d} {c} shape {i}", "k": 3, "depth": 4 + i % 4, "rerank": True}}))
        elif kind == 3:
            out.append(("embed", {"json": {"input": [f"{c} {j}" for j in range(1 + i % 4)]}}))
        else:
            out.append(("embed", {"files": [("image", (f"{j}.png", png(COLOURS[(i + j) % 8]), "image/png"))
                                            for j in range(1 + i % 3)]}))
    return out


def call(client, kind, kwargs):
    r = client.post("/search" if kind == "search" else "/embed", **kwargs)
    assert r.status_code == 200, r.text
    body = r.json()
    if kind == "search":
        return body["stage"], body["ids"], np.array(body["scores"])
    return "embed", None, np.array([d["embedding"] for d in body["data"]])


def same(a, b) -> bool:
    (sa, ia, va), (sb, ib, vb) = a, b
    if sa != sb or va.shape != vb.shape or not np.allclose(va, vb, atol=1e-4):
        return False
    if ia is None:
        return True
    # ids must match except inside a run of (near-)equal scores, where the order is arbitrary
    return all(x == y or abs(va[j] - va[j + 1 if j + 1 < len(va) else j - 1]) < 1e-4 for j, (x, y) in enumerate(zip(ia, ib)))


@pytest.fixture(scope="module")
def batched(served, serve_app):
    from xmodal.server import create_app

    app = create_app(served["root"] / "idx", reranker=str(served["root"] / "joint"), max_batch=16, max_wait_ms=50)
    with serve_app(app) as base:
        yield base, app


def test_64_concurrent_mixed_requests_no_mixups(batched):
    base, app = batched
    reqs = requests_mix(64)
    with httpx.Client(base_url=base, timeout=120) as client:
        alone = [call(client, *r) for r in reqs]  # one at a time: nothing to merge with
        before = _merged(client)
        with ThreadPoolExecutor(64) as pool:
            together = list(pool.map(lambda r: call(client, *r), reqs))
        after = _merged(client)
    bad = [i for i, (a, b) in enumerate(zip(alone, together)) if not same(a, b)]
    assert not bad, f"requests {bad} got another answer when sent concurrently"
    # and they really were merged: more requests than model calls since the sequential pass
    assert after[0] - before[0] > after[1] - before[1] > 0, (before, after)


def _merged(client) -> tuple[float, float]:
    """(requests, model calls) so far, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    jobs = calls = 0.0
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        if fam.name == "xmodal_batch_requests":
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    jobs += s.value
                elif s.name.endswith("_count"):
                    calls += s.value
    return jobs, calls


def test_worker_merges_and_splits():
    seen = []
    worker = ModelWorker(max_batch=8, max_wait_ms=100)

    def double(items):
        seen.append(len(items))
        return np.array(items) * 2

    try:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: worker.submit("double", double, [i, 10 * i]), range(8)))
        assert [o.tolist() for o in outs] == [[2 * i, 20 * i] for i in range(8)]
        assert sum(seen) == 16 and len(seen) < 8
    finally:
        worker.close()


def test_one_bad_input_fails_only_its_caller():
    worker = ModelWorker(max_batch=8, max_wait_ms=100)
    calls = []

    def model(items):
        calls.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return [x + 1 for x in items]

    def one(x):
        try:
            return worker.submit("m", model, [x])
        except ValueError as e:
            return str(e)

    try:
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(one, [1, 2, -3, 4, 5, 6]))
        assert outs == [[2], [3], "negative input", [5], [6], [7]]
    finally:
        worker.close()


def test_kinds_are_not_mixed_and_nothing_waits_forever():
    worker = ModelWorker(max_batch=4, max_wait_ms=20)
    log = []
    lock = threading.Lock()

    def tagged(tag):
        def run(items):
            with lock:
                log.append((tag, tuple(items)))
            return [f"{tag}:{x}" for x in items]
        return run

    try:
        with ThreadPoolExecutor(10) as pool:
            futs = [pool.submit(worker.submit, "a" if i % 2 else "b", tagged("a" if i % 2 else "b"), [i])
                    for i in range(10)]
            outs = [f.result(timeout=10) for f in futs]
        assert outs == [[f"{'a' if i % 2 else 'b'}:{i}"] for i in range(10)]
        assert all(all((x % 2 == 1) == (tag == "a") for x in items) and len(items) <= 4 for tag, items in log)
        t0 = time.time()
        assert worker.submit("c", tagged("c"), [1]) == ["c:1"] and time.time() - t0 < 5
    finally:
        worker.close()


def test_batching_off_is_one_request_per_call():
    worker = ModelWorker(max_batch=1, max_wait_ms=50)
    sizes = []
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: worker.submit("m", lambda xs: sizes.append(len(xs)) or xs, [i]), range(8)))
        assert sizes == [1] * 8
    finally:
        worker.close()
