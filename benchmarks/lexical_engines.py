"""Which BM25 library backs ``xmodal.indexes.lexical``: bm25s vs tantivy, measured side by side in one run.

Both run in the same interpreter (a separate venv holding both, so the project's venv gets no extra
package): build an index of N short captions, apply one collection update (1% removed, 1% added),
query latency, and the size of the saved form. tantivy is incremental (add/delete documents), bm25s
rebuilds its matrix on a change; bm25s saves to plain numpy/json files that ride in an xmodal index
folder's atomic manifest commit, tantivy keeps its own segment directory with its own commit.

    python -m venv /tmp/hybrid-peer && /tmp/hybrid-peer/bin/pip install bm25s==0.3.16 tantivy==0.27 numpy scipy
    flock /tmp/xmodal-bench.lock /tmp/hybrid-peer/bin/python benchmarks/lexical_engines.py --n 20000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    return [" ".join(rng.choices(words, k=12)) + f" code XK{i:06d}" for i in range(n)]


def bench_bm25s(docs: list[str], queries: list[str], upd: int) -> dict[str, float]:
    import bm25s

    out: dict[str, float] = {}
    t = time.perf_counter()
    r = bm25s.BM25()
    r.index(bm25s.tokenize(docs, show_progress=False), show_progress=False)
    out["build_s"] = time.perf_counter() - t
    # an update: bm25s has no add/delete, so the matrix is rebuilt from the (kept) texts
    kept = docs[upd:] + [d + " new" for d in docs[:upd]]
    t = time.perf_counter()
    r = bm25s.BM25()
    r.index(bm25s.tokenize(kept, show_progress=False), show_progress=False)
    out["update_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for q in queries:
        r.retrieve(bm25s.tokenize([q], show_progress=False), k=10, show_progress=False)
    out["query_ms"] = (time.perf_counter() - t) / len(queries) * 1000
    d = Path(tempfile.mkdtemp())
    r.save(d)
    out["saved_mb"] = sum(f.stat().st_size for f in d.iterdir()) / 1e6
    shutil.rmtree(d)
    return out


def bench_tantivy(docs: list[str], queries: list[str], upd: int) -> dict[str, float]:
    import tantivy

    out: dict[str, float] = {}
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("text", stored=False)
    schema = sb.build()
    d = Path(tempfile.mkdtemp())
    index = tantivy.Index(schema, path=str(d))
    t = time.perf_counter()
    w = index.writer(heap_size=50_000_000, num_threads=1)
    for i, text in enumerate(docs):
        w.add_document(tantivy.Document(id=str(i), text=text))
    w.commit()
    w.wait_merging_threads()
    out["build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    w = index.writer(heap_size=50_000_000, num_threads=1)
    for i in range(upd):
        w.delete_documents("id", str(i))
        w.add_document(tantivy.Document(id=f"n{i}", text=docs[i] + " new"))
    w.commit()
    w.wait_merging_threads()
    out["update_s"] = time.perf_counter() - t
    index.reload()
    searcher = index.searcher()
    t = time.perf_counter()
    for q in queries:
        searcher.search(index.parse_query(q, ["text"]), 10)
    out["query_ms"] = (time.perf_counter() - t) / len(queries) * 1000
    out["saved_mb"] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e6
    shutil.rmtree(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    docs = corpus(args.n)
    rng = random.Random(1)
    queries = [f"w{rng.randrange(5000)} w{rng.randrange(5000)} XK{rng.randrange(args.n):06d}" for _ in range(args.queries)]
    upd = max(1, args.n // 100)
    rows = {"bm25s": bench_bm25s(docs, queries, upd), "tantivy": bench_tantivy(docs, queries, upd)}
    print(f"N={args.n} captions, update = {upd} removed + {upd} added, {args.queries} queries (k=10)")
    print(f"{'library':<10}{'build s':>10}{'update s':>10}{'query ms':>10}{'saved MB':>10}")
    for name, r in rows.items():
        print(f"{name:<10}{r['build_s']:>10.2f}{r['update_s']:>10.2f}{r['query_ms']:>10.2f}{r['saved_mb']:>10.1f}")
    b, t = rows["bm25s"], rows["tantivy"]
    print(f"bm25s/tantivy: build {b['build_s'] / t['build_s']:.2f}x, update {b['update_s'] / t['update_s']:.2f}x, "
          f"query {b['query_ms'] / t['query_ms']:.2f}x")


if __name__ == "__main__":
    main()
