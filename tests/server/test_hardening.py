"""Issue 19: the server under hostile input -- odd file names, bombs, oversized bodies, foreign hosts, slow clients."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time
import zlib

import httpx
import pytest
from PIL import Image, ImageDraw

NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # 'caf\udce9.png': a Latin-1 file name on a UTF-8 system
NEWLINE = "two\nlines.png"


def png(colour="red", size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idat = zlib.compress((b"\x00" + b"\x00" * 3 * width) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def odd(tmp_path_factory, tiny_model_dir, serve_app):
    """A server over images with a non-UTF-8 name, a newline in a name, and a file corrupted after indexing."""
    from xmodal.collection import build_collection
    from xmodal.server import create_app
    from xmodal.server.limits import ServerLimits

    root = tmp_path_factory.mktemp("odd")
    images = root / "images"
    images.mkdir()
    for name, colour in [("red.png", "red"), (NON_UTF8, "blue"), (NEWLINE, "green"), ("broken.png", "yellow")]:
        img = Image.new("RGB", (48, 48), (20, 20, 20))
        ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=colour)
        img.save(os.path.join(os.fsencode(images), os.fsencode(name)), format="PNG")
    build_collection(images, str(tiny_model_dir), root / "idx", show_progress=False)
    (images / "broken.png").write_bytes(b"\x89PNG corrupted after indexing")
    limits = ServerLimits(max_images=4, max_json_bytes=64 * 1024, max_upload_bytes=2_000_000,
                          max_request_upload_bytes=5_000_000, max_image_pixels=20_000_000,
                          max_decoded_bytes=3 * 500 * 500 * 3, image_min_side=None)
    with serve_app(create_app(root / "idx", limits=limits)) as base:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield {"client": client, "base": base, "root": root}


def all_ids(client):
    r = client.post("/search", json={"text": "a circle", "k": 4})
    assert r.status_code == 200, r.text
    return r.json()


# ---- item 5: non-UTF-8 file names
def test_non_utf8_name_searchable_and_fetchable(odd):
    client = odd["client"]
    body = all_ids(odd["client"])  # was a 500: quote() and the UTF-8 JSON encoder raised on the surrogate
    assert NON_UTF8 in body["ids"]
    hit = next(h for h in body["results"] if h["id"] == NON_UTF8)
    assert hit["url"] == "/items/caf%E9.png/image"
    img = client.get(hit["url"])
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).getpixel((24, 24)) == (0, 0, 255)
    meta = client.get("/items/caf%E9.png")
    assert meta.status_code == 200 and json.loads(meta.text)["id"] == NON_UTF8


# ---- item 14: newline in a name
def test_newline_name_fetchable(odd):
    client = odd["client"]
    hit = next(h for h in all_ids(client)["results"] if h["id"] == NEWLINE)
    assert hit["url"] == "/items/two%0Alines.png/image"
    img = client.get(hit["url"])
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).getpixel((24, 24)) == (0, 128, 0)
    assert client.get("/items/two%0Alines.png").json()["id"] == NEWLINE
    assert client.get("/items/two%0Alines.png/image", params={"thumb": 32}).status_code == 200


# ---- item 12: lone surrogate in JSON text
@pytest.mark.parametrize("path, body", [("/search", b'{"text": "\\ud800"}'), ("/embed", b'{"input": ["ok", "\\ud800"]}')])
def test_lone_surrogate_is_400(odd, path, body):
    r = odd["client"].post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid Unicode" in r.json()["error"]


# ---- item 13: no absolute paths in error responses
def test_errors_hold_no_absolute_paths(odd):
    r = odd["client"].get("/items/broken.png/image", params={"thumb": 32})
    assert r.status_code == 400 and "broken.png" in r.json()["error"]
    assert str(odd["root"]) not in r.text and "/tmp" not in r.text and "/images/" not in r.text


# ---- item 16: Host header, cross-site posts, strict integers, slow clients
def test_foreign_host_header_refused(odd):
    r = httpx.get(odd["base"] + "/health", headers={"host": "evil.example"})
    assert r.status_code == 400 and "Host" in r.json()["error"]
    port = odd["base"].rsplit(":", 1)[1]
    assert httpx.get(odd["base"] + "/health", headers={"host": f"localhost:{port}"}).status_code == 200
    assert httpx.get(odd["base"] + "/health", headers={"host": f"[::1]:{port}"}).status_code == 200


def test_cross_site_posts_refused(odd):
    client = odd["client"]
    plain = client.post("/search", content=b'{"text": "red"}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    form = {"text": "red"}
    evil = client.post("/search", data=form, files={"x": ("a", b"", "text/plain")}, headers={"origin": "http://evil.example"})
    assert evil.status_code == 403
    fetch = client.post("/search", json=form, headers={"sec-fetch-site": "cross-site"})
    assert fetch.status_code == 403
    same = client.post("/search", json=form, headers={"origin": odd["base"], "sec-fetch-site": "same-origin"})
    assert same.status_code == 200


@pytest.mark.parametrize("k", [1.7, True, "2.5", [3], None])
def test_k_must_be_a_whole_number(odd, k):
    r = odd["client"].post("/search", json={"text": "red", "k": k})
    assert r.status_code == 422 and "integer" in r.json()["error"]


def test_slow_header_connections_are_closed(odd):
    host, port = odd["base"].removeprefix("http://").split(":")
    socks = []
    for _ in range(40):  # bounded: 40 loopback connections, each sending half a request line
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(s)
    try:
        assert odd["client"].get("/health").status_code == 200  # others are still served meanwhile
        t0 = time.time()
        closed = 0
        for s in socks:
            s.settimeout(max(0.5, 8 - (time.time() - t0)))
            try:
                closed += s.recv(1024) == b""
            except (socket.timeout, ConnectionError):
                pass
        assert closed == len(socks)  # the 2 s header timeout closed every one of them
    finally:
        for s in socks:
            s.close()


# ---- item 6: body and per-request limits
def test_huge_declared_body_refused_before_reading(odd):
    host, port = odd["base"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 300000000\r\n\r\n{\"text\": \"")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"larger than 65536 bytes" in reply


def test_streamed_body_counted_while_reading(odd):
    def chunks():
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 4096
        yield b'"}'

    r = odd["client"].post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_upload_over_request_limit_refused_early(odd):
    r = odd["client"].post("/embed", files=[("image", (f"{i}.png", b"0" * 1_900_000, "image/png")) for i in range(3)])
    assert r.status_code == 413  # 5.7 MB > 5 MB: answered from the headers, not after spooling the files


def test_embed_image_count_and_decoded_bytes_are_capped(odd):
    client = odd["client"]
    five = [("image", (f"{i}.png", png(size=(20, 20)), "image/png")) for i in range(5)]
    r = client.post("/embed", files=five)
    assert r.status_code == 413 and "at most 4 images" in r.json()["error"]
    big = [("image", (f"{i}.png", png(size=(500, 500)), "image/png")) for i in range(4)]
    r = client.post("/embed", files=big)
    assert r.status_code == 413 and "decode to more than" in r.json()["error"]
    assert client.post("/embed", files=big[:3]).status_code == 200


# ---- item 4: decompression bomb upload
def test_bomb_upload_refused_from_its_header(odd):
    bomb = png_header_only(18000, 18000)
    assert len(bomb) < 200_000
    r = odd["client"].post("/search", files={"image": ("bomb.png", bomb, "image/png")}, data={"k": "2"})
    assert r.status_code == 413 and "megapixels" in r.json()["error"]
    assert odd["client"].get("/health").json() == {"status": "ok"}
