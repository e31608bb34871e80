"""`xmodal encode` -> `xmodal index --from-embeddings` (faiss, milvus, late-interaction) -> `xmodal search`,
`xmodal index-embeddings`, and the errors of the index verb."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.errors import InvalidInputError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_encode_then_index_from_embeddings_then_search_and_update(tiny_model_dir, image_folder, tmp_path):
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    r = invoke("encode", "--input", image_folder, "--model", tiny_model_dir, "--out", emb, "--images-per-shard", 5)
    assert r.exit_code == 0, r.output
    assert "12 images encoded, 1 unreadable" in r.stdout
    r = invoke("index", "--from-embeddings", emb, "--out", idx)
    assert r.exit_code == 0, r.output
    assert "12 items, engine=faiss, index flat" in r.stdout and "exact search" in r.stdout
    r = invoke("search", idx, "--image", image_folder / "img_04_purple.png", "-k", 2, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ids"][0] == "img_04_purple.png"
    Image.new("RGB", (33, 33), "navy").save(image_folder / "new.png")
    r = invoke("index", image_folder, "--out", idx, "-q")  # model and engine taken from the index
    assert r.exit_code == 0, r.output
    assert "1 added, 0 removed, 12 unchanged" in r.stdout
    r = invoke("index", "--from-embeddings", emb, "--out", idx)
    assert isinstance(r.exception, InvalidInputError) and "--overwrite" in str(r.exception)
    r = invoke("index-embeddings", emb, "--out", idx, "--overwrite", "--kind", "hnsw")  # the older verb still works
    assert r.exit_code == 0, r.output
    assert "12 items, engine=faiss, index hnsw" in r.stdout
    params = json.loads((idx / "manifest.json").read_text())["params"]
    assert params["kind"] == "hnsw" and params["tuning"]["target_recall"] == 0.95  # ANN kinds: tuned by default
    assert "search settings: recall@10 1.000" in r.stdout and "meets the target 0.950" in r.stdout
    r = invoke("search", idx, "--image", image_folder / "img_04_purple.png", "-k", 2)
    assert r.exit_code == 0 and "index hnsw: recall@10 1.000" in r.stdout, r.output
    r = invoke("index", "--from-embeddings", emb, "--out", idx, "--overwrite", "--kind", "hnsw", "--target-recall", 0)
    assert r.exit_code == 0 and "search settings" not in r.stdout, r.output


def test_milvus_and_late_interaction_from_embeddings(tiny_model_dir, image_folder, tmp_path):
    pytest.importorskip("pymilvus")
    emb = tmp_path / "emb"
    assert invoke("encode", "-i", image_folder, "-m", tiny_model_dir, "-o", emb).exit_code == 0
    r = invoke("index", "--from-embeddings", emb, "--out", tmp_path / "mil", "--engine", "milvus", "--memory-budget-mb", 1)
    assert r.exit_code == 0, r.output
    assert "engine=milvus, index flat index_type=FLAT" in r.stdout
    r = invoke("search", tmp_path / "mil", "--image", image_folder / "img_02_blue.png", "-k", 1, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ids"] == ["img_02_blue.png"]

    late = tmp_path / "emb-late"
    r = invoke("encode", "-i", image_folder, "-m", tiny_model_dir, "-o", late, "--late-interaction")
    assert r.exit_code == 0, r.output
    r = invoke("index", "--from-embeddings", late, "--out", tmp_path / "li", "--engine", "faiss")
    assert isinstance(r.exception, InvalidInputError) and "late-interaction" in str(r.exception)
    r = invoke("index", "--from-embeddings", late, "--out", tmp_path / "li")  # engine follows the shards
    assert r.exit_code == 0, r.output
    assert "engine=late-interaction, index late-interaction nbits=2" in r.stdout
    r = invoke("search", tmp_path / "li", "--image", image_folder / "img_06_white.png", "-k", 1, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ids"] == ["img_06_white.png"]
    # updating it needs no --engine: the index's engine decides how the model is loaded (patch vectors)
    r = invoke("index", image_folder, "--out", tmp_path / "li", "-q")
    assert r.exit_code == 0, r.output
    assert "0 added, 0 removed, 12 unchanged" in r.stdout


def test_index_needs_exactly_one_source(image_folder, tmp_path):
    for args in (("index", "--out", tmp_path / "i"),
                 ("index", image_folder, "--from-embeddings", tmp_path, "--out", tmp_path / "i")):
        r = invoke(*args)
        assert isinstance(r.exception, InvalidInputError) and "one of the two" in str(r.exception)


def test_index_from_embeddings_takes_refine_for_ivfpq_only(tmp_path):
    """`--refine` reaches an IVF-PQ index built from shards (it was only taken for image folders) and is saved in the
    manifest; it is refused in one line for HNSW and for unknown codes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    (tmp_path / "emb").mkdir()
    for s in range(3):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[s * 1000:(s + 1) * 1000].ravel()), 32)
        pq.write_table(pa.table({"id": [f"{s}-{j}" for j in range(1000)], "embedding": emb}),
                       tmp_path / "emb" / f"part-{s:05d}.parquet")
    r = invoke("index", "--from-embeddings", tmp_path / "emb", "--out", tmp_path / "ivf", "--kind", "ivfpq",
               "--refine", "fp16", "--target-recall", 0)
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "ivf" / "manifest.json").read_text())["params"]
    assert params["kind"] == "ivfpq" and params["refine"] == "fp16"
    r = invoke("index-embeddings", tmp_path / "emb", "--out", tmp_path / "none", "--kind", "ivfpq", "--refine", "none",
               "--target-recall", 0)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "none" / "manifest.json").read_text())["params"]["refine"] is None
    for args, message in ((("--kind", "hnsw", "--refine", "fp16"), "--refine applies to --kind ivfpq"),
                          (("--kind", "ivfpq", "--refine", "int4"), "unknown refine 'int4'")):
        r = invoke("index", "--from-embeddings", tmp_path / "emb", "--out", tmp_path / "bad", *args)
        assert isinstance(r.exception, InvalidInputError) and message in str(r.exception), r.output
        assert not (tmp_path / "bad" / "manifest.json").exists()
