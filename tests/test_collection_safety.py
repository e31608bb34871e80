"""Data safety of `xmodal index` (issue #19): one regression test per defect, named by item number."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from xmodal import io
from xmodal.collection import COLLECTION_FILE, CollectionInfo, build_collection, open_collection, plan_sync
from xmodal.errors import CorruptIndexError, IndexMismatchError, InvalidInputError, XmodalError
from xmodal.indexes import load_index


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def _twin_folders(tmp_path, n=6):
    """Two folders with the same file names (and the same sizes and mtimes) but other pictures."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i in range(n):
        Image.new("RGB", (32, 32), (40 * i % 256, 0, 0)).save(a / f"p{i}.bmp")
        Image.new("RGB", (32, 32), (0, 0, 40 * i % 256)).save(b / f"p{i}.bmp")  # BMP: same size as a's
        st = (a / f"p{i}.bmp").stat()
        os.utime(b / f"p{i}.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    return a, b


def _vectors(folder):
    idx = open_collection(folder).index
    ids = sorted(idx.ids())
    return ids, idx.reconstruct(ids)


# ------------------------------------------------------------------ item 1: two runs on one --out
def test_item1_second_index_run_on_the_same_out_refuses_while_first_runs(tiny_model_dir, tmp_path):
    a, b = _twin_folders(tmp_path)
    out = tmp_path / "out"
    script = textwrap.dedent("""
        import sys
        from xmodal import io
        from xmodal.collection import build_collection
        def pause(step):
            if step == "collection:chunk-saved":
                print("chunk saved", flush=True)
                sys.stdin.readline()  # hold the run here until the test says go
        io.set_fault_hook(pause)
        build_collection(sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=2, show_progress=False, workers=1)
        print("done", flush=True)
    """)
    first = subprocess.Popen([sys.executable, "-c", script, str(a), str(tiny_model_dir), str(out)], env=_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "chunk saved"
        with pytest.raises(XmodalError, match="in use"):
            build_collection(b, str(tiny_model_dir), out, show_progress=False)
        first.stdin.write("\n" * 10)
        first.stdin.flush()
        assert first.stdout.readlines()[-1].strip() == "done"
    finally:
        first.kill()
        first.wait()
    build_collection(a, str(tiny_model_dir), tmp_path / "clean_a", show_progress=False)
    ids, vecs = _vectors(out)
    ids_a, vecs_a = _vectors(tmp_path / "clean_a")
    assert ids == ids_a
    np.testing.assert_allclose(vecs, vecs_a, atol=1e-6)  # every vector is folder a's


def test_item1_chunks_of_another_run_are_never_merged(tiny_model, tmp_path):
    """The issue's race, made deterministic: run A (folder a) leaves resume chunks in --out, then run B
    indexes folder b (same names, sizes, mtimes) into the same --out. B must hold only b's vectors."""
    a, b = _twin_folders(tmp_path)
    out = tmp_path / "out"

    def stop(step):
        if step == "collection:chunk-saved":
            raise KeyboardInterrupt("run A interrupted")

    prev = io.set_fault_hook(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_collection(a, tiny_model, out, chunk_size=3, show_progress=False)
    finally:
        io.set_fault_hook(prev)
    report = build_collection(b, tiny_model, out, show_progress=False)
    assert report.resumed == 0
    build_collection(b, tiny_model, tmp_path / "clean_b", show_progress=False)
    ids, vecs = _vectors(out)
    ids_b, vecs_b = _vectors(tmp_path / "clean_b")
    assert ids == ids_b
    np.testing.assert_allclose(vecs, vecs_b, atol=1e-6)


# ------------------------------------------------------------------ items 2 + 8: the user's folder
def test_item2_out_with_user_files_is_refused_and_untouched(tiny_model, image_folder, tmp_path):
    out = tmp_path / "hf_imagefolder"
    out.mkdir()
    (out / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "a caption"}\n')
    (out / "ids.json").write_text("[1, 2]")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InvalidInputError, match="not an xmodal index"):
        build_collection(image_folder, tiny_model, out, show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_item2_from_embeddings_refuses_a_user_folder(tiny_model, image_folder, tmp_path):
    from xmodal.distributed.encode import encode_collection
    from xmodal.pipelines.index import index_from_embeddings

    emb = tmp_path / "emb"
    encode_collection(image_folder, tiny_model, emb, show_progress=False)
    out = tmp_path / "user"
    out.mkdir()
    (out / "metadata.jsonl").write_text("mine\n")
    with pytest.raises(InvalidInputError, match="not an xmodal index"):
        index_from_embeddings(emb, out)
    with pytest.raises(InvalidInputError, match="not an xmodal index"):
        index_from_embeddings(emb, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["metadata.jsonl"] and (out / "metadata.jsonl").read_text() == "mine\n"
    index_from_embeddings(emb, tmp_path / "fresh")  # an absent folder is fine
    assert len(open_collection(tmp_path / "fresh")) == 12


def test_item8_out_equal_to_the_image_folder_keeps_the_photos(tiny_model, image_folder):
    before = {p: p.read_bytes() for p in image_folder.rglob("*") if p.is_file()}
    with pytest.raises(InvalidInputError):
        build_collection(image_folder, tiny_model, image_folder, show_progress=False)
    assert {p: p.read_bytes() for p in image_folder.rglob("*") if p.is_file()} == before


def test_item8_folder_mode_and_symlinked_out_are_kept(tiny_model, image_folder, tmp_path):
    target = tmp_path / "real_out"
    target.mkdir()
    os.chmod(target, 0o755)
    link = tmp_path / "out_link"
    link.symlink_to(target)
    build_collection(image_folder, tiny_model, link, show_progress=False)
    (image_folder / "img_00_red.png").unlink()
    build_collection(image_folder, tiny_model, link, show_progress=False)  # an update saves again
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (target.stat().st_mode & 0o777) == 0o755
    assert len(open_collection(link)) == 11 and len(open_collection(target)) == 11


# ------------------------------------------------------------------ item 3: same id, other weights
def test_item3_same_model_id_with_other_weights_is_refused(tiny_model, tiny_model_dir, image_folder, tmp_path):
    import torch

    from xmodal import DualEncoder

    build_collection(image_folder, str(tiny_model_dir), tmp_path / "idx", show_progress=False)
    tuned_dir = tmp_path / "tuned"
    tuned = DualEncoder.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        next(iter(tuned.parameters())).add_(0.01)  # "fine-tuned": same model_id, other weights
    tuned.save(tuned_dir)
    tuned = DualEncoder.from_pretrained(tuned_dir)
    assert tuned.model_id == tiny_model.model_id
    col = open_collection(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="other weights"):
        col.retriever(model=tuned)
    with pytest.raises(IndexMismatchError, match="allow-model-mismatch"):
        col.retriever(model=str(tuned_dir))
    before = CollectionInfo.read(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="other weights"):
        build_collection(image_folder, str(tuned_dir), tmp_path / "idx", show_progress=False)
    assert CollectionInfo.read(tmp_path / "idx") == before  # the update did not rewrite the record
    col.retriever(model=tuned, allow_model_mismatch=True)  # the user's explicit override
    col.retriever(model=tiny_model)  # the same weights: accepted


# ------------------------------------------------------------------ item 7: bounded decoded pixels
def test_item7_decoded_images_in_flight_are_bounded_and_downscaled(tiny_model, tmp_path, monkeypatch):
    import xmodal.collection as coll

    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (300, 240), (i * 6, 0, 0)).save(folder / f"{i:02d}.png")
    live = {"now": 0, "max": 0, "sides": set()}
    real_open = coll.open_image

    def counting_open(path, **kw):
        img = real_open(path, **kw)
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        live["sides"].add(min(img.size))
        return img

    class Encoder:
        model_id, embedding_dim = tiny_model.model_id, tiny_model.embedding_dim
        backbone = tiny_model.backbone

        def encode_image(self, images, **kw):
            live["now"] -= len(images)
            return tiny_model.encode_image(images, **kw)

    monkeypatch.setattr(coll, "open_image", counting_open)
    build_collection(folder, Encoder(), tmp_path / "idx", chunk_size=256, batch_size=4, workers=2,
                     show_progress=False)
    assert live["max"] <= 2 * 4, live  # two encoder batches, not the whole 256-image chunk
    assert max(live["sides"]) < 240 // 2 + 1  # reduced right after decoding towards the 30 px input


# ------------------------------------------------------------------ item 11: empty late-interaction index
def test_item11_empty_late_interaction_index_saves_loads_and_updates(tmp_path):
    from xmodal.indexes.multivector import MultiVectorIndex

    MultiVectorIndex(8, nbits=2, model_id="m").save(tmp_path / "idx")
    idx = load_index(tmp_path / "idx")
    assert len(idx) == 0
    rng = np.random.default_rng(0)
    idx.add([f"d{i}" for i in range(20)], [rng.standard_normal((4, 8)).astype("float32") for _ in range(20)])
    idx.save(tmp_path / "idx")
    assert len(load_index(tmp_path / "idx")) == 20


# ------------------------------------------------------------------ item 17: leftovers cleaned up
def test_item17_leftovers_of_crashed_runs_are_removed(tiny_model, image_folder, tmp_path):
    out = tmp_path / "idx"
    build_collection(image_folder, tiny_model, out, show_progress=False)
    (out / ".xmodal-staging-0123456789ab").mkdir()
    (out / ".xmodal-staging-0123456789ab" / "ids.json").write_text("[]")
    (out / ".manifest.json.tmp-1-abcd").write_text("{")
    (out / "ids.v0123456789ab.json").write_text("orphan of a crashed save")
    (out / "notes.txt").write_text("the user's own file")  # not ours: kept
    (image_folder / "new.png").write_bytes((image_folder / "img_00_red.png").read_bytes())
    build_collection(image_folder, tiny_model, out, show_progress=False)
    names = {p.name for p in out.iterdir()}
    assert not {".xmodal-staging-0123456789ab", ".manifest.json.tmp-1-abcd", "ids.v0123456789ab.json", ".build"} & names
    assert "notes.txt" in names
    assert not [n for n in names if ".old-" in n or ".tmp-" in n]


# ------------------------------------------------------------------ item 18: collection.json checksummed
def test_item18_collection_record_is_covered_by_the_manifest(tiny_model, image_folder, tmp_path):
    from xmodal.indexes.manifest import read_manifest

    out = tmp_path / "idx"
    build_collection(image_folder, tiny_model, out, show_progress=False)
    m = read_manifest(out)
    assert COLLECTION_FILE in m.checksums and COLLECTION_FILE in m.companions
    stored = m.path(out, COLLECTION_FILE)
    rec = json.loads(stored.read_text())
    rec["root"] = "/somewhere/else"
    stored.write_text(json.dumps(rec))
    with pytest.raises(CorruptIndexError, match=COLLECTION_FILE):
        open_collection(out)


def test_item18_truncated_collection_record_is_one_clear_error(tiny_model, image_folder, tmp_path):
    out = tmp_path / "idx"
    build_collection(image_folder, tiny_model, out, show_progress=False)
    from xmodal.indexes.manifest import read_manifest

    read_manifest(out).path(out, COLLECTION_FILE).write_text('{"root": "/x", "mod')
    with pytest.raises(CorruptIndexError):
        open_collection(out, verify=False)


def test_engine_level_save_keeps_the_collection_record(tiny_model, image_folder, tmp_path):
    """A later plain ``index.save`` (Python API) must not drop collection.json."""
    out = tmp_path / "idx"
    build_collection(image_folder, tiny_model, out, show_progress=False)
    col = open_collection(out)
    col.index.remove(["img_00_red.png"])
    col.index.save(out)
    again = open_collection(out)
    assert len(again) == 11 and again.root == image_folder.resolve()


# ------------------------------------------------------------------ issue 20: linear update planning
class _Counting(dict):
    ops = 0

    def __getitem__(self, k):
        _Counting.ops += 1
        return super().__getitem__(k)

    def __contains__(self, k):
        _Counting.ops += 1
        return super().__contains__(k)

    def items(self):
        for k in super().keys():
            _Counting.ops += 1
            yield k, super().__getitem__(k)

    def __iter__(self):
        for k in super().keys():
            _Counting.ops += 1
            yield k


def _plan_ops(n: int) -> tuple[int, object]:
    changed = set(range(0, n, 10))  # 10% changed
    current = _Counting({f"f{i}": [i, 1 if i in changed else 0] for i in range(n)})
    indexed = _Counting({f"f{i}": [i, 0] for i in range(n)})
    _Counting.ops = 0
    plan = plan_sync(current, indexed)
    return _Counting.ops, plan


def test_plan_sync_is_linear_for_20000_items_with_10_percent_changed():
    ops, plan = _plan_ops(20_000)
    assert len(plan.changed) == 2_000 and len(plan.unchanged) == 18_000 and not plan.new and not plan.removed
    assert ops <= 6 * 20_000  # a constant number of dict operations per item
    ops2, _ = _plan_ops(40_000)
    assert 1.9 < ops2 / ops < 2.1  # doubling the collection doubles the work


def test_plan_sync_finds_new_changed_removed():
    plan = plan_sync({"a": 1, "b": 2, "c": 3}, {"b": 2, "c": 4, "d": 5})
    assert (plan.new, plan.changed, plan.removed, plan.unchanged) == (["a"], ["c"], ["d"], ["b"])
    assert plan.to_encode == ["a", "c"] and plan.to_remove == ["c", "d"]


# ------------------------------------------------------------------ fault injection over a whole update
def test_crash_at_every_step_of_a_collection_update_keeps_a_loadable_index(tiny_model, image_folder, tmp_path):
    class Crash(BaseException):
        pass

    def update(out, hook):
        prev = io.set_fault_hook(hook)
        try:
            build_collection(image_folder, tiny_model, out, show_progress=False)
        finally:
            io.set_fault_hook(prev)

    build_collection(image_folder, tiny_model, tmp_path / "probe", show_progress=False)
    (image_folder / "img_00_red.png").unlink()
    steps: list[str] = []
    update(tmp_path / "probe", steps.append)
    assert "collection:merged" in steps and "folder:committed" in steps
    shutil.copy(image_folder / "img_01_green.png", image_folder / "img_00_red.png")
    base = tmp_path / "base"
    build_collection(image_folder, tiny_model, base, show_progress=False)
    (image_folder / "img_00_red.png").unlink()
    for n in range(len(steps)):
        out, snap = tmp_path / f"run{n}", tmp_path / f"snap{n}"
        shutil.copytree(base, out, symlinks=True)
        seen: list[str] = []

        def hook(step, out=out, snap=snap, n=n, seen=seen):
            seen.append(step)
            if len(seen) == n + 1:
                shutil.copytree(out, snap, symlinks=True)
                raise Crash(step)

        with pytest.raises(Crash):
            update(out, hook)
        for folder in (snap, out):
            assert len(open_collection(folder)) in (12, 11), seen[-1]
        build_collection(image_folder, tiny_model, out, show_progress=False)  # the rerun completes
        assert len(open_collection(out)) == 11
