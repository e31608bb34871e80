"""Cross-encoders: BLIP ITM parity with transformers, the shared-weight joint model, load_reranker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xmodal import DualEncoder
from xmodal.errors import InvalidInputError, ModelNotFoundError
from xmodal.models.cross import CrossEncoder, load_reranker
from xmodal.models.joint import JointModel
from xmodal.models.tiny_cross import build_tiny_blip, build_tiny_joint

TEXTS = ["a small red circle", "a big blue square", "a green star left of a red circle"]


def imgs():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (30 + 5 * i, 34, 3), dtype=np.uint8)) for i in range(3)]


def test_blip_itm_scores_match_transformers(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

    enc = build_tiny_blip(tmp_path / "blip")
    ours = enc.score(TEXTS, imgs(), batch_size=2)
    model = BlipForImageTextRetrieval.from_pretrained(tmp_path / "blip").eval()
    tok, proc = AutoTokenizer.from_pretrained(tmp_path / "blip"), AutoImageProcessor.from_pretrained(tmp_path / "blip")
    t = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                       pixel_values=proc(images=imgs(), return_tensors="pt")["pixel_values"], use_itm_head=True).itm_score
    ref = (logits[:, 1] - logits[:, 0]).numpy()
    assert np.abs(ours - ref).max() < 1e-5
    # either side may be the query; order of a pair does not change its score
    assert np.abs(enc.score(imgs(), TEXTS) - ours).max() < 1e-6
    ranked = enc.rank(TEXTS[0], imgs(), top_k=2)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]


def test_joint_model_shares_weights_and_round_trips(tmp_path):
    joint = build_tiny_joint(tmp_path / "joint")
    assert isinstance(load_reranker(tmp_path / "joint"), JointModel)
    dual_view = DualEncoder(joint.backbone, model_id="view")
    np.testing.assert_array_equal(joint.encode_text(TEXTS), dual_view.encode_text(TEXTS))
    # the backbone weights are the dual encoder's: loading the folder as a DualEncoder gives the same embeddings
    plain = DualEncoder.from_pretrained(tmp_path / "joint")
    np.testing.assert_allclose(plain.encode_image(imgs()), joint.encode_image(imgs()), atol=1e-6)
    again = JointModel.from_pretrained(tmp_path / "joint")
    np.testing.assert_allclose(again.score(TEXTS, imgs()), joint.score(TEXTS, imgs()), atol=1e-6)
    # one parameter set: a step on the ITM logit moves the towers used for retrieval
    before = joint.encode_text(TEXTS)
    joint.train()
    logit = joint.match_logits(joint.backbone.tokenize(TEXTS), joint.backbone.preprocess(imgs())).sum()
    logit.backward()
    with torch.no_grad():
        for p in joint.backbone.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    assert np.abs(joint.encode_text(TEXTS) - before).max() > 1e-4


def test_bad_pairs_and_missing_models(tmp_path, monkeypatch):
    joint = build_tiny_joint()
    with pytest.raises(InvalidInputError, match="one text and one image"):
        joint.score(["a", "b"], ["c", "d"])
    with pytest.raises(InvalidInputError, match="align"):
        joint.score(["a"], imgs())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="blip-itm"):
        CrossEncoder.from_pretrained("Salesforce/blip-itm-base-coco")
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        load_reranker("./missing-reranker")
