"""Tiny random models built from configs, for tests and the offline demo.

No hub is reachable here, so tests build small CLIP / SigLIP / Chinese-CLIP models (hidden 32,
2 layers, 30 px images), save them like a user's checkpoint, and load them back through
``DualEncoder.from_pretrained`` - the same path a downloaded model takes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..errors import InvalidInputError
from .seeding import local_rng

# Words of the synthetic benchmark and of common captions; a word-level vocabulary is enough for a
# tiny model and keeps token ids readable in tests.
DEFAULT_WORDS = (
    "a an the of and with to on in is are left right above below next near far beside photo picture image "
    "small big large tiny medium red green blue yellow purple orange white black gray grey pink brown "
    "circle square triangle star cross diamond ring heart shape shapes object objects one two three four "
    "dog cat beach car tree man woman person sky water grass street house "
    "ein eine der die das und mit links rechts oben unten kleiner kleines kleine großer großes große "
    "rot rote roter rotes grün grüne grüner grünes blau blaue blauer blaues gelb gelbe gelber gelbes "
    "kreis quadrat dreieck stern neben von zu "
    "一 个 小 大 的 红 绿 蓝 黄 紫 橙 白 黑 色 圆 形 方 三 角 星 在 左 右 边 上 下 和 张 图 片"
).split()

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(extra_texts: Iterable[str] = ()) -> list[str]:
    """Special tokens + default words + words found in ``extra_texts`` (lower-cased, CJK split per char)."""
    words = list(DEFAULT_WORDS)
    for t in extra_texts:
        words.extend(re.findall(r"[\u4e00-\u9fff]|[^\W\d_]+|\d+", t.lower()))
    seen: dict[str, None] = {}
    for w in SPECIAL + words:
        seen.setdefault(w, None)
    return list(seen)


def tiny_tokenizer(vocab: list[str], model_max_length: int):
    """A word-level ``PreTrainedTokenizerFast`` that adds ``[CLS] ... [SEP]`` itself.

    CLIP pools the text at its end token, so the tokenizer (not the caller) must add start/end
    tokens, and the model config's bos/eos/pad ids must be this tokenizer's ids.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        bos_token="[CLS]", eos_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length,
    )


def _image_processor(image_size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True,
    )


def build_tiny_model(
    arch: str = "clip",
    folder: str | Path | None = None,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 30,
    patch_size: int = 6,
    projection_dim: int = 32,
    max_text_len: int = 32,
    extra_texts: Iterable[str] = (),
    seed: int = 0,
):
    """Build a tiny random dual encoder (``arch`` in clip/siglip/chinese_clip) and, if ``folder`` is given, save it there.

    Returns the ``DualEncoder`` (loaded back from ``folder`` when one is given, so the saved files are exercised).
    """
    from transformers import (
        ChineseCLIPConfig,
        ChineseCLIPModel,
        CLIPConfig,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    from .backbones import HFBackbone
    from .dual import DualEncoder

    vocab = tiny_vocab(extra_texts)
    tokenizer = tiny_tokenizer(vocab, model_max_length=max_text_len)
    special = dict(pad_token_id=0, bos_token_id=vocab.index("[CLS]"), eos_token_id=vocab.index("[SEP]"))
    vision = dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size, num_channels=3)
    text = dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=max_text_len, **special)
    if arch not in ("clip", "siglip", "chinese_clip"):
        raise InvalidInputError(f"unknown tiny arch '{arch}'; use clip, siglip or chinese_clip.")
    with local_rng(seed):
        if arch == "clip":
            config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
            model, processor = CLIPModel(config), _image_processor(image_size)
        elif arch == "siglip":
            config = SiglipConfig(text_config=text, vision_config=vision)
            model = SiglipModel(config)
            processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
        elif arch == "chinese_clip":
            text_bert = {k: v for k, v in text.items() if k not in ("bos_token_id", "eos_token_id")}
            text_bert.update(type_vocab_size=2)
            config = ChineseCLIPConfig(text_config=text_bert, vision_config=vision, projection_dim=projection_dim)
            model, processor = ChineseCLIPModel(config), _image_processor(image_size)
    model.eval()
    encoder = DualEncoder(HFBackbone(model, tokenizer, processor, name=f"tiny-{arch}"), model_id=f"tiny-{arch}")
    if folder is None:
        return encoder
    encoder.save(folder)
    return DualEncoder.from_pretrained(folder)
