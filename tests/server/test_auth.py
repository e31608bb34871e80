"""Issue 17 item 3: API keys (constant-time compare), CORS headers, public paths."""

from __future__ import annotations

import httpx
import pytest

KEY, OTHER = "s3cret-key-0123456789", "another-key-abcdefgh"
ORIGIN = "http://app.example:3000"


@pytest.fixture(scope="module")
def keyed(served, serve_app):
    from xmodal.server import create_app

    app = create_app(served["root"] / "idx", api_keys=[KEY, OTHER], cors_origins=[ORIGIN])
    with serve_app(app) as base:
        yield base


@pytest.mark.parametrize("method, path, kwargs", [
    ("post", "/search", {"json": {"text": "red"}}),
    ("post", "/indexes/default/search", {"json": {"text": "red"}}),
    ("get", "/info", {}),
    ("get", "/items/red.png", {}),
    ("get", "/items/red.png/image", {}),
    ("post", "/embed", {"json": {"input": "red"}}),
    ("post", "/v1/embeddings", {"json": {"input": "red"}}),
])
def test_key_required_everywhere_but_public_paths(keyed, method, path, kwargs):
    r = getattr(httpx, method)(keyed + path, **kwargs)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "API key" in str(r.json()["error"])
    for bad in [KEY[:-1], KEY + "x", KEY.upper(), "", OTHER[:8]]:
        assert getattr(httpx, method)(keyed + path, headers={"x-api-key": bad}, **kwargs).status_code == 401
    for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": OTHER}):
        r = getattr(httpx, method)(keyed + path, headers=headers, **kwargs)
        assert r.status_code == 200, r.text


def test_public_paths_need_no_key(keyed):
    for path in ["/health", "/", "/static/app.js", "/docs", "/openapi.json"]:
        assert httpx.get(keyed + path).status_code == 200, path


def test_keys_are_compared_in_constant_time(monkeypatch):
    """Every configured key is compared with hmac.compare_digest on equal-length digests, whatever matched."""
    import xmodal.server.auth as auth

    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    guard = auth.APIKeyGuard(None, [KEY, OTHER])
    assert guard.valid(KEY.encode()) and guard.valid(OTHER.encode())
    assert not guard.valid(b"s") and not guard.valid(None) and not guard.valid(KEY.encode()[:-1])
    assert len(calls) == 2 * 5 and {c for c in calls} == {(32, 32)}


def test_bad_keys_refused_at_creation(served, tmp_path):
    from xmodal.errors import InvalidInputError
    from xmodal.server import create_app
    from xmodal.server.auth import read_key_file

    with pytest.raises(InvalidInputError, match="at least 8"):
        create_app(served["root"] / "idx", api_keys=["short"])
    f = tmp_path / "keys"
    f.write_text("# team keys\n\n" + KEY + "\n  " + OTHER + "  \n")
    assert read_key_file(f) == [KEY, OTHER]
    f.write_text("# nothing\n")
    with pytest.raises(InvalidInputError, match="holds no key"):
        read_key_file(f)


def test_openai_client_sends_its_key(keyed):
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0)
    assert len(good.embeddings.create(model="tiny-clip", input="red").data[0].embedding) == 32
    bad = openai.OpenAI(base_url=keyed + "/v1", api_key="wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        bad.embeddings.create(model="tiny-clip", input="red")


def test_cors_headers_as_configured(keyed):
    pre = httpx.options(keyed + "/search", headers={"origin": ORIGIN, "access-control-request-method": "POST",
                                                    "access-control-request-headers": "x-api-key, content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    # the allowed origin's page may post (with its key); its 401s carry CORS headers so the page can read them
    r = httpx.post(keyed + "/search", json={"text": "red"},
                   headers={"origin": ORIGIN, "sec-fetch-site": "cross-site", "x-api-key": KEY})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.post(keyed + "/search", json={"text": "red"}, headers={"origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    # any other origin: no CORS grant, and its cross-site posts stay refused
    evil = httpx.options(keyed + "/search", headers={"origin": "http://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in evil.headers
    r = httpx.post(keyed + "/search", json={"text": "red"}, headers={"origin": "http://evil.example", "x-api-key": KEY})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_no_cors_headers_by_default(served):
    r = httpx.post(served["base"] + "/search", json={"text": "red"}, headers={"origin": served["base"]})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
