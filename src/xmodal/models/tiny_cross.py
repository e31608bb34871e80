"""Tiny random BLIP ITM and joint models for tests and benchmarks (see ``models.tiny``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .seeding import local_rng
from .tiny import tiny_tokenizer, tiny_vocab


def build_tiny_blip(folder: str | Path | None = None, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                    image_size: int = 30, patch_size: int = 6, extra_texts: Iterable[str] = (), seed: int = 0):
    """A tiny random ``BlipForImageTextRetrieval`` wrapped as ``CrossEncoder`` (saved to and loaded from ``folder``)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    from .cross import CrossEncoder

    vocab = tiny_vocab(extra_texts)
    tokenizer = tiny_tokenizer(vocab, model_max_length=32)
    text = dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=32, encoder_hidden_size=hidden,
                pad_token_id=0, bos_token_id=vocab.index("[CLS]"), sep_token_id=vocab.index("[SEP]"))
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  image_size=image_size, patch_size=patch_size)
    with local_rng(seed):
        model = BlipForImageTextRetrieval(BlipConfig(text_config=text, vision_config=vision, projection_dim=hidden)).eval()
    processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    enc = CrossEncoder(model, tokenizer, processor, name="tiny-blip")
    if folder is None:
        return enc
    enc.save(folder)
    return CrossEncoder.from_pretrained(folder)


def build_tiny_joint(folder: str | Path | None = None, *, head_hidden: int = 32, head_layers: int = 1, seed: int = 0, **kw):
    """A tiny CLIP with a fusion head (``JointModel``), saved to and loaded from ``folder`` when given."""
    from .joint import JointModel
    from .tiny import build_tiny_model

    joint = JointModel.from_dual(build_tiny_model("clip", None, seed=seed, **kw), hidden=head_hidden,
                                 layers=head_layers, heads=2, seed=seed)
    if folder is None:
        return joint
    joint.save(folder)
    return JointModel.from_pretrained(folder)
