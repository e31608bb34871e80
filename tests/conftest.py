"""Shared fixtures: tiny random models saved to disk and loaded back through the user's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never touch the network in tests: transformers/hub calls fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine two threads per
# process oversubscribe the CPU badly (a training step went from 0.04 s to 5.7 s in a helper's runs).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP saved as a user checkpoint folder (config.json + model.safetensors + tokenizer)."""
    from xmodal.models.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-clip")
    build_tiny_model("clip", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from xmodal import DualEncoder

    return DualEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """A folder of 12 small coloured images (two in a sub-folder) and one corrupt file."""
    from PIL import Image, ImageDraw

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink", "brown", "cyan"]
    for i, c in enumerate(colours):
        img = Image.new("RGB", (40 + i, 36), c)
        ImageDraw.Draw(img).ellipse((5, 5, 25, 25), fill="white" if c != "white" else "black")
        target = folder / "sub" if i >= 10 else folder
        img.save(target / f"img_{i:02d}_{c}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return folder


class CountingEncoder:
    """Wraps an encoder (single- or multi-vector) and counts the images it encodes."""

    def __init__(self, model):
        self.model, self.encoded = model, 0
        self.model_id, self.embedding_dim = model.model_id, model.embedding_dim

    def encode_image(self, images, **kw):
        self.encoded += len(images)
        return self.model.encode_image(images, **kw)


@pytest.fixture()
def counting_encoder():
    """``counting_encoder(model)`` wraps ``model`` so a test can check how many images were (re-)encoded."""
    return CountingEncoder
