"""Per-request limits and request hygiene for the HTTP server, in one place.

``ServerLimits`` holds every bound; ``RequestGuard`` (pure ASGI middleware) enforces, before any
endpoint runs:

- the ``Host`` header is one of the allowed hosts (DNS-rebinding: a web page on evil.example that
  resolves to 127.0.0.1 must not reach a local server), default: localhost names only;
- a POST is ``application/json`` or ``multipart/form-data`` (a cross-site ``text/plain`` form post needs
  no CORS preflight), and a browser's cross-site POST (``Sec-Fetch-Site``/``Origin``) is refused;
- the body size: ``Content-Length`` above the limit is refused with 413 before reading, and a body
  without one is counted while it is read (``BodyTooLarge`` when it passes the limit), so a 300 MB JSON
  body is never held in memory and a big upload is not spooled to disk first.

``header_timeout_protocol`` gives uvicorn a connection class that closes connections which have not
sent complete request headers within ``header_timeout`` seconds (slowloris); ``server_config`` builds
the uvicorn config with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServerLimits:
    """Bounds on what one request may cost.

    Attributes:
        max_json_bytes: body of a JSON request.
        max_upload_bytes: one uploaded image file (and the whole body of a multipart ``/search``).
        max_request_upload_bytes: the whole body of a multipart ``/embed`` request (several images).
        max_images: images in one ``/embed`` request.
        max_decoded_bytes: decoded (RGB) pixels held at once for one request, after downscaling.
        max_image_pixels: refuse images above this many pixels (from the header; None: the global limit).
        image_min_side: images are decoded/downscaled so their shorter side is about this many pixels
            (enough for the model's input); None keeps full resolution.
        allowed_hosts: ``Host`` header values (without port) accepted; ``"*"`` accepts any.
        header_timeout: seconds a connection may take to send its request headers.
        cors_origins: web origins (``https://app.example``) allowed to call the API from their pages (CORS);
            their cross-site posts are not refused.
    """

    max_json_bytes: int = 1024 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024
    max_request_upload_bytes: int = 128 * 1024 * 1024
    max_images: int = 64
    max_decoded_bytes: int = 256 * 1024 * 1024
    max_image_pixels: int | None = None
    image_min_side: int | None = 448
    allowed_hosts: tuple[str, ...] = field(default=LOCAL_HOSTS)
    header_timeout: float = 10.0
    cors_origins: tuple[str, ...] = ()

    def body_limit(self, path: str, content_type: str) -> int | None:
        """The most bytes a body of this type may have on this path; None: the type is not accepted."""
        if content_type == "application/json":
            return self.max_json_bytes
        if content_type == "multipart/form-data":  # the files plus form fields and part headers
            return (self.max_request_upload_bytes if path.rstrip("/").endswith("/embed") else self.max_upload_bytes) + 64 * 1024
        return None


class BodyTooLarge(Exception):
    """The request body passed its limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes.")
        self.limit = limit


def host_of(value: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware applying ``ServerLimits`` to every HTTP request (see the module docstring)."""

    def __init__(self, app: Any, limits: ServerLimits) -> None:
        self.app, self.limits = app, limits
        self.hosts = {h.lower() for h in limits.allowed_hosts}
        self.origins = {o.rstrip("/").lower() for o in limits.cors_origins}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if "*" not in self.hosts and (host is None or host_of(host) not in self.hosts):
            return await _reply(send, 400, "invalid Host header; start the server with --allowed-host NAME to "
                                           "serve under another name.")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        limit = self.limits.body_limit(scope["path"], ctype)
        if limit is None:
            return await _reply(send, 415, "send the body as application/json or multipart/form-data.")
        if _cross_site(scope, host) and (_header(scope, b"origin") or "").rstrip("/").lower() not in self.origins:
            return await _reply(send, 403, "cross-site requests are refused.")
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length header.")
            if declared > limit:
                return await _reply(send, 413, f"the request body is larger than {limit} bytes.")
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _cross_site(scope: dict[str, Any], host: str | None) -> bool:
    """True for a POST made by a web page of another site (browsers send Sec-Fetch-Site and/or Origin)."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site.lower() not in ("same-origin", "none")
    origin = _header(scope, b"origin")
    if origin is None:  # not sent by a web page: curl, scripts, SDKs
        return False
    return origin == "null" or urlsplit(origin).netloc.lower() != (host or "").lower()


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 connection class, closing connections that do not complete their request headers in time.

    uvicorn has no such timeout: its keep-alive timer stops at the first byte of a request, so a client
    sending a header byte every few seconds holds a connection (and a file descriptor) for ever.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout = seconds

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = None
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            waiting_since = self.cycle  # a new request (complete headers) replaces self.cycle

            def expire() -> None:
                idle = self.cycle is waiting_since and (self.cycle is None or self.cycle.response_complete)
                if idle and not self.transport.is_closing():
                    self.transport.close()

            self._header_timer = self.loop.call_later(self.header_timeout, expire)

    return HeaderTimeoutProtocol


def server_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *, header_timeout: float | None = None,
                  log_level: str = "warning", **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` for an xmodal app, with the header-read timeout of the app's ``ServerLimits``."""
    import uvicorn

    limits = getattr(getattr(app, "state", None), "limits", None)
    seconds = header_timeout if header_timeout is not None else (limits.header_timeout if limits else 10.0)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=header_timeout_protocol(seconds), **kwargs)
