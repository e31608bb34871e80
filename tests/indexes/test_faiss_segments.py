"""Append saves (#20 item 1): a small update writes a segment + tombstones, not the whole index;
appending segments then compacting gives the results of a fresh build; kill -9 during a save (a real
subprocess, killed at every step) leaves the previous version loadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.manifest import read_manifest
from xmodal.indexes.segments import SegmentPolicy

DIM = 16
OPTS = {"flat": {}, "hnsw": {"hnsw_m": 16, "ef_search": 512}, "ivfpq": {"nlist": 4, "pq_m": 4, "pq_bits": 4, "nprobe": 4}}


def vecs(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ranked(index, q, k=10):
    scores, ids = index.search(q, k)
    return ids.tolist(), scores


def stored_names(path):
    return set(read_manifest(path, verify=False).files.values())


def build(kind, items):
    index = FaissIndex(DIM, kind=kind, **OPTS[kind])
    ids = list(items)
    index.add(ids, np.stack([items[i] for i in ids]), metadata=[{"n": len(i) % 7} for i in ids])
    return index


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_appending_segments_then_compacting_gives_a_fresh_builds_results(kind, tmp_path):
    folder = tmp_path / "idx"
    items = dict(zip([f"i{k}" for k in range(400)], vecs(400, 0)))
    build(kind, items).save(folder)
    base_files = {n for n in stored_names(folder) if n.startswith(("index.", "ids."))}
    q = vecs(30, 99)
    for round_ in range(3):  # three small updates, each saved by a fresh process-like load
        index = FaissIndex.load(folder)
        gone = [f"i{k}" for k in range(round_ * 7, round_ * 7 + 7)]
        new = {f"r{round_}-{k}": v for k, v in enumerate(vecs(9, 10 + round_))}
        index.remove(gone)
        index.add(list(new), np.stack(list(new.values())), metadata=[{"n": len(i) % 7} for i in new])
        for g in gone:
            del items[g]
        items.update(new)
        index.save(folder)
        m = read_manifest(folder, verify="full")
        assert len(m.params["segments"]) == round_ + 1 and m.format_version == 2
        assert base_files <= stored_names(folder)  # the base files were kept, not rewritten
        fresh = build(kind, items)
        reopened = FaissIndex.load(folder)
        assert len(reopened) == len(items) and set(reopened.ids()) == set(items)
        assert reopened.metadata(f"r{round_}-3") == {"n": 4} and "i0" not in reopened
        got, s1 = ranked(reopened, q)
        want, s2 = ranked(fresh, q)
        assert got == want
        np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    reopened.compact()
    reopened.save(folder)
    m = read_manifest(folder, verify="full")
    assert "segments" not in m.params and not (base_files & stored_names(folder))  # one new base
    compacted = FaissIndex.load(folder)
    assert compacted._delta is not None and len(compacted._delta) == 0
    got, s1 = ranked(compacted, q)
    want, s2 = ranked(build(kind, items), q)
    assert got == want
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    if kind == "flat":
        assert not compacted._removed  # flat dropped the removed items at compaction


def test_ivfpq_segments_round_trip_what_was_in_memory(tmp_path):
    folder = tmp_path / "idx"
    x = vecs(600, 0)
    index = FaissIndex(DIM, kind="ivfpq", **OPTS["ivfpq"])
    index.add([f"i{k}" for k in range(600)], x)
    index.save(folder)
    index.remove([f"i{k}" for k in range(10)])
    index.add([f"n{k}" for k in range(20)], vecs(20, 5))
    q = vecs(20, 7)
    before = ranked(index, q)
    index.save(folder)
    assert read_manifest(folder, verify=False).params["segments"] == [{"start": 600, "count": 20}]
    again = FaissIndex.load(folder)
    after = ranked(again, q)
    assert after[0] == before[0]
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6)
    again.compact()  # the delta's vectors are encoded into the IVF-PQ (+SQ8 refine) codes
    assert again._delta is None
    top1 = np.mean([a[0] == b[0] for a, b in zip(ranked(again, q)[0], before[0])])
    assert top1 >= 0.9
    again.save(folder)
    assert len(FaissIndex.load(folder)) == 610


def test_update_save_writes_only_the_change(tmp_path):
    folder = tmp_path / "idx"
    index = build("flat", dict(zip([f"i{k}" for k in range(2000)], vecs(2000, 0))))
    index.save(folder)
    full = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    before = stored_names(folder)
    loaded = FaissIndex.load(folder)
    loaded.remove([f"i{k}" for k in range(20)])
    loaded.add([f"n{k}" for k in range(20)], vecs(20, 1))
    assert loaded._mmap_path is not None  # the mapped base was not read into memory
    loaded.save(folder)
    written = sum((folder / n).stat().st_size for n in stored_names(folder) - before)
    assert written < 0.05 * full, (written, full)


def test_compaction_policy_and_foreign_saves(tmp_path):
    folder = tmp_path / "idx"
    build("flat", dict(zip([f"i{k}" for k in range(100)], vecs(100, 0)))).save(folder)
    index = FaissIndex.load(folder)
    index.add([f"n{k}" for k in range(20)], vecs(20, 1))  # 20% of the base > max_delta_fraction 0.1
    index.save(folder)
    assert "segments" not in read_manifest(folder, verify=False).params
    index.add(["x1"], vecs(1, 2))
    index.save(folder)
    assert read_manifest(folder, verify=False).params["segments"] == [{"start": 120, "count": 1}]
    other = FaissIndex.load(folder)  # someone else saves the folder in between
    other.add(["y1"], vecs(1, 3))
    other.save(folder)
    index.add(["x2"], vecs(1, 4))
    index.save(folder)  # the folder is not the version it knows: a full save, nothing of theirs mixed in
    m = read_manifest(folder, verify="full")
    assert "segments" not in m.params and set(FaissIndex.load(folder).ids()) == set(index.ids())
    index.segment_policy = SegmentPolicy(max_segments=2)
    for k in range(3):
        index.add([f"z{k}"], vecs(1, 10 + k))
        index.save(folder)
    assert len(read_manifest(folder, verify=False).params.get("segments", [])) <= 2
    index.segment_policy = SegmentPolicy(append=False)
    index.add(["w"], vecs(1, 20))
    index.save(folder)
    assert "segments" not in read_manifest(folder, verify=False).params


def test_where_and_filter_see_items_in_segments(tmp_path):
    folder = tmp_path / "idx"
    build("hnsw", dict(zip([f"i{k}" for k in range(300)], vecs(300, 0)))).save(folder)
    index = FaissIndex.load(folder)
    new = vecs(5, 3)
    index.add([f"n{k}" for k in range(5)], new, metadata=[{"n": 100 + k} for k in range(5)])
    index.save(folder)
    again = FaissIndex.load(folder)
    assert len(again._delta) == 5
    _, ids = again.search(new[:1], 3, where="n >= 100")
    assert ids[0, 0] == "n0" and set(ids[0]) <= {f"n{k}" for k in range(5)}
    _, ids = again.search(new[:1], 2, filter=["n0", "i1"])
    assert set(ids[0]) == {"n0", "i1"}
    again.remove(["n0"])
    _, ids = again.search(new[:1], 3)
    assert "n0" not in ids[0].tolist()
    np.testing.assert_allclose(again.reconstruct(["n1"])[0], new[1], rtol=1e-6)


def test_a_segment_damaged_on_disk_is_one_clear_error(tmp_path):
    from xmodal.errors import CorruptIndexError

    folder = tmp_path / "idx"
    build("flat", dict(zip([f"i{k}" for k in range(100)], vecs(100, 0)))).save(folder)
    index = FaissIndex.load(folder)
    index.add(["n"], vecs(1, 1))
    index.save(folder)
    m = read_manifest(folder, verify=False)
    m.path(folder, "seg-100.npy").write_bytes(b"junk")
    with pytest.raises(CorruptIndexError, match="seg-100"):
        FaissIndex.load(folder)


# ------------------------------------------------------------------ kill -9 during a save
_CHILD = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from xmodal import io
    from xmodal.indexes.faiss_index import FaissIndex

    folder, kill_at, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    index = FaissIndex.load(folder)
    if mode == "full":
        index.segment_policy.append = False
    index.remove([f"i{k}" for k in range(5)])
    index.add([f"n{k}" for k in range(5)], np.random.default_rng(1).standard_normal((5, 8)).astype("float32"))
    seen = []

    def hook(step):
        seen.append(step)
        print(step, flush=True)
        if len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    io.set_fault_hook(hook)
    index.save(folder)
    print("saved", flush=True)
''')


def _child(folder: Path, kill_at: int, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(kill_at), mode], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["append", "full"])
def test_kill_9_at_every_step_of_a_save_leaves_a_loadable_version(mode, tmp_path):
    """append: killed at every step of an append save; full: at the steps around the commit point
    (every step of a full save is covered in-process by test_save_crash.py)."""
    x = np.random.default_rng(0).standard_normal((60, 8)).astype("float32")
    old_ids = {f"i{k}" for k in range(60)}
    new_ids = (old_ids - {f"i{k}" for k in range(5)}) | {f"n{k}" for k in range(5)}
    first = FaissIndex(8)
    first.add(sorted(old_ids, key=lambda s: int(s[1:])), x)
    probe = tmp_path / "probe"
    first.save(probe)
    if mode == "append":  # the version to update already has a segment
        seeded = FaissIndex.load(probe)
        seeded.add(["s0"], x[:1] + 1)
        seeded.save(probe)
        old_ids = old_ids | {"s0"}
        new_ids = new_ids | {"s0"}
    template = tmp_path / "template"
    import shutil

    shutil.copytree(probe, template)
    dry = _child(probe, 0, mode)  # no kill: list the save's steps
    assert dry.returncode == 0 and dry.stdout.strip().endswith("saved"), dry.stderr
    steps = dry.stdout.split()[:-1]
    assert "folder:committed" in steps and len(steps) >= 5, steps
    if mode == "append":
        assert any(s.startswith("folder:renamed:seg-") for s in steps), steps
    committed = steps.index("folder:committed")
    points = range(1, len(steps) + 1) if mode == "append" else sorted({1, committed, committed + 1})
    outcomes = {}
    for at in points:
        folder = tmp_path / f"run{at}"
        shutil.copytree(template, folder)
        res = _child(folder, at, mode)
        assert res.returncode == -9, (at, res.returncode, res.stderr)  # really killed by SIGKILL
        loaded = FaissIndex.load(folder, verify="full")  # every file matches the manifest
        got = set(loaded.ids())
        assert got in (old_ids, new_ids), (steps[at - 1], sorted(got ^ old_ids))
        outcomes[at] = "new" if got == new_ids else "old"
        # and the survivor can be updated and saved again
        loaded.add(["after"], x[:1] * 2)
        loaded.save(folder)
        assert "after" in FaissIndex.load(folder, verify="full")
    # killed before the commit point (the manifest's rename): the previous version; at or after it: the new one
    assert outcomes == {at: "old" if at <= committed else "new" for at in points}, (steps, outcomes)


def test_l2_metric_segments_rank_like_a_fresh_build(tmp_path):
    folder = tmp_path / "idx"
    x, extra, q = vecs(200, 0) * 3, vecs(10, 1) * 2, vecs(15, 2)
    index = FaissIndex(DIM, metric="l2")
    index.add([f"i{k}" for k in range(200)], x)
    index.save(folder)
    loaded = FaissIndex.load(folder)
    loaded.remove(["i3", "i4"])
    loaded.add([f"n{k}" for k in range(10)], extra)
    loaded.save(folder)
    again = FaissIndex.load(folder)
    fresh = FaissIndex(DIM, metric="l2")
    keep = [k for k in range(200) if k not in (3, 4)]
    fresh.add([f"i{k}" for k in keep] + [f"n{k}" for k in range(10)], np.concatenate([x[keep], extra]))
    got, s1 = ranked(again, q)
    want, s2 = ranked(fresh, q)
    assert got == want
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-4)
