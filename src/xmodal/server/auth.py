"""API keys: every request but the public ones (health, the page and its static files, the API docs) must
carry a key, as ``Authorization: Bearer KEY`` (what the OpenAI clients send) or ``X-API-Key: KEY``.

Keys are compared in constant time: the SHA-256 digests of the presented key and of every configured key are
compared with ``hmac.compare_digest`` (equal lengths, no early exit), and all keys are always checked, so the
answer time says nothing about how much of a key was right or which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import InvalidInputError

# Paths answered without a key: liveness, the search page and its files, the API's documentation (no data).
PUBLIC_PATHS = frozenset({"/health", "/", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/",)


def read_key_file(path: str | Path) -> list[str]:
    """Keys from a file, one per line (blank lines and lines starting with # are skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read the API key file '{path}': {e.__class__.__name__}.") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise InvalidInputError(f"the API key file '{path}' holds no key (one key per line).")
    return keys


def check_keys(keys: Iterable[str]) -> list[str]:
    keys = [str(k) for k in keys]
    for k in keys:
        if len(k) < 8 or any(c.isspace() for c in k):
            raise InvalidInputError("an API key must be at least 8 characters without spaces.")
    return keys


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class APIKeyGuard:
    """ASGI middleware refusing (401) requests to non-public paths without a valid key."""

    def __init__(self, app: Any, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = [_digest(k.encode()) for k in check_keys(keys)]

    def valid(self, presented: bytes | None) -> bool:
        got = _digest(presented or b"")
        ok = False
        for want in self._digests:  # every key, every time
            ok |= hmac.compare_digest(got, want)
        return ok and presented is not None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or is_public(scope["path"]):
            return await self.app(scope, receive, send)
        if self.valid(presented_key(scope)):
            return await self.app(scope, receive, send)
        message = "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."
        body = json.dumps({"error": {"message": message, "type": "authentication_error", "code": 401}}
                          if scope["path"].startswith("/v1/") else {"error": message}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def presented_key(scope: dict[str, Any]) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None
