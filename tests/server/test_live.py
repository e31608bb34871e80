"""Issue 17 item 4: live add/delete over HTTP, visible at once, surviving a restart and kill -9; several indexes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw


SHAPES = {"red": "ellipse", "green": "rectangle", "blue": "ellipse", "yellow": "rectangle"}


def picture(colour, shape="ellipse", size=48) -> Image.Image:
    img = Image.new("RGB", (size, size), (20, 20, 20))
    getattr(ImageDraw.Draw(img), shape)((8, 8, 40, 40), fill=colour)
    return img


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_collection(folder, tiny_model_dir, colours=SHAPES):
    from xmodal.collection import build_collection

    images = folder / "images"
    images.mkdir(parents=True)
    for c, shape in colours.items():
        picture(c, shape).save(images / f"{c}.png")
    build_collection(images, str(tiny_model_dir), folder / "idx", show_progress=False)
    return folder / "idx", images


@pytest.fixture
def live(tmp_path, tiny_model_dir):
    idx, images = make_collection(tmp_path, tiny_model_dir)
    return {"idx": idx, "images": images, "tmp": tmp_path}


def top_ids(client, img, k=3, path="/search"):
    r = client.post(path, files={"image": ("q.png", png_bytes(img), "image/png")}, data={"k": str(k)})
    assert r.status_code == 200, r.text
    return r.json()["ids"]


def test_add_search_delete_and_restart(live, serve_app):
    from xmodal.server import create_app

    pink = picture("pink", "ellipse", 60)
    with serve_app(create_app(live["idx"])) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.post("/items", files={"image": ("pink.png", png_bytes(pink), "image/png")},
                        data={"metadata": '{"caption": "a pink circle", "tags": ["new"]}'})
        assert r.status_code == 201, r.text
        assert r.json() == {"id": "uploads/pink.png", "url": "/items/uploads/pink.png/image", "items": 5}
        assert top_ids(client, pink)[0] == "uploads/pink.png"  # visible to searches at once
        meta = client.get("/items/uploads/pink.png").json()["metadata"]
        assert meta["caption"] == "a pink circle" and meta["path"] == "uploads/pink.png" and len(meta["signature"]) == 2
        assert client.get("/items/uploads/pink.png/image").status_code == 200
        assert (live["images"] / "uploads" / "pink.png").is_file()
        # a file already under the root, added by path
        (live["images"] / "sub").mkdir()
        cyan = picture("cyan", "rectangle")
        cyan.save(live["images"] / "sub" / "cyan.png")
        r = client.post("/items", json={"path": "sub/cyan.png", "metadata": {"source": "camera"}})
        assert r.status_code == 201 and r.json()["id"] == "sub/cyan.png"
        assert top_ids(client, cyan)[0] == "sub/cyan.png"
        # delete: gone from searches and items at once
        r = client.delete("/items/red.png")
        assert r.status_code == 200 and r.json() == {"id": "red.png", "deleted": True, "file_deleted": False, "items": 5}
        assert "red.png" not in top_ids(client, picture("red"), k=5)
        assert client.get("/items/red.png").status_code == 404
        assert client.get("/info").json()["items"] == 5
    # a restart (graceful: the index was saved and the log emptied) keeps every change
    assert (live["idx"] / "live-updates.wal").stat().st_size == 0
    with serve_app(create_app(live["idx"])) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert top_ids(client, pink)[0] == "uploads/pink.png"
        assert client.get("/items/sub/cyan.png").json()["metadata"]["source"] == "camera"
        assert "red.png" not in top_ids(client, picture("red"), k=5)
        assert client.get("/info").json()["items"] == 5
    # and `xmodal index` over the folder afterwards agrees (uploads are files under the root; signatures match)
    from xmodal.collection import build_collection

    report = build_collection(live["images"], str(_model_of(live["idx"])), live["idx"], show_progress=False)
    assert report.added == 1 and report.unchanged == 5  # only red.png (deleted, its file kept) comes back


def _model_of(idx):
    from xmodal.collection import open_collection

    return open_collection(idx).model_name


@pytest.mark.parametrize("kwargs, status, message", [
    ({"json": {"path": "../outside.png"}}, 403, "not a relative path inside"),
    ({"json": {"path": "/etc/passwd"}}, 403, "not a relative path inside"),
    ({"json": {"path": "missing.png"}}, 404, "no file 'missing.png'"),
    ({"json": {"path": "notes.txt"}}, 415, "not an image file name"),
    ({"json": {"path": "green.png", "metadata": {"path": "x"}}}, 422, "may not set ['path']"),
    ({"json": {"path": "green.png", "metadata": [1]}}, 422, "metadata must be a JSON object"),
    ({"json": {}}, 422, "path"),
    ({"files": {"image": ("green.png", b"", "image/png")}}, 409, "already exists"),
    ({"files": {"image": ("x.png", b"\x89PNG broken", "image/png")}}, 400, "not a readable image"),
    ({"files": {"image": ("x.png", b"GIF89a", "image/png")}, "data": {"metadata": "{oops"}}, 422, "JSON object"),
    ({"files": {"image": ("x.png", b"", "image/png")}, "data": {"path": "../../x.png"}}, 403, "inside"),
])
def test_bad_adds_refused(live, serve_app, kwargs, status, message):
    from xmodal.server import create_app

    (live["images"] / "uploads").mkdir(exist_ok=True)
    (live["images"] / "uploads" / "green.png").write_bytes(b"taken")
    (live["images"] / "notes.txt").write_text("x")
    with serve_app(create_app(live["idx"])) as base:
        r = httpx.post(base + "/items", timeout=30, **kwargs)
        assert r.status_code == status, r.text
        assert message in r.json()["error"]
        assert httpx.get(base + "/info").json()["items"] == 4
        assert httpx.delete(base + "/items/nope.png").status_code == 404


SERVER = r"""
import os, signal, sys
import uvicorn
from xmodal.io import set_fault_hook
from xmodal.server import create_app
from xmodal.server.limits import server_config

folder, port, kill_at, compact_every = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if kill_at != "-":
    set_fault_hook(lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None)
app = create_app(folder, compact_every=compact_every, max_wait_ms=1)
uvicorn.Server(server_config(app, host="127.0.0.1", port=port)).run()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Subprocess:
    """`xmodal serve`-like server in its own process, so it can be killed with SIGKILL."""

    def __init__(self, folder, kill_at="-", compact_every=1000):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = open(Path(folder).parent / f"server-{self.port}.log", "w+b")  # a pipe could fill and block it
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(self.port), kill_at,
                                      str(compact_every)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(self.log.read().decode()[-2000:])
            try:
                if httpx.get(self.base + "/health", timeout=1).json()["status"] == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                time.sleep(0.2)
        self.kill()
        self.log.seek(0)
        raise RuntimeError("server did not start: " + self.log.read().decode()[-2000:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_kill_9_during_writes_loses_no_acknowledged_change(live):
    for i in range(40):
        picture((40 + 5 * i, 200 - 4 * i, 90), "ellipse" if i % 2 else "rectangle").save(live["images"] / f"k{i:02d}.png")
    server = Subprocess(live["idx"])
    acked_add, acked_del = [], []
    stop = threading.Event()

    def adder(start):
        with httpx.Client(base_url=server.base, timeout=10) as c:
            for i in range(start, 40, 4):
                if stop.is_set():
                    return
                try:
                    if c.post("/items", json={"path": f"k{i:02d}.png", "metadata": {"n": i}}).status_code == 201:
                        acked_add.append(f"k{i:02d}.png")
                except httpx.HTTPError:
                    return

    def deleter():
        with httpx.Client(base_url=server.base, timeout=10) as c:
            for name in ["red.png", "green.png"]:
                try:
                    if c.delete(f"/items/{name}").status_code == 200:
                        acked_del.append(name)
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=adder, args=(s,)) for s in range(4)] + [threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    while len(acked_add) < 12 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    server.kill()  # kill -9 while requests are in flight
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked_add) >= 12 and acked_del
    server = Subprocess(live["idx"])
    try:
        with httpx.Client(base_url=server.base, timeout=30) as c:
            for item in acked_add:
                r = c.get(f"/items/{item}")
                assert r.status_code == 200, (item, r.text)
                assert r.json()["metadata"]["n"] == int(item[1:3])
            for item in acked_del:
                assert c.get(f"/items/{item}").status_code == 404
            hits = c.post("/search", files={"image": ("q.png", (live["images"] / acked_add[0]).read_bytes(), "image/png")},
                          data={"k": "1"}).json()["ids"]
            assert hits == [acked_add[0]]
    finally:
        server.kill()


@pytest.mark.parametrize("kill_at", ["folder:synced", "folder:committed", "live:saved"])
def test_kill_9_during_the_save_loses_nothing(live, kill_at):
    """compact_every=2: the second add saves the index; kill -9 at a step of that save, then restart."""
    for i in range(2):
        picture(("cyan", "magenta")[i], "rectangle").save(live["images"] / f"c{i}.png")
    server = Subprocess(live["idx"], kill_at=kill_at, compact_every=2)
    with httpx.Client(base_url=server.base, timeout=30) as c:
        assert c.post("/items", json={"path": "c0.png"}).status_code == 201
        with pytest.raises(httpx.HTTPError):  # logged (fsynced), then the save it starts dies: no answer
            c.delete("/items/blue.png")
    server.proc.wait(timeout=30)
    assert server.proc.returncode == -signal.SIGKILL
    server = Subprocess(live["idx"])  # replays the log over whatever the save left
    try:
        with httpx.Client(base_url=server.base, timeout=30) as c:
            assert c.get("/items/c0.png").status_code == 200
            assert c.get("/items/blue.png").status_code == 404  # the logged delete is not lost either
            assert c.get("/info").json()["items"] == 4
            assert c.post("/items", json={"path": "c1.png"}).status_code == 201
    finally:
        server.kill()


def test_torn_log_line_is_dropped(live, tiny_model):
    from xmodal.collection import open_collection
    from xmodal.server.live import WAL_NAME, LiveIndex

    col = open_collection(live["idx"])
    li = LiveIndex(col)
    li.add("x.png", tiny_model.encode_text(["x"], show_progress=False)[0], {"path": "x.png"})
    li._wal.close()
    li._wal = None
    li._held.close()
    li._locked = False
    with open(live["idx"] / WAL_NAME, "ab") as f:
        f.write(b'1234abcd {"op": "add", "id": "torn')  # a crash in the middle of a line
    col2 = open_collection(live["idx"])
    li2 = LiveIndex(col2)
    assert li2.recover() == 1 and "x.png" in col2.index and "torn" not in str(col2.index.ids())
    assert (live["idx"] / WAL_NAME).stat().st_size == 0
    li2.close()
    assert "x.png" in open_collection(live["idx"]).index


def test_several_indexes_from_one_process(tmp_path, tiny_model_dir, serve_app):
    from xmodal.server import create_app

    a, _ = make_collection(tmp_path / "a", tiny_model_dir, {"red": "ellipse", "green": "rectangle"})
    b, images_b = make_collection(tmp_path / "b", tiny_model_dir, {"blue": "ellipse", "yellow": "rectangle",
                                                                   "white": "ellipse"})
    with serve_app(create_app({"shapes": a, "more": b})) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/info").json()["indexes"] == ["shapes", "more"]
        assert c.get("/indexes/more/info").json()["items"] == 3
        assert set(c.post("/search", json={"text": "a circle", "k": 5}).json()["ids"]) == {"red.png", "green.png"}
        r = c.post("/indexes/more/search", json={"text": "a circle", "k": 5}).json()
        assert set(r["ids"]) == {"blue.png", "yellow.png", "white.png"}
        assert r["results"][0]["url"].startswith("/indexes/more/items/")
        assert c.get(r["results"][0]["url"]).status_code == 200
        assert c.get("/indexes/more/items/blue.png").json()["url"] == "/indexes/more/items/blue.png/image"
        assert c.get("/indexes/shapes/items/blue.png").status_code == 404
        picture("pink").save(images_b / "pink.png")
        assert c.post("/indexes/more/items", json={"path": "pink.png"}).status_code == 201
        assert "pink.png" in c.post("/indexes/more/search", json={"text": "a circle", "k": 5}).json()["ids"]
        assert "pink.png" not in c.post("/search", json={"text": "a circle", "k": 5}).json()["ids"]
        assert c.delete("/indexes/more/items/blue.png").status_code == 200
        assert c.get("/indexes/more/info").json()["items"] == 3 and c.get("/info").json()["items"] == 2
        assert c.post("/indexes/nope/search", json={"text": "x"}).status_code == 404
        from prometheus_client.parser import text_string_to_metric_families

        sizes = {s.labels["index"]: s.value for f in text_string_to_metric_families(c.get("/metrics").text)
                 if f.name == "xmodal_index_items" for s in f.samples}
        assert sizes == {"shapes": 2, "more": 3}


def test_live_changes_reach_the_lexical_index(tmp_path, tiny_model_dir, serve_app):
    """An image collection with BM25 texts: a live add's metadata text is searchable lexically, a delete drops it,
    and both are kept by the save at shutdown."""
    import json

    from xmodal.collection import build_collection
    from xmodal.server import create_app

    images = tmp_path / "images"
    images.mkdir()
    for c in ["red", "green"]:
        picture(c).save(images / f"{c}.png")
    records = tmp_path / "captions.jsonl"
    records.write_text("\n".join(json.dumps({"path": f"{c}.png", "caption": f"a {c} ball"}) for c in ["red", "green"]))
    build_collection(images, str(tiny_model_dir), tmp_path / "idx", texts=records, text_fields=["caption"],
                     show_progress=False)
    picture("blue").save(images / "blue.png")

    def lexical(client, word):
        r = client.post("/search", json={"text": word, "k": 5, "mode": "lexical"})
        assert r.status_code == 200, r.text
        return r.json()["ids"]

    with serve_app(create_app(tmp_path / "idx")) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert lexical(c, "zebra") == []
        assert c.post("/items", json={"path": "blue.png", "metadata": {"caption": "a zebra"}}).status_code == 201
        assert lexical(c, "zebra") == ["blue.png"]
        assert c.delete("/items/red.png").status_code == 200
        assert "red.png" not in lexical(c, "ball")
    with serve_app(create_app(tmp_path / "idx")) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert lexical(c, "zebra") == ["blue.png"] and lexical(c, "ball") == ["green.png"]
