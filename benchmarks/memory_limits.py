"""Peak memory of hostile-but-valid inputs (issue 19): big photos, a decompression bomb, a fat /embed request.

Each case runs in its own subprocess. The subprocess loads what it needs (model, server), then resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``, so the start-up peak does not count), runs the
case and reports ``VmHWM - RSS before`` = peak RSS above the process baseline. Next to each xmodal case a
peer runs in the same way: what the same input costs decoded plainly with Pillow at full resolution
(what the code did before the limits). Target: every xmodal case under 1.5 GB above its baseline.

    python benchmarks/memory_limits.py                       # all cases (first run makes the images: ~1 min)
    python benchmarks/memory_limits.py --cases index,bomb    # a subset
    python benchmarks/memory_limits.py --photos 12           # fewer 12 MP photos (quick look)

Cases:
  index  `build_collection` over 48 JPEG photos of 4000x3000 (12 MP)   peer: the 48 decoded at full size
  bomb   `build_collection` over one 18000x18000 PNG (a ~40 KB file)    peer: Pillow decoding it to RGB
  embed  POST /embed with 40 JPEGs of 3000x3000 to a real uvicorn server peer: the 40 decoded at full size
Only 127.0.0.1 is contacted; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

TARGET_MB = 1536
WORK = Path(tempfile.gettempdir()) / "xmodal-memory-limits"


# --------------------------------------------------------------------------- measuring (inside a case)
def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure(fn) -> dict:
    """Run ``fn`` and return peak RSS above the RSS just before it (MB), and seconds."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = rss_kb("VmRSS")
    t0 = time.perf_counter()
    note = fn()
    seconds = time.perf_counter() - t0
    return {"peak_mb": (rss_kb("VmHWM") - base) / 1024, "base_mb": base / 1024, "seconds": seconds, "note": note or ""}


# --------------------------------------------------------------------------- inputs
def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth random colour fields plus grain (compress like photos, ~1-3 MB each)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"photo_{i:03d}.jpg"
        if not p.exists():
            small = Image.fromarray(rng.integers(0, 256, (size[1] // 100, size[0] // 100, 3), dtype=np.uint8))
            img = np.asarray(small.resize(size, Image.BICUBIC), dtype=np.int16)
            img = img + rng.integers(-12, 13, img.shape, dtype=np.int16)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=88)
        paths.append(p)
    return paths


def make_bomb(path: Path, side: int = 18000) -> Path:
    """A valid 1-bit greyscale PNG of side x side pixels, all black: a few tens of KB on disk."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def tiny_model(folder: Path) -> Path:
    from xmodal.models.tiny import build_tiny_model

    if not (folder / "config.json").exists():
        build_tiny_model("clip", folder)
    return folder


# --------------------------------------------------------------------------- cases (each in a subprocess)
def case_index(n_photos: int) -> dict:
    from xmodal.collection import build_collection
    from xmodal.models.dual import DualEncoder

    photos = WORK / f"photos-{n_photos}"
    model = DualEncoder.from_pretrained(tiny_model(WORK / "tiny-clip"))
    out = Path(tempfile.mkdtemp(prefix="idx-", dir=WORK))

    def run() -> str:
        rep = build_collection(photos, model, out, show_progress=False)
        return f"{rep.added} added, {len(rep.failed)} failed"

    return measure(run)


def peer_index(n_photos: int) -> dict:
    from PIL import Image

    photos = sorted((WORK / f"photos-{n_photos}").glob("*.jpg"))

    def run() -> str:
        held = [Image.open(p).convert("RGB") for p in photos]  # a whole chunk at full resolution
        return f"{len(held)} decoded at {held[0].size[0]}x{held[0].size[1]}"

    return measure(run)


def case_bomb() -> dict:
    from xmodal.collection import build_collection
    from xmodal.models.dual import DualEncoder

    model = DualEncoder.from_pretrained(tiny_model(WORK / "tiny-clip"))
    out = Path(tempfile.mkdtemp(prefix="idx-", dir=WORK))

    def run() -> str:
        rep = build_collection(WORK / "bomb", model, out, show_progress=False)
        return f"{rep.added} added, {len(rep.failed)} refused: {rep.failed[0][1][:60] if rep.failed else ''}"

    return measure(run)


def peer_bomb() -> dict:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 178_956_970  # the old setting: Pillow raises only above twice this

    def run() -> str:
        img = Image.open(WORK / "bomb" / "bomb.png").convert("RGB")
        return f"decoded {img.size[0]}x{img.size[1]}"

    return measure(run)


def _serve(app):
    import socket
    import threading

    import httpx
    import uvicorn

    from xmodal.server.limits import server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=1).json()["status"] == "ok":
                return server, base
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def case_embed(n_images: int) -> dict:
    import httpx

    from xmodal.collection import build_collection
    from xmodal.server import create_app

    photos = sorted((WORK / f"embed-{n_images}").glob("*.jpg"))
    idx = WORK / "embed-index"
    if not (idx / "manifest.json").exists():  # collection.json is stored under a versioned name
        build_collection(WORK / "embed-small", str(tiny_model(WORK / "tiny-clip")), idx, show_progress=False)
    server, base = _serve(create_app(idx))
    payload = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]  # counted in the baseline
    with httpx.Client(base_url=base, timeout=300) as client:
        client.post("/embed", files=payload[:2])  # warm-up: first encode, thread pool

        def run() -> str:
            r = client.post("/embed", files=payload)
            return f"HTTP {r.status_code}, {len(r.json().get('data', []))} embeddings" if r.status_code == 200 else \
                f"HTTP {r.status_code}: {r.text[:80]}"

        result = measure(run)
    server.should_exit = True
    return result


def peer_embed(n_images: int) -> dict:
    from PIL import Image

    photos = sorted((WORK / f"embed-{n_images}").glob("*.jpg"))

    def run() -> str:
        held = [Image.open(p).convert("RGB") for p in photos]  # the old /embed: every image decoded at once
        return f"{len(held)} decoded at {held[0].size[0]}x{held[0].size[1]}"

    return measure(run)


CASES = {
    "index": ("index 48 photos of 12 MP", case_index, peer_index),
    "bomb": ("index one 18000x18000 PNG", case_bomb, peer_bomb),
    "embed": ("/embed 40 images of 3000x3000", case_embed, peer_embed),
}


def child(name: str, which: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    _, case, peer = CASES[name]
    fn = case if which == "xmodal" else peer
    kwargs = {"index": {"n_photos": args.photos}, "embed": {"n_images": args.embed_images}}.get(name, {})
    print(json.dumps(fn(**kwargs)))


def run_child(name: str, which: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--which", which, "--photos", str(args.photos),
           "--embed-images", str(args.embed_images)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        return {"peak_mb": float("nan"), "base_mb": float("nan"), "seconds": float("nan"),
                "note": f"failed (exit {r.returncode}): {lines[-1] if lines else ''}"[:90]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def prepare(names: list[str], args: argparse.Namespace) -> None:
    from PIL import Image

    if "index" in names:
        make_photos(WORK / f"photos-{args.photos}", args.photos, (4000, 3000))
    if "bomb" in names:
        make_bomb(WORK / "bomb" / "bomb.png")
    if "embed" in names:
        make_photos(WORK / f"embed-{args.embed_images}", args.embed_images, (3000, 3000), seed=1)
        small = WORK / "embed-small"
        small.mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(["red", "green", "blue", "white"]):
            Image.new("RGB", (48, 48), c).save(small / f"{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="index,bomb,embed")
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--embed-images", type=int, default=40)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--which", default="xmodal", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.which, args)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")
    WORK.mkdir(parents=True, exist_ok=True)
    prepare(names, args)
    print(f"peak RSS above the process baseline (MB); target for xmodal: < {TARGET_MB} MB; "
          f"peer = plain Pillow decode at full size (the code before the limits)")
    print(f"{'case':<32} {'xmodal MB':>10} {'peer MB':>9} {'ratio':>6} {'target':>7}  {'xmodal s':>8}  note")
    for name in names:
        title = CASES[name][0].replace("48", str(args.photos)).replace("40", str(args.embed_images))
        ours, peer = run_child(name, "xmodal", args), run_child(name, "peer", args)
        ratio = ours["peak_mb"] / peer["peak_mb"] if peer["peak_mb"] and peer["peak_mb"] == peer["peak_mb"] else float("nan")
        ok = "ok" if ours["peak_mb"] < TARGET_MB else "MISSED"
        print(f"{title:<32} {ours['peak_mb']:>10.0f} {peer['peak_mb']:>9.0f} {ratio:>6.2f} {ok:>7}  "
              f"{ours['seconds']:>8.1f}  {ours['note']}")


if __name__ == "__main__":
    main()
