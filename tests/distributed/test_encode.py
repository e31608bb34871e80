"""Encoding shards: locally and with Ray started for real (2 CPUs), corrupt shards, resume, index from shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from xmodal.distributed import encode_collection, read_embedding_shards
from xmodal.distributed.embeddings import build_from_embeddings
from xmodal.indexes.autoindex import choose_index


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def shards(tmp_path):
    """Three good shards (one holding a corrupt image) and one shard that is not a tar at all."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray"]
    for s in range(3):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
            for j, c in enumerate(colours[3 * s:3 * s + 3]):
                data = png(c)
                info = tarfile.TarInfo(f"{c}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            if s == 1:
                info = tarfile.TarInfo("broken.jpg")
                info.size = 9
                tar.addfile(info, io.BytesIO(b"not a jpg"))
    (tmp_path / "shard-003.tar").write_bytes(b"this is not a tar file")
    return str(tmp_path / "shard-*.tar")


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def check_outputs(out, tiny_model):
    ids, vecs = zip(*read_embedding_shards(out))
    ids = [i for part in ids for i in part]
    vecs = np.concatenate(vecs)
    assert sorted(ids) == sorted(["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray"])
    red = tiny_model.encode_image([Image.new("RGB", (32, 32), "red")])[0]
    np.testing.assert_allclose(vecs[ids.index("red")], red, atol=1e-5)


def test_local_engine_reports_failures_and_resumes(shards, tiny_model, tmp_path):
    out = tmp_path / "emb"
    report = encode_collection(shards, tiny_model, out, executor="local", show_progress=False)
    assert (report.shards_total, report.shards_done) == (4, 3)
    assert [f["shard"] for f in report.shards_failed] == ["shard-003"] and "not a readable tar" in report.shards_failed[0]["error"]
    assert report.images_encoded == 9 and [f["id"] for f in report.images_failed] == ["broken"]
    check_outputs(out, tiny_model)
    again = encode_collection(shards, tiny_model, out, executor="local", show_progress=False)
    assert again.shards_skipped == 3 and again.shards_done == 0 and len(again.shards_failed) == 1  # retried, still bad
    saved = json.loads((out / "_report.json").read_text())
    assert saved["shards_failed"][0]["shard"] == "shard-003" and len(saved["earlier_runs"]) == 1


def test_ray_engine_matches_local(shards, tiny_model_dir, tiny_model, tmp_path, ray_session):
    out = tmp_path / "emb-ray"
    report = encode_collection(shards, str(tiny_model_dir), out, executor="ray", num_actors=2, show_progress=False)
    assert report.shards_done == 3 and len(report.shards_failed) == 1 and report.images_encoded == 9
    assert len(report.images_failed) == 1
    check_outputs(out, tiny_model)


def test_ray_engine_writes_multi_vector_shards(image_folder, tiny_model_dir, tmp_path, ray_session):
    from xmodal.models.late import LateInteractionEncoder

    out = tmp_path / "emb-late"
    report = encode_collection(image_folder, str(tiny_model_dir), out, executor="ray", num_actors=2, images_per_shard=5,
                               late_interaction=True, show_progress=False)
    assert report.shards_done == 3 and report.images_encoded == 12 and [f["id"] for f in report.images_failed] == ["broken.jpg"]
    late = LateInteractionEncoder.from_pretrained(tiny_model_dir)  # what each actor loaded
    saved = json.loads((out / "_report.json").read_text())
    assert saved["late_interaction"] is True and saved["model_id"] == late.model_id
    ids, docs = zip(*read_embedding_shards(out))
    ids, docs = [i for part in ids for i in part], [d for part in docs for d in part]
    assert sorted(ids) == sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    np.testing.assert_allclose(docs[ids.index("sub/img_10_brown.png")],
                               late.encode_image([image_folder / "sub/img_10_brown.png"])[0], atol=1e-5)


def test_folder_source_and_index_from_embeddings(image_folder, tiny_model, tmp_path):
    out = tmp_path / "emb"
    report = encode_collection(image_folder, tiny_model, out, images_per_shard=5, show_progress=False)
    assert report.shards_total == 3 and report.images_encoded == 12 and len(report.images_failed) == 1
    index, choice = build_from_embeddings(out, tmp_path / "idx", model_id=tiny_model.model_id)
    assert choice.kind == "flat" and len(index) == 12
    q = tiny_model.encode_image([image_folder / "img_03_yellow.png"])
    assert index.search(q, 1)[1][0][0] == "img_03_yellow.png"


def test_index_choice_follows_size_and_budget():
    assert choose_index(50_000, 512, 4 << 30).kind == "flat"
    assert choose_index(5_000_000, 512, 16 << 30).kind == "hnsw"
    small = choose_index(10_000_000, 512, 8 << 30)
    assert small.kind == "ivfpq" and small.estimated_bytes <= 8 << 30 and "budget" in small.reason


def test_ivfpq_from_shards_streams(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32))
    for s in range(4):
        v = centres[rng.integers(0, 50, 1500)] + 0.3 * rng.standard_normal((1500, 32))
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        pq.write_table(pa.table({"id": [f"{s}-{i}" for i in range(1500)],
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 32)}), tmp_path / f"p{s}.parquet")
    index, choice = build_from_embeddings(tmp_path, tmp_path / "idx", memory_budget_mb=0.5)
    assert choice.kind == "ivfpq" and len(index) == 6000
