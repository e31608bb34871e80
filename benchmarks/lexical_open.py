"""Cost of opening and updating a LexicalIndex: build, reopen from its saved texts (lexical.json), 1%+1% sync.

    flock /tmp/xmodal-bench.lock python benchmarks/lexical_open.py 100000
"""
import random, time, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
from xmodal.indexes.lexical import LexicalIndex
rng = random.Random(0); words = [f"w{i}" for i in range(5000)]
lex = LexicalIndex(fields=["caption"])
n = int(sys.argv[1])
ids = [f"img/{i:07d}.jpg" for i in range(n)]
texts = [" ".join(rng.choices(words, k=12)) + f" code XK{i:06d}" for i in range(n)]
t = time.perf_counter(); lex.add(ids, texts); lex.search("w1", 10); build = time.perf_counter() - t
data = lex.to_bytes()
t = time.perf_counter(); back = LexicalIndex.from_bytes(data); back.search("w1", 10); opened = time.perf_counter() - t
t = time.perf_counter(); back.sync({**{i: s for i, s in zip(ids[n//100:], texts[n//100:])}, **{f"new{i}": "fresh text" for i in range(n//100)}}); back.search("w1", 10); upd = time.perf_counter() - t
print(f"n={n}: build+commit {build:.2f} s, open (from lexical.json, {len(data)/1e6:.1f} MB) {opened:.2f} s, 1%+1% sync {upd:.2f} s")
