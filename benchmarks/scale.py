"""Scale benchmark: FAISS flat / HNSW / IVF-PQ indexes built from embedding shards, at growing sizes.

Random clustered vectors (no model) are written as ``.npy`` shards, then built the way
``xmodal index --from-embeddings`` builds (``indexes.autoindex.build_faiss``: streamed shard by shard into
storage reserved for the count, IVF-PQ trained on a sample drawn from every shard, HNSW/IVF-PQ tuned to
``--target-recall`` against exact search over the shards), saved, reopened, queried and updated. The
kinds are forced, with a user's defaults otherwise (HNSW M=32, efConstruction=200; IVF-PQ 4*sqrt(n) lists,
d/4 PQ bytes, SQ8 refine). Per size and kind it prints: build time (incl. tuning), bytes per item on disk
and in RAM (RSS growth while building), open time (memory-mapped and read), single-query latency (median),
batch throughput, recall@10 at the tuned setting, the time to apply 1% adds + 1% removes and save, and
peak RSS per phase (the kernel's high-water mark, reset before each phase): xmodal's build, update and
compaction, apart from the benchmark's own shard generation; then each figure's growth between the
first two sizes as a ratio (x10 items -> ~x10 for linear costs, ~x1 for per-query costs of HNSW).

    nice python benchmarks/scale.py --sizes 100000,1000000 --dim 512      # ~2 GB per 1M float32 vectors
    OMP_NUM_THREADS=1 nice python benchmarks/scale.py --sizes 10000,100000 --kinds flat,hnsw,ivfpq
    python benchmarks/scale.py --results rows.jsonl --table-only           # one table over separate runs
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import faiss

from xmodal.indexes.autoindex import build_faiss, choose_index
from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.manifest import read_manifest


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


class Peak:
    """Peak RSS (MiB) of a phase: the kernel's high-water mark (VmHWM), reset at the start through
    /proc/self/clear_refs (Linux). ``overall`` keeps the process peak across resets."""

    overall = 0.0

    def __enter__(self) -> "Peak":
        Peak.overall = max(Peak.overall, _status_mb("VmHWM"))
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:  # not Linux: the peaks are the process's so far
            pass
        self.start = rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status_mb("VmHWM")
        Peak.overall = max(Peak.overall, self.peak)


def write_shards(folder: Path, n: int, dim: int, per_shard: int, seed: int = 0) -> list[Path]:
    """Clustered unit vectors (2,000 centres, noise as large as the centre) in ``.npy`` shards."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    files = []
    for s in range(0, n, per_shard):
        m = min(per_shard, n - s)
        x = centres[rng.integers(0, 2000, m)]
        x += rng.standard_normal((m, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        files.append(folder / f"part-{s // per_shard:05d}.npy")
        np.save(files[-1], x)
    return files


def shards(files: list[Path]):
    """What ``xmodal.distributed.encode.iter_embedding_shards`` yields: (ids, vectors, signatures) per shard."""
    def it():
        start = 0
        for f in files:
            x = np.load(f)
            yield [str(i) for i in range(start, start + len(x))], x, None
            start += len(x)
    return it


class Info:
    def __init__(self, n: int, dim: int) -> None:
        self.count, self.dim, self.tokens = n, dim, n


def single_queries(index: FaissIndex, q: np.ndarray, most: int = 200, budget_s: float = 30.0) -> list[float]:
    """Seconds per single query: ``most`` queries, or fewer (at least 5) once ``budget_s`` is spent (flat at 5M)."""
    lat: list[float] = []
    for i in range(most):
        t0 = time.perf_counter()
        index.search(q[i:i + 1], 10)
        lat.append(time.perf_counter() - t0)
        if i >= 4 and sum(lat) > budget_s:
            break
    return lat


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def stored_files(folder: Path) -> dict[str, int]:
    m = read_manifest(folder, verify=False)
    return {m.files.get(name, name): m.path(folder, name).stat().st_size for name in m.checksums}


def run_one(kind: str, files: list[Path], n: int, dim: int, work: Path, target: float, sample: int,
            gen_peak: float) -> dict:
    rng = np.random.default_rng(1)
    gc.collect()
    with Peak() as build_mem:
        t0 = time.perf_counter()
        # build_faiss as `xmodal index --from-embeddings --kind KIND` calls it; its tuning step is timed apart
        index, choice = build_faiss(shards(files), Info(n, dim), work, kind=kind, memory_budget_bytes=1 << 50,
                                    target_recall=None)
        build = time.perf_counter() - t0
        ram = (rss_mb() - build_mem.start) * 2**20 / n
    p = index.params
    index_params = ({"hnsw_m": p["hnsw_m"], "ef_construction": p["ef_construction"]} if kind == "hnsw" else
                    {"nlist": p["nlist"], "pq_m": p["pq_m"], "refine": p["refine"]} if kind == "ivfpq" else {})
    tuning = None
    with Peak() as tune_mem:  # exact ground truth over the shards + the search-setting grid (xmodal's tune)
        t0 = time.perf_counter()
        if kind != "flat":
            tuning = index.tune(target, sample=sample, source=lambda: ((i, v) for i, v, _ in shards(files)()))
        tune = time.perf_counter() - t0
    out = work / f"{kind}-{n}"
    index.save(out)
    disk = folder_bytes(out) / n
    del index
    gc.collect()
    t0 = time.perf_counter()
    read = FaissIndex.load(out, verify=False, mmap=False)
    open_read = time.perf_counter() - t0
    del read  # one opened copy at a time: the process peak is then what a user's process holds
    gc.collect()
    t0 = time.perf_counter()
    FaissIndex.load(out)  # the default check on open: sizes + mtimes
    open_checked = time.perf_counter() - t0
    t0 = time.perf_counter()
    read_manifest(out, verify="full")  # what opening cost before: hash every file (now `xmodal verify`)
    verify_full = time.perf_counter() - t0
    gc.collect()
    search_mem = Peak().__enter__()
    t0 = time.perf_counter()
    mapped = FaissIndex.load(out, verify=False)
    open_mmap = time.perf_counter() - t0
    q = np.load(files[-1])[:1000]
    mapped.search(q[:5], 10)  # warm-up
    lat = single_queries(mapped, q)
    t0 = time.perf_counter()
    nb = len(q) if lat[len(lat) // 2] < 0.05 else 100  # exact search over millions: fewer batch queries
    mapped.search(q[:nb], 10)
    qps = nb / (time.perf_counter() - t0)
    search_mem.__exit__()
    # 1% adds + 1% removes, then save
    m = max(1, n // 100)
    new = np.load(files[0])[:m] + 0.01
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    before = stored_files(out)
    with Peak() as update_mem:
        t0 = time.perf_counter()
        mapped.remove([str(i) for i in rng.choice(n, m, replace=False)])
        mapped.add([f"new-{i}" for i in range(m)], new.astype(np.float32))
        mapped.save(out)
        update = time.perf_counter() - t0
    written = sum(size for name, size in stored_files(out).items() if name not in before)
    del mapped  # what a user would hold: the reopened version
    gc.collect()
    t0 = time.perf_counter()
    reopened = FaissIndex.load(out)
    open_after = time.perf_counter() - t0
    reopened.search(q[:5], 10)
    lat2 = single_queries(reopened, q)
    with Peak() as compact_mem:
        t0 = time.perf_counter()
        reopened.compact()
        reopened.save(out)
        compact = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "n": n, "build_s": build, "tune_s": tune, "ram_B": ram, "disk_B": disk, "open_mmap_s": open_mmap,
            "open_read_s": open_read, "open_checked_s": open_checked, "verify_full_s": verify_full,
            "lat_ms": 1000 * float(np.median(lat)), "lat_n": len(lat), "qps": qps,
            "recall": tuning.recall if tuning else 1.0, "params": tuning.params if tuning else {}, "update_s": update,
            "update_written_MB": written / 2**20, "open_after_update_s": open_after,
            "lat_after_update_ms": 1000 * float(np.median(lat2)), "compact_s": compact,
            "peak_build_MB": build_mem.peak, "build_growth_MB": build_mem.peak - build_mem.start, "peak_tune_MB": tune_mem.peak, "peak_search_MB": search_mem.peak, "peak_update_MB": update_mem.peak, "peak_compact_MB": compact_mem.peak,
            "peak_shards_MB": gen_peak, "peak_rss_MB": Peak.overall, "vectors_MB": n * dim * 4 / 2**20,
            "threads": faiss.omp_get_max_threads(), "index": {k: v for k, v in index_params.items() if v is not None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--sample", type=int, default=1000, help="queries used to measure recall while tuning")
    ap.add_argument("--per-shard", type=int, default=50_000)
    ap.add_argument("--work", default=None, help="folder for shards and indexes (default: a temp dir)")
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
                with Peak() as gen_mem:
                    files = write_shards(sd, n, args.dim, args.per_shard)
                auto = choose_index(n, args.dim, 4096 * 2**20)
                print(f"{n:,} x {args.dim}: `xmodal index --from-embeddings` (4096 MiB budget) would choose {auto.describe()}",
                      flush=True)
                for kind in kinds:
                    r = run_one(kind, files, n, args.dim, work, args.target_recall, args.sample, gen_mem.peak)
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
    rows.sort(key=lambda r: (("flat", "hnsw", "ivfpq").index(r["kind"]), r["n"]))
    print_tables(rows, sizes, kinds, args.dim, args.target_recall)


def _f(r: dict, key: str, fmt: str, width: int) -> str:
    v = r.get(key)
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"


def print_tables(rows: list[dict], sizes: list[int], kinds: list[str], dim: int, target: float) -> None:
    print(f"\n{dim}-d clustered vectors; recall@10 vs exact search at the tuned setting (target {target})")
    print(f"{'kind':<7}{'items':>10}{'build s':>9}{'tune s':>8}{'B/item RAM':>11}{'B/item disk':>12}{'open mmap s':>12}"
          f"{'open read s':>12}{'open chk s':>11}{'full hash s':>12}{'1-query ms':>11}{'batch q/s':>10}"
          f"{'recall@10':>10}{'update s':>9}{'upd MiB':>8}{'reopen s':>9}{'q ms after':>11}{'compact s':>10}  index / tuned params")
    for r in rows:
        print(f"{r['kind']:<7}{r['n']:>10,}{_f(r, 'build_s', '.1f', 9)}{_f(r, 'tune_s', '.1f', 8)}{_f(r, 'ram_B', '.0f', 11)}"
              f"{_f(r, 'disk_B', '.0f', 12)}{_f(r, 'open_mmap_s', '.3f', 12)}{_f(r, 'open_read_s', '.3f', 12)}"
              f"{_f(r, 'open_checked_s', '.3f', 11)}{_f(r, 'verify_full_s', '.3f', 12)}{_f(r, 'lat_ms', '.2f', 11)}"
              f"{_f(r, 'qps', '.0f', 10)}{_f(r, 'recall', '.3f', 10)}{_f(r, 'update_s', '.2f', 9)}"
              f"{_f(r, 'update_written_MB', '.1f', 8)}{_f(r, 'open_after_update_s', '.3f', 9)}"
              f"{_f(r, 'lat_after_update_ms', '.2f', 11)}{_f(r, 'compact_s', '.2f', 10)}  {r.get('index', '')} {r['params']}")
    print("build = build_faiss streaming the shards (IVF-PQ: + training); tune = exact ground truth over the shards + "
          "search-setting grid; open chk = FaissIndex.load with the default check (sizes + mtimes); full hash = "
          "read_manifest(verify='full'); upd MiB = bytes the 1%+1% update's save wrote; reopen/q ms after = open and "
          "single-query latency after that update; compact = compact() + save")
    print(f"\npeak RSS per phase (MiB; kernel high-water mark reset before each phase; vectors = n x d float32)")
    print(f"{'kind':<7}{'items':>10}{'vectors':>9}{'shard gen':>10}{'build':>8}{'build +':>9}{'+/vectors':>10}"
          f"{'tune':>8}{'search':>8}{'update':>8}{'compact':>8}{'process':>9}")
    for r in rows:
        vec, grow = r.get("vectors_MB"), r.get("build_growth_MB")
        rel = grow / vec if vec and grow is not None else None
        print(f"{r['kind']:<7}{r['n']:>10,}{_f(r, 'vectors_MB', ',.0f', 9)}{_f(r, 'peak_shards_MB', ',.0f', 10)}"
              f"{_f(r, 'peak_build_MB', ',.0f', 8)}{_f(r, 'build_growth_MB', ',.0f', 9)}"
              f"{'-' if rel is None else format(rel, '.2f'):>10}{_f(r, 'peak_tune_MB', ',.0f', 8)}{_f(r, 'peak_search_MB', ',.0f', 8)}"
              f"{_f(r, 'peak_update_MB', ',.0f', 8)}{_f(r, 'peak_compact_MB', ',.0f', 8)}{_f(r, 'peak_rss_MB', ',.0f', 9)}")
    print("shard gen = the benchmark's own (writing the random shards); build/tune/update/compact = xmodal's "
          "(absolute peaks, the imports' ~150 MiB included; search = open mmap + queries, the mapped pages count); build + = build peak - RSS before it (+/vectors: that over "
          "the float32 vectors' size); process = the whole run's peak (includes the mapped index pages while searching)")
    if len(sizes) > 1:
        a, b = sizes[0], sizes[1]
        print(f"\ngrowth {a:,} -> {b:,} items (x{b / a:g}): ratio of each figure")
        print(f"{'kind':<7}{'build':>8}{'tune':>8}{'B/item RAM':>11}{'B/item disk':>12}{'open mmap':>10}{'open read':>10}"
              f"{'1-query':>9}{'batch q/s':>10}{'update':>8}{'compact':>8}{'peak build':>11}")
        for kind in kinds:
            ra = next((r for r in rows if r["kind"] == kind and r["n"] == a), None)
            rb = next((r for r in rows if r["kind"] == kind and r["n"] == b), None)
            if ra is None or rb is None:
                print(f"{kind:<7}  (not measured at both sizes)")
                continue

            def ratio(key: str) -> float:
                return rb[key] / ra[key] if ra.get(key) and rb.get(key) is not None else float("nan")

            print(f"{kind:<7}{ratio('build_s'):>8.1f}{ratio('tune_s'):>8.1f}{ratio('ram_B'):>11.2f}{ratio('disk_B'):>12.2f}"
                  f"{ratio('open_mmap_s'):>10.1f}{ratio('open_read_s'):>10.1f}{ratio('lat_ms'):>9.1f}"
                  f"{ratio('qps'):>10.2f}{ratio('update_s'):>8.1f}{ratio('compact_s'):>8.1f}{ratio('peak_build_MB'):>11.1f}")

if __name__ == "__main__":
    main()
