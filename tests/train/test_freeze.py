"""Tower locking uses each backbone's own tower parameters: exactly the chosen tower stays unchanged."""

from __future__ import annotations

import pytest
import torch

from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.errors import InvalidInputError
from xmodal.losses import InfoNCELoss
from xmodal.models import DualEncoder
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def splits():
    return generate(n_train=64, n_val=1, n_test=1, n_unseen=1, seed=0)


def tiny_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from xmodal.models.backbones import OpenClipBackbone

    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 30, "layers": 2, "width": 32, "head_width": 16, "patch_size": 6},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    net = open_clip.CLIP(**cfg)
    return DualEncoder(OpenClipBackbone(net, open_clip.SimpleTokenizer(context_length=16),
                                        open_clip.image_transform(30, is_train=False), name="tiny-oc", model_cfg=cfg))


def build(kind, splits):
    if kind == "open_clip":
        return tiny_open_clip()
    if kind == "composed":
        pytest.importorskip("timm")
        from xmodal.models.compose import build_tiny_composed

        return build_tiny_composed(extra_texts=all_caption_texts(splits))
    return build_tiny_model(kind, None, extra_texts=all_caption_texts(splits), seed=0)


def train_few(model, splits, tmp_path, **cfg):
    config = TrainConfig(output_dir=str(tmp_path), max_steps=3, batch_size=16, lr=1e-2, warmup_steps=1,
                         checkpoint_every=100, amp="none", **cfg)
    Trainer(model, InfoNCELoss(model), splits["train"], config).train(resume=False, show_progress=False)


@pytest.mark.parametrize("tower", ["text", "image"])
@pytest.mark.parametrize("kind", ["clip", "siglip", "open_clip", "composed"])
def test_freezing_leaves_exactly_the_chosen_tower_unchanged(kind, tower, splits, tmp_path):
    model = build(kind, splits)
    other = "image" if tower == "text" else "text"
    frozen_ids = {id(p) for p in getattr(model.backbone, f"{tower}_parameters")()}
    other_ids = {id(p) for p in getattr(model.backbone, f"{other}_parameters")()}
    assert frozen_ids and other_ids and not frozen_ids & other_ids
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_few(model, splits, tmp_path, freeze=tower)
    params = dict(model.named_parameters())
    unchanged = {n for n, p in params.items() if torch.equal(before[n], p.detach())}
    frozen = {n for n, p in params.items() if id(p) in frozen_ids}
    trained = {n for n, p in params.items() if id(p) in other_ids}
    assert frozen <= unchanged, sorted(frozen - unchanged)[:5]
    # every weight matrix of the other tower moved (key biases and an unused BERT pooler legitimately get no gradient)
    stuck = [n for n in trained if n in unchanged and params[n].ndim >= 2 and "embedding" not in n and ".pooler." not in n]
    assert not stuck, stuck[:5]


def test_open_clip_text_freeze_no_longer_freezes_the_image_tower(splits, tmp_path):
    """Regression: name fragments ('transformer') froze open_clip's visual.transformer with the text tower."""
    model = tiny_open_clip()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_few(model, splits, tmp_path, freeze="text")
    moved = [n for n, p in model.named_parameters() if "visual.transformer" in n and not torch.equal(before[n], p)]
    assert len(moved) > 10


def test_unlock_last_layer_of_the_locked_tower(splits, tmp_path):
    model = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_few(model, splits, tmp_path, freeze="text", unlock_last=1)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    text = {n for n in before if ".text_model." in n or "text_projection" in n}
    assert any("text_model.encoder.layers.1." in n for n in changed & text)
    assert "backbone.model.text_projection.weight" in changed
    assert not any("text_model.encoder.layers.0." in n or "embeddings" in n for n in changed & text)


def test_bad_freeze_arguments(splits, tmp_path):
    model = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)
    with pytest.raises(InvalidInputError, match="'text' or 'image'"):
        train_few(model, splits, tmp_path, freeze="audio")
    with pytest.raises(InvalidInputError, match="--unlock-last needs --freeze"):
        train_few(model, splits, tmp_path, unlock_last=1)
