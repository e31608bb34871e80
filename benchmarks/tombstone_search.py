"""Single-query latency after removals: tombstones as a cached position bitmap searched on the wrapped
FAISS index (what FaissIndex does) vs a label selector through IndexIDMap2 (what it did), same run.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/tombstone_search.py
"""
import time, numpy as np, faiss
from xmodal.indexes.faiss_index import FaissIndex
rng = np.random.default_rng(0)
x = rng.standard_normal((50000, 128)).astype("float32")
for kind, opts in (("hnsw", {"hnsw_m": 16, "ef_construction": 40, "ef_search": 64}), ("ivfpq", {"nprobe": 8})):
    idx = FaissIndex(128, kind=kind, **opts)
    idx.add([str(i) for i in range(len(x))], x)
    idx.remove([str(i) for i in range(0, 50000, 100)])
    q = x[:200] + 0.1
    def lat(fn):
        fn(q[:2]); t = []
        for i in range(200):
            t0 = time.perf_counter(); fn(q[i:i+1]); t.append(time.perf_counter() - t0)
        return 1000 * np.median(t)
    new = lat(lambda qq: idx._search_base(qq, 10))
    old = lat(lambda qq: idx._index.search(qq, 10, params=idx._search_params(None)))
    a = idx._search_base(q, 10)[1]; b = idx._index.search(q, 10, params=idx._search_params(None))[1]
    print(kind, f"tombstone bitmap {new:.3f} ms  vs IDMap2 label selector {old:.3f} ms  (x{old/new:.1f}); same ids: {np.mean(a == b):.3f}")
