"""FAISS index storage: memory-mapped loading gives identical results, ids/metadata as Arrow columns read lazily,
the older JSON format still opens."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from xmodal import FaissIndex, load_index
from xmodal.indexes.manifest import Manifest, write_manifest


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((30, d))[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


KINDS = {"flat": {}, "hnsw": {"hnsw_m": 8}, "ivfpq": {"nlist": 16, "pq_m": 8, "pq_bits": 6},
         "ivfpq-norefine": {"nlist": 16, "pq_m": 8, "pq_bits": 6, "refine": None}}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_mmap_load_gives_identical_results_and_can_still_change(name, tmp_path):
    x = clustered(2100, 32)
    ids = [f"img/{j}.png" for j in range(2000)]
    index = FaissIndex(32, kind=name.split("-")[0], **KINDS[name])
    index.add(ids, x[:2000], metadata=[{"path": i, "n": j} for j, i in enumerate(ids)])
    index.remove(ids[:50])
    index.save(tmp_path / "idx")
    mapped = load_index(tmp_path / "idx")  # mmap is the default
    read = FaissIndex.load(tmp_path / "idx", mmap=False)
    assert mapped._mmap_path is not None and read._mmap_path is None
    for other in (mapped, read):
        for q in (x[100:130], x[2000:2030]):
            s1, i1 = index.search(q, 10)
            s2, i2 = other.search(q, 10)
            assert i1.tolist() == i2.tolist()
            np.testing.assert_array_equal(s1, s2)
    # opening and searching built no per-item Python objects
    assert mapped._ids_list is None and mapped._label_map is None and mapped._meta_map is None
    assert len(mapped) == 1950 and mapped.metadata("img/60.png") == {"path": "img/60.png", "n": 60}
    assert "img/3.png" not in mapped and "img/70.png" in mapped
    # a change leaves the mapped base as it is (adds go to the delta, removals are tombstones, #20);
    # results match the same change in memory
    for other in (mapped, index):
        other.add([f"new/{j}" for j in range(100)], x[2000:])
        other.remove(ids[50:60])
    assert mapped._mmap_path is not None and len(mapped._delta) == 100
    q = x[1990:2060]
    assert mapped.search(q, 10)[1].tolist() == index.search(q, 10)[1].tolist()
    mapped.save(tmp_path / "idx")  # saving over the folder it was mapped from
    again = load_index(tmp_path / "idx")
    assert again.search(q, 10)[1].tolist() == index.search(q, 10)[1].tolist() and len(again) == len(index)
    again.save(tmp_path / "idx")  # a new version replaces the mapped file's version...
    again.remove(["new/0"])  # ...and a change after that still works (from the mapped bytes)
    index.remove(["new/0"])
    assert again.search(q, 10)[1].tolist() == index.search(q, 10)[1].tolist()


def test_columns_are_arrow_not_json(tmp_path):
    import pyarrow as pa

    index = FaissIndex(8)
    index.add(["a", "b", "c"], clustered(3, 8), metadata=[{"path": "a.png"}, {}, {"path": "c.png"}])
    index.remove(["b"])
    index.save(tmp_path / "idx")
    from xmodal.indexes.manifest import read_manifest

    m = read_manifest(tmp_path / "idx")
    assert set(m.checksums) >= {"ids.arrow", "removed.npy", "index.faiss"} and "ids.json" not in m.checksums
    table = pa.ipc.open_file(pa.memory_map(str(m.path(tmp_path / "idx", "ids.arrow")))).read_all()
    assert table.column("id").to_pylist() == ["a", None, "c"]
    again = load_index(tmp_path / "idx")
    assert again.ids() == ["a", "c"] and again.metadata("c") == {"path": "c.png"} and again.metadata("a") == {"path": "a.png"}


def test_older_json_format_still_opens(tmp_path):
    # an index folder as xmodal wrote it before ids.arrow: ids.json + metadata.jsonl
    x = clustered(20, 8)
    folder = tmp_path / "old"
    folder.mkdir()
    inner = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    inner.add_with_ids(x, np.arange(20, dtype=np.int64))
    inner.remove_ids(faiss.IDSelectorBatch(np.array([3], dtype=np.int64)))
    faiss.write_index(inner, str(folder / "index.faiss"))
    ids = [f"i{j}" for j in range(20)]
    ids[3] = None
    (folder / "ids.json").write_text(json.dumps({"ids": ids, "removed": []}))
    (folder / "metadata.jsonl").write_text(json.dumps({"id": "i5", "meta": {"path": "5.png"}}) + "\n")
    write_manifest(folder, Manifest(engine="faiss", dimension=8, count=19, params={"kind": "flat"}),
                   ["ids.json", "metadata.jsonl", "index.faiss"])
    old = load_index(folder)
    assert len(old) == 19 and old.metadata("i5") == {"path": "5.png"} and "i3" not in old
    assert old.search(x[7], 1)[1][0, 0] == "i7"
    old.save(folder)  # rewritten in the new format
    assert "ids.arrow" in json.loads((folder / "manifest.json").read_text())["checksums"]
    assert load_index(folder).search(x[7], 1)[1][0, 0] == "i7"
