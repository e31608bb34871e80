"""Bounded load check of `xmodal serve` on loopback: latency percentiles, requests/s, failures.

Starts a real uvicorn server on 127.0.0.1 over an index (default: builds the offline demo's index
if --index is not given), then sends --requests text searches from --concurrency client threads.
Only 127.0.0.1 is ever contacted; the loop is bounded in count and time. The server runs with xmodal's
own uvicorn config (``server_config``: request guard, header-read timeout), and the process RSS (server
and client threads together) is sampled every 0.2 s: after warm-up, peak during the load, and at the end.

    python benchmarks/serve_load.py --requests 2000 --concurrency 8
    python benchmarks/serve_load.py --requests 3500 --concurrency 500      # the issue-19 load figures
    python benchmarks/serve_load.py --index xmodal-demo/index --rerank path/to/joint --depth 20
    python benchmarks/serve_load.py --batching-table              # issue 17: batching off vs on, 1/8/32 concurrent

``--batching-table`` builds a CLIP of ViT-B/32 size (text and vision towers 512 wide, 12 layers, 224 px
images, patch 32; random weights: no hub here) and indexes --table-images generated images with it, so that
encoding a query dominates the cost of a request. It then serves that index twice in one run -- batching off
(``max_batch=1``: one request per model call, like the old global lock) and on (``--max-batch``,
``--max-wait-ms``) -- and measures text searches at concurrency 1, 8 and 32.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

QUERIES = ["a big red circle", "a small blue square", "a green triangle", "a yellow cross to the left of a white circle",
           "a big purple square", "a small orange circle"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--rerank", default=None)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--demo-steps", type=int, default=300, help="training steps of the demo model (no --index)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="stop sending after this many seconds")
    ap.add_argument("--batching-table", action="store_true", help="batching off vs on at concurrency 1, 8, 32")
    ap.add_argument("--table-requests", type=int, default=200, help="requests per row of the batching table")
    ap.add_argument("--table-images", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    args = ap.parse_args()
    if args.batching_table:
        return batching_table(args)

    from xmodal.server import create_app

    try:
        from xmodal.server.limits import server_config
    except ImportError:  # an xmodal from before the request limits: measure it the same way, for comparison
        def server_config(app, host, port):
            return uvicorn.Config(app, host=host, port=port, log_level="warning")

    index = args.index
    if index is None:
        from xmodal.demo import run_demo

        index = Path(f"/tmp/xmodal-serve-load-{args.demo_steps}/index")
        if not (index / "manifest.json").exists():  # collection.json is stored under a versioned name
            index = run_demo(index.parent, steps=args.demo_steps, echo=lambda *_: None, show_progress=False)["index"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(index, reranker=args.rerank), host="127.0.0.1", port=port))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{base}/health").json()["status"] == "ok":
                break
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)

    deadline = time.time() + args.time_limit
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    client = httpx.Client(base_url=base, timeout=30, limits=httpx.Limits(max_connections=args.concurrency))

    def one(i: int) -> None:
        if time.time() > deadline:
            return
        body = {"text": QUERIES[i % len(QUERIES)], "k": args.k}
        if args.rerank:
            body.update(rerank=True, depth=args.depth)
        t0 = time.perf_counter()
        try:
            r = client.post("/search", json=body)
            ok = r.status_code == 200 and len(r.json()["ids"]) > 0
            err = None if ok else f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            err = type(e).__name__
        dt = time.perf_counter() - t0
        with lock:
            (failures.append(err) if err else latencies.append(dt))

    for i in range(20):  # warm-up, not counted
        client.post("/search", json={"text": QUERIES[i % len(QUERIES)], "k": args.k})
    rss = [_rss_mb()]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            rss.append(_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - t0
    sampling.set()
    sampler.join()
    rss.append(_rss_mb())
    server.should_exit = True
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    print(f"index {index} ({'rerank@' + str(args.depth) if args.rerank else 'retrieve only'}), k={args.k}, "
          f"{args.requests} requests, {args.concurrency} concurrent, loopback")
    print(f"{'requests ok':>12} {'failed':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{len(latencies):>12} {len(failures):>7} {len(latencies) / wall:>8.1f} {1000 * q[49]:>8.1f} "
          f"{1000 * q[94]:>8.1f} {1000 * q[98]:>8.1f} {1000 * max(latencies):>8.1f}")
    print(f"process RSS (server + {args.concurrency} client threads): after warm-up {rss[0]:.0f} MB, "
          f"peak {max(rss):.0f} MB, end {rss[-1]:.0f} MB")
    if failures:
        print("failures:", {f: failures.count(f) for f in set(failures)})


def _serve(app):
    from xmodal.server.limits import server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health").json()["status"] == "ok":
                return server, base
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _load(base: str, concurrency: int, requests: int, k: int) -> tuple[int, int, float, list[float]]:
    """(ok, failed, seconds, latencies) for ``requests`` text searches from ``concurrency`` threads."""
    latencies: list[float] = []
    failed = 0
    lock = threading.Lock()
    client = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=concurrency))

    def one(i: int) -> None:
        nonlocal failed
        t0 = time.perf_counter()
        try:  # distinct texts: nothing can be answered from a cache
            r = client.post("/search", json={"text": f"{QUERIES[i % len(QUERIES)]} {i}", "k": k})
            ok = r.status_code == 200 and len(r.json()["ids"]) > 0
        except httpx.HTTPError:
            ok = False
        dt = time.perf_counter() - t0
        with lock:
            if ok:
                latencies.append(dt)
            else:
                failed += 1

    for i in range(min(8, requests)):  # warm-up, not counted
        client.post("/search", json={"text": QUERIES[i % len(QUERIES)], "k": k})
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    client.close()
    return len(latencies), failed, wall, latencies


def batching_table(args) -> None:
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from xmodal.collection import build_collection
    from xmodal.models.tiny import build_tiny_model
    from xmodal.server import create_app

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="xmodal-serve-batching-"))
    rng = np.random.default_rng(0)
    (work / "images").mkdir()
    for i in range(args.table_images):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(work / "images" / f"{i:04d}.png")
    t0 = time.perf_counter()
    build_tiny_model("clip", work / "model", hidden=512, layers=12, heads=8, image_size=224, patch_size=32,
                     projection_dim=512, max_text_len=77)
    build_collection(work / "images", str(work / "model"), work / "idx", show_progress=False)
    print(f"model: CLIP of ViT-B/32 size (text+vision 512 wide, 12 layers, 224 px, patch 32; random weights), "
          f"{args.table_images} items, flat FAISS; built in {time.perf_counter() - t0:.0f} s")
    print(f"{args.table_requests} text searches per row (k={args.k}), loopback, torch threads 2")
    print(f"{'batching':<28} {'conc':>5} {'ok':>5} {'failed':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    rates: dict[tuple[str, int], float] = {}
    for label, mb, wait in [("off (max_batch=1)", 1, 0.0), (f"on (max_batch={args.max_batch}, {args.max_wait_ms:g} ms)",
                                                                args.max_batch, args.max_wait_ms)]:
        app = create_app(work / "idx", max_batch=mb, max_wait_ms=wait)
        server, base = _serve(app)
        for conc in (1, 8, 32):
            ok, failed, wall, lat = _load(base, conc, args.table_requests, args.k)
            q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
            rates[(label[:3], conc)] = ok / wall
            print(f"{label:<28} {conc:>5} {ok:>5} {failed:>6} {ok / wall:>8.1f} {1000 * q[49]:>8.1f} {1000 * q[98]:>8.1f}")
        server.should_exit = True
        time.sleep(1.0)
    for conc in (1, 8, 32):
        print(f"req/s on / off at concurrency {conc}: {rates[('on ', conc)] / rates[('off', conc)]:.2f}x")


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
