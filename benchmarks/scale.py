"""Scale benchmark: FAISS flat / HNSW / IVF-PQ indexes built from embedding shards, at growing sizes.

Random clustered vectors (no model) are written as ``.npy`` shards, then streamed into each index
kind (IVF-PQ trained on a sample first), tuned to ``--target-recall`` against exact search over the
shards, saved, reopened, queried and updated. Per size and kind it prints: build time (incl. tuning),
bytes per item on disk and in RAM (anonymous RSS growth while building), open time (memory-mapped and
read), single-query latency (median), batch throughput, recall@10 at the tuned setting, and the time
to apply 1% adds + 1% removes and save; then each figure's growth between the first two sizes as a
ratio (x10 items -> ~x10 for linear costs, ~x1 for per-query costs of HNSW).

    nice python benchmarks/scale.py --sizes 100000,1000000 --dim 512      # ~2 GB per 1M float32 vectors
    OMP_NUM_THREADS=1 nice python benchmarks/scale.py --sizes 10000,100000 --kinds flat,hnsw,ivfpq
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.manifest import read_manifest


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_shards(folder: Path, n: int, dim: int, per_shard: int, seed: int = 0) -> list[Path]:
    """Clustered unit vectors (2,000 centres, noise as large as the centre) in ``.npy`` shards."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    files = []
    for s in range(0, n, per_shard):
        m = min(per_shard, n - s)
        x = centres[rng.integers(0, 2000, m)] + rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        files.append(folder / f"part-{s // per_shard:05d}.npy")
        np.save(files[-1], x.astype(np.float32))
    return files


def shards(files: list[Path]):
    def it():
        start = 0
        for f in files:
            x = np.load(f)
            yield [str(i) for i in range(start, start + len(x))], x
            start += len(x)
    return it


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def stored_files(folder: Path) -> dict[str, int]:
    m = read_manifest(folder, verify=False)
    return {m.files.get(name, name): m.path(folder, name).stat().st_size for name in m.checksums}


def run_one(kind: str, files: list[Path], n: int, dim: int, work: Path, target: float, sample: int,
            hnsw: dict) -> dict:
    rng = np.random.default_rng(1)
    src = shards(files)
    rss0 = rss_anon_mb()
    t0 = time.perf_counter()
    opts = dict(hnsw) if kind == "hnsw" else {}
    index = FaissIndex(dim, kind=kind, **opts)
    if kind == "ivfpq":
        x0 = np.load(files[0])
        train = x0[rng.choice(len(x0), min(len(x0), max(20_000, 39 * int(4 * np.sqrt(n)))), replace=False)]
        index.train(train)
    for ids, vecs in src():
        index.add(ids, vecs)
    tuning = index.tune(target, sample=sample, source=src) if kind != "flat" else None
    build = time.perf_counter() - t0
    ram = (rss_anon_mb() - rss0) * 2**20 / n
    out = work / f"{kind}-{n}"
    index.save(out)
    disk = folder_bytes(out) / n
    del index
    t0 = time.perf_counter()
    mapped = FaissIndex.load(out, verify=False)
    open_mmap = time.perf_counter() - t0
    t0 = time.perf_counter()
    FaissIndex.load(out, verify=False, mmap=False)
    open_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    FaissIndex.load(out)  # the default check on open: sizes + mtimes
    open_checked = time.perf_counter() - t0
    t0 = time.perf_counter()
    read_manifest(out, verify="full")  # what opening cost before: hash every file (now `xmodal verify`)
    verify_full = time.perf_counter() - t0
    q = np.load(files[-1])[:1000]
    mapped.search(q[:5], 10)  # warm-up
    lat = []
    for i in range(200):
        t0 = time.perf_counter()
        mapped.search(q[i:i + 1], 10)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    mapped.search(q, 10)
    qps = len(q) / (time.perf_counter() - t0)
    # 1% adds + 1% removes, then save
    m = max(1, n // 100)
    new = np.load(files[0])[:m] + 0.01
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    before = stored_files(out)
    t0 = time.perf_counter()
    mapped.remove([str(i) for i in rng.choice(n, m, replace=False)])
    mapped.add([f"new-{i}" for i in range(m)], new.astype(np.float32))
    mapped.save(out)
    update = time.perf_counter() - t0
    written = sum(size for name, size in stored_files(out).items() if name not in before)
    t0 = time.perf_counter()
    reopened = FaissIndex.load(out)
    open_after = time.perf_counter() - t0
    reopened.search(q[:5], 10)
    lat2 = []
    for i in range(200):
        t0 = time.perf_counter()
        reopened.search(q[i:i + 1], 10)
        lat2.append(time.perf_counter() - t0)
    compact = float("nan")
    if hasattr(reopened, "compact"):
        t0 = time.perf_counter()
        reopened.compact()
        reopened.save(out)
        compact = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "n": n, "build_s": build, "ram_B": ram, "disk_B": disk, "open_mmap_s": open_mmap,
            "open_read_s": open_read, "open_checked_s": open_checked, "verify_full_s": verify_full,
            "lat_ms": 1000 * float(np.median(lat)), "qps": qps,
            "recall": tuning.recall if tuning else 1.0, "params": tuning.params if tuning else {}, "update_s": update,
            "update_written_MB": written / 2**20, "open_after_update_s": open_after,
            "lat_after_update_ms": 1000 * float(np.median(lat2)), "compact_s": compact,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--sample", type=int, default=500, help="queries used to measure recall while tuning")
    ap.add_argument("--per-shard", type=int, default=50_000)
    ap.add_argument("--work", default=None, help="folder for shards and indexes (default: a temp dir)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--results", default=None,
                    help="append each row as a JSON line to this file (separate runs per size/kind), and print the "
                         "table over every row in it")
    ap.add_argument("--table-only", action="store_true", help="print the table of --results without running")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    rows = []
    if not args.table_only:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            work = Path(tmp)
            for n in sizes:
                sd = work / f"shards-{n}"
                sd.mkdir()
                files = write_shards(sd, n, args.dim, args.per_shard)
                for kind in kinds:
                    r = run_one(kind, files, n, args.dim, work, args.target_recall, args.sample,
                                {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction})
                    rows.append(r)
                    print(f"  {r}", flush=True)
                    if args.results:
                        with open(args.results, "a") as f:
                            f.write(json.dumps(r) + "\n")
                shutil.rmtree(sd)
    if args.results:
        rows = [json.loads(line) for line in open(args.results) if line.strip()]
        sizes = sorted({r["n"] for r in rows})
        kinds = [k for k in ("flat", "hnsw", "ivfpq") if any(r["kind"] == k for r in rows)]
    print(f"\n{args.dim}-d clustered vectors; recall@10 vs exact search at the tuned setting (target {args.target_recall})")
    head = (f"{'kind':<7}{'items':>10}{'build s':>9}{'B/item RAM':>11}{'B/item disk':>12}{'open mmap s':>12}"
            f"{'open read s':>12}{'open chk s':>11}{'full hash s':>12}{'1-query ms':>11}{'batch q/s':>10}"
            f"{'recall@10':>10}{'update s':>9}{'upd MiB':>8}{'reopen s':>9}{'q ms after':>11}{'compact s':>10}"
            f"{'peak RSS MiB':>13}  params")
    print(head)
    for r in rows:
        print(f"{r['kind']:<7}{r['n']:>10,}{r['build_s']:>9.1f}{r['ram_B']:>11.0f}{r['disk_B']:>12.0f}"
              f"{r['open_mmap_s']:>12.3f}{r['open_read_s']:>12.3f}{r.get('open_checked_s', float('nan')):>11.3f}"
              f"{r.get('verify_full_s', float('nan')):>12.3f}{r['lat_ms']:>11.2f}{r['qps']:>10.0f}"
              f"{r['recall']:>10.3f}{r['update_s']:>9.2f}{r.get('update_written_MB', float('nan')):>8.1f}"
              f"{r.get('open_after_update_s', float('nan')):>9.3f}{r.get('lat_after_update_ms', float('nan')):>11.2f}"
              f"{r.get('compact_s', float('nan')):>10.2f}{r.get('peak_rss_MB', float('nan')):>13,.0f}  {r['params']}")
    if len(sizes) > 1:
        a, b = sizes[0], sizes[1]
        print(f"\ngrowth {a:,} -> {b:,} items (x{b / a:g}): ratio of each figure")
        print(f"{'kind':<7}{'build':>8}{'B/item RAM':>11}{'B/item disk':>12}{'open mmap':>10}{'open read':>10}"
              f"{'1-query':>9}{'batch q/s':>10}{'update':>8}")
        for kind in kinds:
            ra = next((r for r in rows if r["kind"] == kind and r["n"] == a), None)
            rb = next((r for r in rows if r["kind"] == kind and r["n"] == b), None)
            if ra is None or rb is None:
                print(f"{kind:<7}  (not measured at both sizes)")
                continue

            def ratio(key: str) -> float:
                return rb[key] / ra[key] if ra[key] else float("nan")

            print(f"{kind:<7}{ratio('build_s'):>8.1f}{ratio('ram_B'):>11.2f}{ratio('disk_B'):>12.2f}"
                  f"{ratio('open_mmap_s'):>10.1f}{ratio('open_read_s'):>10.1f}{ratio('lat_ms'):>9.1f}"
                  f"{ratio('qps'):>10.2f}{ratio('update_s'):>8.1f}")
    print("open chk = FaissIndex.load with the default check (sizes + mtimes); full hash = read_manifest(verify='full'), "
          "what every open cost before; upd MiB = bytes the 1%+1% update's save wrote; reopen/q ms after = open and "
          "single-query latency after that update; compact = compact() + save")
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
