"""LateInteractionEncoder and the FLMR-style collection API, plus the CLI engine."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

import xmodal
from xmodal.cli import app
from xmodal.models.late import LateInteractionEncoder


def test_token_and_patch_vectors(tiny_model, tmp_path, image_folder):
    late = LateInteractionEncoder.from_dual(tiny_model, dim=16)
    toks = late.encode_text(["a red circle", "a big blue square left of it"])
    assert [t.shape for t in toks] == [(5, 16), (9, 16)]  # [CLS] words [SEP], no padding
    np.testing.assert_allclose(np.linalg.norm(toks[1], axis=1), 1.0, atol=1e-5)
    patches = late.encode_image([image_folder / "img_00_red.png"] * 2)
    assert patches.shape == (2, 26, 16)  # (30/6)^2 patches + [CLS]
    q = late.encode_query(text="which colour?", image=image_folder / "img_00_red.png")
    question = late.encode_text(["which colour?"])[0]
    assert q.shape == (len(question) + 26, 16)  # question tokens, then patches
    np.testing.assert_allclose(q[: len(question)], question, atol=1e-6)  # same vectors as encoding each part alone
    np.testing.assert_allclose(q[len(question):], patches[0], atol=1e-6)
    np.testing.assert_allclose(late.encode_query(text="which colour?"), question, atol=1e-6)
    np.testing.assert_allclose(late.encode_query(image=image_folder / "img_00_red.png"), patches[0], atol=1e-6)
    late.save(tmp_path / "late")
    again = LateInteractionEncoder.from_pretrained(tmp_path / "late")
    assert again.embedding_dim == 16 and again.model_id == late.model_id
    np.testing.assert_allclose(again.encode_text(["a red circle"])[0], toks[0], atol=1e-6)


def test_index_collection_api(tiny_model, tmp_path, image_folder):
    late = LateInteractionEncoder.from_dual(tiny_model, dim=16)
    docs = ["the eiffel tower is in paris", ("a red picture", image_folder / "img_00_red.png"),
            image_folder / "img_02_blue.png", "a green meadow",
            # the mixed query's exact (text, image) pair, and distractors sharing one half of it
            ("what is this?", image_folder / "img_02_blue.png"), ("what is this?", image_folder / "img_00_red.png"),
            ("what colour is it?", image_folder / "img_02_blue.png"), ("what is this?", None)]
    col = xmodal.index_collection(late, docs, tmp_path / "li", nbits=None, show_progress=False)
    mixed = ("what is this?", image_folder / "img_02_blue.png")
    res = col.search(["the eiffel tower is in paris", mixed], k=len(docs))
    assert res[0].ids[0] == "0" and res[0].metadata[0] == {"text": "the eiffel tower is in paris"}
    assert len(res[1]) == len(docs) and res[1].stage == "late-interaction"
    # exact MaxSim: every query vector finds itself in the identical document (cosine 1), so that document scores
    # the number of query vectors and beats every distractor, including those sharing the text or the image
    qv = late.encode_query(text=mixed[0], image=mixed[1])
    assert res[1].ids[0] == "4"
    assert abs(res[1].scores[0] - len(qv)) < 1e-3 and res[1].scores[1] < res[1].scores[0] - 1e-3
    dv = late.encode_items(docs)
    by_hand = late.similarity([qv], dv)[0]
    np.testing.assert_allclose(sorted(by_hand, reverse=True), res[1].scores, atol=1e-4)
    assert int(np.argmax(by_hand)) == 4
    assert isinstance(xmodal.load_index(tmp_path / "li"), xmodal.indexes.multivector.MultiVectorIndex)


def test_cli_index_and_search_late_interaction(tiny_model_dir, image_folder, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(image_folder), "--model", str(tiny_model_dir), "--out", str(tmp_path / "idx"),
                            "--engine", "late-interaction", "--nbits", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "12 added" in r.stdout
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["engine"] == "late-interaction" and manifest["params"]["nbits"] == 2
    r = runner.invoke(app, ["search", str(tmp_path / "idx"), "--image", str(image_folder / "img_05_orange.png"), "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ids"][0] == "img_05_orange.png"
