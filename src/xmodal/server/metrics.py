"""Observability: Prometheus metrics at ``/metrics`` (``prometheus_client``) and structured access logs.

Each app has its own ``CollectorRegistry`` (several apps in one process -- tests, several servers -- do not
clash). Metrics:

- ``xmodal_requests_total{method,route,status}`` and ``xmodal_request_duration_seconds{method,route}``
  (histogram), ``route`` being the route template (``/items/{item_id}``), never the raw path;
- ``xmodal_requests_in_flight``;
- ``xmodal_batch_requests{index,kind}`` (histogram): requests merged into one model call, and
  ``xmodal_batch_items{index,kind}``: inputs per call (texts, images, rerank pairs);
- ``xmodal_queue_depth{index}``: requests waiting for the model; ``xmodal_index_items{index}``: index size.

Access logs: one JSON object per request on the ``xmodal.access`` logger (method, path, route, status,
duration, client, request id); ``configure_access_log`` prints them to stderr (``xmodal serve`` does).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import Any, Callable

from starlette.routing import Match

ACCESS_LOGGER = "xmodal.access"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The app's metrics in its own registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("xmodal_requests", "HTTP requests answered", ["method", "route", "status"], registry=r)
        self.latency = Histogram("xmodal_request_duration_seconds", "Time to answer a request", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("xmodal_requests_in_flight", "Requests being answered", registry=r)
        self.batch_requests = Histogram("xmodal_batch_requests", "Requests merged into one model call",
                                        ["index", "kind"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_items = Histogram("xmodal_batch_items", "Inputs (texts, images, pairs) in one model call",
                                     ["index", "kind"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("xmodal_queue_depth", "Requests waiting for the model", ["index"], registry=r)
        self.index_items = Gauge("xmodal_index_items", "Items in the index", ["index"], registry=r)

    def on_batch(self, index: str) -> Callable[[str, int, int], None]:
        def record(kind: str, jobs: int, items: int) -> None:
            self.batch_requests.labels(index, kind).observe(jobs)
            self.batch_items.labels(index, kind).observe(items)

        return record

    def watch(self, index: str, queue_depth: Callable[[], float], size: Callable[[], float]) -> None:
        self.queue_depth.labels(index).set_function(queue_depth)
        self.index_items.labels(index).set_function(size)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_of(app: Any, scope: dict[str, Any]) -> str:
    """The route template of a request (also for requests refused before routing, e.g. a 401)."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    for r in getattr(getattr(app, "router", None), "routes", ()):
        try:
            match, _ = r.matches({**scope, "type": "http"})
        except Exception:
            continue
        if match == Match.FULL:
            return getattr(r, "path", "other")
    return "other"


def _template(path: str) -> str:
    return path.replace(":anypath}", "}")  # /items/{item_id:anypath} -> /items/{item_id}


class ObservabilityMiddleware:
    """Outermost ASGI middleware: counts, times and logs every HTTP request (whoever answered it)."""

    def __init__(self, app: Any, metrics: Metrics, fastapi_app: Any) -> None:
        self.app, self.metrics, self.fastapi_app = app, metrics, fastapi_app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()
        request_id = uuid.uuid4().hex[:16]

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            dt = time.perf_counter() - t0
            self.metrics.in_flight.dec()
            route = _template(_route_of(self.fastapi_app, scope))
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(dt)
            if self.log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                self.log.info(json.dumps({
                    "ts": round(time.time(), 3), "request_id": request_id, "method": method,
                    "path": scope.get("path", ""), "route": route, "status": status, "ms": round(1000 * dt, 2),
                    "client": f"{client[0]}:{client[1]}"}, ensure_ascii=True))


def configure_access_log(stream: Any = None) -> logging.Logger:
    """Print access-log lines (one JSON object each) to ``stream`` (stderr)."""
    log = logging.getLogger(ACCESS_LOGGER)
    if not any(getattr(h, "_xmodal", False) for h in log.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._xmodal = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
