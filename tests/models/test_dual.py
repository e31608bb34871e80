"""DualEncoder: parity with calling transformers directly, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xmodal import DualEncoder, build_tiny_model
from xmodal.errors import InvalidInputError, ModelNotFoundError

TEXTS = ["a small red circle", "a big blue square left of a green star", "一个红色的圆", "ein roter kreis"]


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (30 + 7 * i, 40, 3), dtype=np.uint8)) for i in range(3)]


@pytest.mark.parametrize("arch", ["clip", "siglip", "chinese_clip"])
def test_embeddings_match_transformers_exactly(arch, tmp_path):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    build_tiny_model(arch, tmp_path / arch)
    model = DualEncoder.from_pretrained(tmp_path / arch)
    ours_t, ours_i = model.encode_text(TEXTS, batch_size=3), model.encode_image(images(), batch_size=2)

    # The reference: transformers used the way its docs show, on the same folder.
    ref = AutoModel.from_pretrained(tmp_path / arch).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / arch)
    proc = AutoImageProcessor.from_pretrained(tmp_path / arch)
    padding = "max_length" if arch == "siglip" else True
    enc = tok(TEXTS, padding=padding, truncation=True, max_length=32, return_tensors="pt")
    enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        t = ref.get_text_features(**enc)
        i = ref.get_image_features(pixel_values=proc(images=images(), return_tensors="pt")["pixel_values"])
    t = getattr(t, "pooler_output", t)
    i = getattr(i, "pooler_output", i)
    ref_t = torch.nn.functional.normalize(t, dim=-1).numpy()
    ref_i = torch.nn.functional.normalize(i, dim=-1).numpy()
    assert ours_t.shape == (4, model.embedding_dim) and ours_i.shape == (3, model.embedding_dim)
    assert np.abs(ours_t - ref_t).max() < 1e-5
    assert np.abs(ours_i - ref_i).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours_t, axis=1), 1.0, atol=1e-5)
    # distinct texts give distinct embeddings (pooling at the right token)
    assert np.abs(ours_t[0] - ours_t[1]).max() > 1e-3


def test_order_is_deterministic_across_batch_sizes(tiny_model):
    a = tiny_model.encode_text(TEXTS, batch_size=1)
    b = tiny_model.encode_text(TEXTS[::-1], batch_size=4)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    sims = tiny_model.similarity(a, tiny_model.encode_image(images()))
    assert sims.shape == (4, 3)


def test_images_from_paths_and_bytes(tiny_model, tmp_path):
    img = images()[0]
    img.save(tmp_path / "x.png")
    vecs = tiny_model.encode_image([img, tmp_path / "x.png", str(tmp_path / "x.png"), (tmp_path / "x.png").read_bytes()])
    assert np.abs(vecs - vecs[0]).max() < 1e-5


def test_save_and_reload_keeps_embeddings(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "copy")
    assert {"config.json", "model.safetensors", "xmodal.json"} <= {p.name for p in (tmp_path / "copy").iterdir()}
    again = DualEncoder.from_pretrained(tmp_path / "copy")
    assert again.model_id == tiny_model.model_id
    np.testing.assert_allclose(again.encode_text(TEXTS), tiny_model.encode_text(TEXTS), atol=1e-6)


def test_dtype_option(tiny_model_dir):
    half = DualEncoder.from_pretrained(tiny_model_dir, dtype="bfloat16")
    full = DualEncoder.from_pretrained(tiny_model_dir)
    assert half.dtype == torch.bfloat16
    v = half.encode_text(TEXTS)
    assert v.dtype == np.float32 and np.abs(v - full.encode_text(TEXTS)).max() < 0.1


def test_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(InvalidInputError, match="empty"):
        tiny_model.encode_text(["ok", "  "])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InvalidInputError, match="bad.jpg"):
        tiny_model.encode_image([tmp_path / "bad.jpg"])
    with pytest.raises(InvalidInputError, match="not found"):
        tiny_model.encode_image([tmp_path / "missing.png"])


def test_missing_models_fail_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        DualEncoder.from_pretrained("openai/clip-vit-base-patch32")
    msg = str(e.value)
    assert "openai/clip-vit-base-patch32" in msg and "huggingface-cli download" in msg
    with pytest.raises(ModelNotFoundError, match="no such local folder"):
        DualEncoder.from_pretrained("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no model"):
        DualEncoder.from_pretrained(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="no architecture"):
        DualEncoder.from_pretrained("open_clip:NotAnArch-99")


def test_open_clip_folder_round_trip_matches_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from xmodal.models.backbones import OpenClipBackbone

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 30, "layers": 2, "width": 32, "head_width": 16, "patch_size": 6},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    torch.manual_seed(0)
    net = open_clip.CLIP(**cfg).eval()
    transform = open_clip.image_transform(30, is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    DualEncoder(OpenClipBackbone(net, tokenizer, transform, name="tiny-open-clip", model_cfg=cfg)).save(tmp_path / "oc")
    model = DualEncoder.from_pretrained(tmp_path / "oc")
    with torch.no_grad():
        ref_t = torch.nn.functional.normalize(net.encode_text(tokenizer(TEXTS[:2])), dim=-1).numpy()
        ref_i = torch.nn.functional.normalize(net.encode_image(torch.stack([transform(im) for im in images()])), dim=-1).numpy()
    assert np.abs(model.encode_text(TEXTS[:2]) - ref_t).max() < 1e-5
    assert np.abs(model.encode_image(images()) - ref_i).max() < 1e-5
    assert model.model_id == "tiny-open-clip"
