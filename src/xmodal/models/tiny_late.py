"""Tiny random pretrained-layout late-interaction checkpoints (ColPali, ColQwen2, FLMR/PreFLMR) for tests.

No hub is reachable here, so each builder writes a folder in the exact layout the published
checkpoints use (config.json + model.safetensors + processor/tokenizer files) with a few-word
vocabulary, and users' loaders open it like a download.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .seeding import local_rng

_WORDS = ("question query describe the image . : ? what which is a an of page about shows show red blue green cat dog "
          "table chart revenue report title figure number one two three capital city paris france").split()


def _words(extra_texts: Iterable[str]) -> list[str]:
    out = list(_WORDS)
    for t in extra_texts:
        out += re.findall(r"[^\W\d_]+|\d+|[^\w\s]", t.lower())
    return list(dict.fromkeys(out))


def _build_and_save(build: Callable[[], Any], processor: Any, folder: str | Path, seed: int) -> Path:
    """Build a random model under its own seeded RNG and save it with its processor (the checkpoint layout)."""
    with local_rng(seed):
        model = build().eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_colpali(folder: str | Path, *, extra_texts: Iterable[str] = (), image_size: int = 28, patch: int = 7,
                       hidden: int = 32, dim: int = 16, seed: int = 0) -> Path:
    """A tiny ``ColPaliForRetrieval`` (PaliGemma: tiny Gemma + SigLIP) + ``ColPaliProcessor`` saved to ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (ColPaliConfig, ColPaliForRetrieval, ColPaliProcessor, GemmaTokenizerFast,
                              PaliGemmaConfig, SiglipImageProcessor)

    vocab = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"] + _words(extra_texts)
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = GemmaTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch) ** 2  # the processor repeats <image> this often
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(model_type="gemma", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = dict(model_type="siglip_vision_model", hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch,
                  projection_dim=hidden)
    vlm = PaliGemmaConfig(text_config=text, vision_config=vision, image_token_id=processor.image_token_id,
                          projection_dim=hidden, hidden_size=hidden)
    return _build_and_save(lambda: ColPaliForRetrieval(ColPaliConfig(vlm_config=vlm, embedding_dim=dim)), processor, folder, seed)


def build_tiny_colqwen2(folder: str | Path, *, extra_texts: Iterable[str] = (), hidden: int = 32, dim: int = 16,
                        seed: int = 0) -> Path:
    """A tiny ``ColQwen2ForRetrieval`` (Qwen2-VL) + ``ColQwen2Processor`` saved to ``folder``."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor, PreTrainedTokenizerFast,
                              Qwen2VLConfig, Qwen2VLImageProcessor)

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    vocab = special + ["<unk>", "user"] + _words(extra_texts)
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        unk_token="<unk>")
    # 14 px patches merged 2x2: a 56x56 page gives 4 vectors per 28x28 block; pages keep their aspect ratio
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
    head = hidden // 2
    text = dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=None,
                eos_token_id=ids["<|im_end|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head // 8, (head // 2 - head // 8) // 2,
                                                   head // 2 - head // 8 - (head // 2 - head // 8) // 2]})
    vision = dict(depth=2, embed_dim=hidden, hidden_size=hidden, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    vlm = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"])
    return _build_and_save(lambda: ColQwen2ForRetrieval(ColQwen2Config(vlm_config=vlm, embedding_dim=dim)), processor, folder, seed)


def build_tiny_flmr(folder: str | Path, *, preflmr: bool = True, separate_towers: bool = False,
                    extra_texts: Iterable[str] = (), hidden: int = 32, dim: int = 16, prefix_length: int = 4,
                    image_size: int = 30, patch: int = 6, query_maxlen: int = 16, seed: int = 0) -> Path:
    """A tiny FLMR (``preflmr=False``) or PreFLMR checkpoint in the authors' published layout.

    The tensors are taken from transformers' ``BertModel``/``CLIPVisionModel``/``BertEncoder`` and named the
    way the hub checkpoints name them, independently of xmodal's loader. Tied query/context towers are
    stored under the ``query_*`` names only (the loader must map them); ``separate_towers`` stores both.
    """
    import json
    import string as _string

    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    from transformers.models.bert.modeling_bert import BertEncoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(_string.punctuation)
    vocab = list(dict.fromkeys(vocab + ["using", "provided", "obtain", "documents", "for", "question", "in",
                                        "capital"] + [w for w in _words(extra_texts) if w.isalnum()]))
    for sub in ("query_tokenizer", "context_tokenizer"):  # vocab.txt + tokenizer_config.json, as published
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (folder / sub / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
    text_config = dict(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=hidden * 2, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
                       query_maxlen=query_maxlen, text_encoder_base_model="bert-base-uncased", projection_dim=0,
                       model_type="flmr_text_model")
    vision_config = dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2, num_attention_heads=2,
                         image_size=image_size, patch_size=patch, projection_dim=hidden, model_type="flmr_vision_model")
    config = {
        "model_type": "flmr", "architectures": ["FLMRModelForRetrieval"], "dim": dim,
        "mapping_network_prefix_length": prefix_length, "use_vision_encoder": True,
        "separate_query_and_context_text_encoder": separate_towers,
        "separate_query_and_context_vision_encoder": separate_towers,
        "query_concat_output_from_vision_encoder": True, "query_concat_output_from_text_encoder": True,
        "context_concat_output_from_vision_encoder": False, "context_concat_output_from_text_encoder": True,
        "use_transformer_mapping_network": preflmr,
        "transformer_mapping_config_base": "bert-base-uncased" if preflmr else None,
        "transformer_mapping_num_hidden_layers": 1 if preflmr else None,
        "transformer_mapping_cross_attention_length": 8, "mask_punctuation": True,
        "mask_instruction_token": ":" if preflmr else None, "vision_model_version": "openai/clip-vit-base-patch32",
        "text_config": text_config, "vision_config": vision_config,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    bert_cfg = BertConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
    clip_cfg = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})

    def prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()
                if not k.endswith("position_ids")}

    def mlp(prefix: str) -> dict[str, torch.Tensor]:
        a, b = torch.nn.Linear(hidden, dim * prefix_length // 2), torch.nn.Linear(dim * prefix_length // 2, dim * prefix_length)
        return {**prefixed(f"{prefix}.model.0", a), **prefixed(f"{prefix}.model.2", b)}

    def towers(side: str) -> dict[str, torch.Tensor]:
        return {**prefixed(f"{side}_text_encoder.bert_model", BertModel(bert_cfg, add_pooling_layer=True)),
                f"{side}_text_encoder_linear.weight": torch.randn(dim, hidden) * 0.2,
                **prefixed(f"{side}_vision_encoder.vision_model", CLIPVisionModel(clip_cfg)),
                **mlp(f"{side}_vision_projection")}

    with local_rng(seed):
        state = towers("query")
        if separate_towers:
            state.update(towers("context"))
        if preflmr:
            map_cfg = BertConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
            map_cfg.num_hidden_layers, map_cfg.is_decoder, map_cfg.add_cross_attention = 1, True, True
            state.update(prefixed("transformer_mapping_input_linear", torch.nn.Linear(hidden, hidden)))
            state.update(prefixed("transformer_mapping_network", BertEncoder(map_cfg)))
            state.update(prefixed("transformer_mapping_output_linear", torch.nn.Linear(hidden, dim)))
    save_file(state, str(folder / "model.safetensors"))
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(folder)
    return folder
