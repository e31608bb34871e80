"""FLMR / PreFLMR checkpoints (fine-grained late-interaction multimodal retrieval), in the authors' layout.

Written for xmodal from the published architecture description (FLMR, Lin et al. 2023; PreFLMR, 2024)
and the checkpoint layout on the hub (``LinWeizheDragon/FLMR``, ``LinWeizheDragon/PreFLMR_ViT-B``,
``-ViT-L``, ``-ViT-G``): a folder with

- ``config.json`` (``model_type: "flmr"``; ``text_config`` = a BERT/ColBERTv2 config, ``vision_config`` =
  a CLIP vision config, plus the late-interaction fields listed in ``FLMR_CONFIG_FIELDS``),
- ``model.safetensors`` (or shards + index, or ``pytorch_model.bin``) with the parameter names
  ``{query,context}_text_encoder.bert_model.*``, ``{query,context}_text_encoder_linear.weight``,
  ``{query,context}_vision_encoder.vision_model.vision_model.*`` (CLIP ViT),
  ``{query,context}_vision_projection.model.{0,2}.*`` (the linear mapping network: MLP with tanh),
  and for PreFLMR ``transformer_mapping_{input_linear,network,output_linear}.*``,
- ``query_tokenizer/`` and ``context_tokenizer/`` (BERT WordPiece tokenizers).

Query = question tokens (ColBERT style: ``[CLS] [unused0] ...`` padded with ``[MASK]`` to ``query_maxlen``;
with ``mask_instruction_token`` the instruction before it is dropped) followed by the image's vectors:
``mapping_network_prefix_length`` vectors mapped from the CLIP [CLS] state, and for PreFLMR one vector per
patch from a shallow BERT that reads the penultimate CLIP layer and cross-attends to the question's states.
Document = passage tokens (``[CLS] [unused1] ...``, punctuation and padding dropped); images as documents
get the mapped [CLS] vectors. Every vector is L2-normalised; scores are MaxSim.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelNotFoundError
from .colpali import model_id_for
from .fingerprint import place_weights
from .multivector import MultiVectorEncoderMixin, ragged, read_checkpoint_config, resolve
from .registry import register_kind
from .seeding import local_rng

# Every config field this loader reads (the closing note of issue #14 lists them too).
FLMR_CONFIG_FIELDS = (
    "dim", "mapping_network_prefix_length", "use_vision_encoder", "separate_query_and_context_text_encoder",
    "separate_query_and_context_vision_encoder", "query_concat_output_from_vision_encoder",
    "query_concat_output_from_text_encoder", "context_concat_output_from_vision_encoder",
    "context_concat_output_from_text_encoder", "use_transformer_mapping_network", "transformer_mapping_config_base",
    "transformer_mapping_num_hidden_layers", "transformer_mapping_cross_attention_length", "mask_punctuation",
    "mask_instruction_token", "vision_model_version", "text_config", "vision_config",
)
_DEFAULTS = {
    "dim": 128, "mapping_network_prefix_length": 32, "use_vision_encoder": True,
    "separate_query_and_context_text_encoder": False, "separate_query_and_context_vision_encoder": False,
    "query_concat_output_from_vision_encoder": True, "query_concat_output_from_text_encoder": True,
    "context_concat_output_from_vision_encoder": False, "context_concat_output_from_text_encoder": True,
    "use_transformer_mapping_network": False, "transformer_mapping_config_base": None,
    "transformer_mapping_num_hidden_layers": None, "transformer_mapping_cross_attention_length": 32,
    "mask_punctuation": True, "mask_instruction_token": None, "vision_model_version": "openai/clip-vit-base-patch32",
}


def flmr_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's FLMR fields with the published defaults filled in."""
    return {k: cfg[k] if cfg.get(k) is not None else v for k, v in _DEFAULTS.items()}


class _TextEncoder(nn.Module):
    """``*_text_encoder``: a BERT (``bert_model``), optionally with a pooled projection nobody uses for MaxSim."""

    def __init__(self, text_config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        fields = {k: v for k, v in text_config.items() if k not in ("model_type", "architectures")}
        cfg = BertConfig(**fields)
        self.bert_model = BertModel(cfg, add_pooling_layer=True)
        if int(text_config.get("projection_dim", 0) or 0) > 0:  # present in the layout, unused for late interaction
            self.encode_proj = nn.Linear(cfg.hidden_size, int(text_config["projection_dim"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _VisionEncoder(nn.Module):
    """``*_vision_encoder``: ``vision_model`` is a transformers ``CLIPVisionModel`` (hence ``vision_model.vision_model``)."""

    def __init__(self, vision_config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        fields = {k: v for k, v in vision_config.items() if k not in ("model_type", "architectures")}
        self.vision_model = CLIPVisionModel(CLIPVisionConfig(**fields))

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.vision_model(pixel_values=pixel_values, output_hidden_states=True)


class _MappingMLP(nn.Module):
    """``*_vision_projection``: Linear -> tanh -> Linear, from the CLIP [CLS] state to ``prefix_length * dim``."""

    def __init__(self, sizes: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _mapping_bert_config(settings: dict[str, Any], text_config: dict[str, Any]) -> Any:
    """The shallow cross-attending BERT of PreFLMR. Its base config (``bert-base-uncased``) is read from the local
    cache when there, else taken from the text encoder's own config (PreFLMR asserts both have one width)."""
    from transformers import BertConfig

    base = None
    if settings["transformer_mapping_config_base"]:
        try:
            base = BertConfig.from_pretrained(settings["transformer_mapping_config_base"], local_files_only=True)
        except Exception:
            base = None
    if base is None:
        base = BertConfig(**{k: v for k, v in text_config.items() if k not in ("model_type", "architectures")})
    base.num_hidden_layers = int(settings["transformer_mapping_num_hidden_layers"] or base.num_hidden_layers)
    base.is_decoder = True
    base.add_cross_attention = True
    base._attn_implementation = "eager"  # what the checkpoints were trained with; also silences a dispatch warning
    return base


class FLMRModel(nn.Module):
    """The FLMR/PreFLMR network; parameter names follow the published checkpoints."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertEncoder

        self.settings = s = flmr_settings(config)
        text_cfg, vision_cfg = dict(config.get("text_config") or {}), dict(config.get("vision_config") or {})
        self.dim = int(s["dim"])
        self.prefix_length = int(s["mapping_network_prefix_length"])
        text_hidden = int(text_cfg.get("hidden_size", 768))
        vision_hidden = int(vision_cfg.get("hidden_size", 768))
        self.context_text_encoder = _TextEncoder(text_cfg)
        self.context_text_encoder_linear = nn.Linear(text_hidden, self.dim, bias=False)
        self.context_vision_projection = _MappingMLP(
            (vision_hidden, self.dim * self.prefix_length // 2, self.dim * self.prefix_length))
        self.context_vision_encoder = _VisionEncoder(vision_cfg) if s["use_vision_encoder"] else None
        self.use_transformer_mapping = bool(s["use_transformer_mapping_network"]) and s["use_vision_encoder"]
        if self.use_transformer_mapping:
            mcfg = _mapping_bert_config(s, text_cfg)
            self.transformer_mapping_input_linear = nn.Linear(vision_hidden, mcfg.hidden_size)
            self.transformer_mapping_network = BertEncoder(mcfg)
            # The published models were trained with plain (bidirectional) self-attention over the patches:
            # the decoder flag only enables cross-attention, so switch off the causal mask newer BERTs derive from it.
            for layer in self.transformer_mapping_network.layer:
                layer.attention.self.is_causal = False
            self.transformer_mapping_output_linear = nn.Linear(mcfg.hidden_size, self.dim)
        # Query towers: their own weights, or the context ones (tied, as in the published PreFLMR checkpoints).
        if s["separate_query_and_context_text_encoder"]:
            self.query_text_encoder = _TextEncoder(text_cfg)
            self.query_text_encoder_linear = nn.Linear(text_hidden, self.dim, bias=False)
        else:
            self.query_text_encoder = self.context_text_encoder
            self.query_text_encoder_linear = self.context_text_encoder_linear
        if s["separate_query_and_context_vision_encoder"]:
            self.query_vision_encoder = _VisionEncoder(vision_cfg) if s["use_vision_encoder"] else None
            self.query_vision_projection = _MappingMLP(
                (vision_hidden, self.dim * self.prefix_length // 2, self.dim * self.prefix_length))
        else:
            self.query_vision_encoder = self.context_vision_encoder
            self.query_vision_projection = self.context_vision_projection

    # ------------------------------------------------------------------ weights
    def load_published_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a checkpoint's tensors; tied query/context towers may be stored under either prefix."""
        own = self.state_dict()
        aliases = {"query_text_encoder": "context_text_encoder", "query_vision_encoder": "context_vision_encoder",
                   "query_vision_projection": "context_vision_projection"}
        aliases.update({v: k for k, v in aliases.items()})
        full = dict(state)
        for key in own:
            if key in full:
                continue
            head, _, rest = key.partition(".")
            head_linear = head.removesuffix("_linear")
            other = aliases.get(head) or (aliases.get(head_linear, "") + "_linear" if head.endswith("_linear") else None)
            if other and f"{other}.{rest}" in full:
                full[key] = full[f"{other}.{rest}"]
        # position_ids buffers of older transformers versions are harmless extras
        missing = [k for k in own if k not in full and not k.endswith("position_ids")]
        if missing:
            raise ModelNotFoundError(
                f"'{source}' is not a complete FLMR checkpoint: {len(missing)} weights missing "
                f"(e.g. {', '.join(missing[:3])}).")
        self.load_state_dict({k: v for k, v in full.items() if k in own}, strict=False)

    # ------------------------------------------------------------------ encoders
    def _vision_cls(self, encoder: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = encoder(pixel_values)
        return out.last_hidden_state[:, 0], out  # the [CLS] state before CLIP's post-layernorm

    def query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor,
              pixel_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, t, dim)`` normalised query vectors and their ``(n, t)`` keep-mask."""
        hidden = self.query_text_encoder(input_ids, attention_mask)
        text = self.query_text_encoder_linear(hidden) * keep.unsqueeze(-1).to(hidden.dtype)
        parts, masks = [], []
        if self.settings["query_concat_output_from_text_encoder"] or pixel_values is None:
            parts.append(text)
            masks.append(keep)
        if pixel_values is not None and self.settings["query_concat_output_from_vision_encoder"]:
            if self.query_vision_encoder is None:
                raise ModelNotFoundError("this FLMR checkpoint has no vision encoder (use_vision_encoder=false).")
            cls_state, vision_out = self._vision_cls(self.query_vision_encoder, pixel_values.to(hidden.dtype))
            n = cls_state.shape[0]
            vision = self.query_vision_projection(cls_state).view(n, -1, self.dim)
            if self.use_transformer_mapping:
                patches = vision_out.hidden_states[-2][:, 1:]  # penultimate CLIP layer, patch tokens only
                length = int(self.settings["transformer_mapping_cross_attention_length"])
                mapped = self.transformer_mapping_network(
                    self.transformer_mapping_input_linear(patches),
                    encoder_hidden_states=hidden[:, :length],  # attends to every one of the first `length` tokens
                ).last_hidden_state
                vision = torch.cat([vision, self.transformer_mapping_output_linear(mapped)], dim=1)
            parts.append(vision)
            masks.append(torch.ones(vision.shape[:2], dtype=torch.bool, device=vision.device))
        return nn.functional.normalize(torch.cat(parts, dim=1), p=2, dim=2), torch.cat(masks, dim=1)

    def doc_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.context_text_encoder(input_ids, attention_mask)
        vecs = self.context_text_encoder_linear(hidden) * keep.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize(vecs, p=2, dim=2), keep

    def doc_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.context_vision_encoder is None:
            raise ModelNotFoundError("this FLMR checkpoint has no vision encoder (use_vision_encoder=false).")
        p = next(self.context_vision_projection.parameters())
        cls_state, _ = self._vision_cls(self.context_vision_encoder, pixel_values.to(p.dtype))
        vecs = self.context_vision_projection(cls_state).view(-1, self.prefix_length, self.dim)
        return nn.functional.normalize(vecs, p=2, dim=2), torch.ones(vecs.shape[:2], dtype=torch.bool,
                                                                       device=vecs.device)


def _weights(folder_or_id: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    def fetch(name: str) -> Path | None:
        p = Path(folder_or_id)
        if p.is_dir():
            return p / name if (p / name).exists() else None
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(folder_or_id, name))
        except Exception:
            return None

    if (f := fetch("model.safetensors")) is not None:
        return load_file(str(f))
    if (idx := fetch("model.safetensors.index.json")) is not None:
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(idx.read_text())["weight_map"].values())):
            if (s := fetch(shard)) is None:
                raise ModelNotFoundError(f"FLMR checkpoint '{folder_or_id}': shard {shard} is missing.")
            state.update(load_file(str(s)))
        return state
    if (b := fetch("pytorch_model.bin")) is not None:
        return torch.load(str(b), map_location="cpu", weights_only=True)
    raise ModelNotFoundError(f"FLMR checkpoint '{folder_or_id}' has no weights (model.safetensors or pytorch_model.bin).")


def _tokenizer(folder_or_id: str, sub: str) -> Any:
    from transformers import AutoTokenizer

    p = Path(folder_or_id)
    try:
        if p.is_dir():
            return AutoTokenizer.from_pretrained(str(p / sub))
        return AutoTokenizer.from_pretrained(folder_or_id, subfolder=sub)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"FLMR checkpoint '{folder_or_id}': could not load {sub}/ "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:160]}).") from e


def _image_processor(folder_or_id: str, vision_config: dict[str, Any]) -> Any:
    """The folder's own preprocessor_config.json when it ships one; else CLIP's preprocessing at the ViT's size
    (the published checkpoints name their CLIP in ``vision_model_version`` but do not ship its processor)."""
    from transformers import CLIPImageProcessor

    p = Path(folder_or_id)
    if p.is_dir() and (p / "preprocessor_config.json").exists():
        return CLIPImageProcessor.from_pretrained(str(p))
    size = int(vision_config.get("image_size", 224))
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@register_kind("flmr", model_types=("flmr",))
class FLMREncoder(MultiVectorEncoderMixin, nn.Module):
    """An FLMR/PreFLMR checkpoint as an xmodal multi-vector encoder: text/(question, image) queries, passages or images as documents."""

    def __init__(self, model: FLMRModel, query_tokenizer: Any, context_tokenizer: Any, image_processor: Any,
                 model_id: str, query_maxlen: int = 32, doc_maxlen: int = 512, attend_to_mask_tokens: bool = False) -> None:
        super().__init__()
        self.model = model
        self.query_tokenizer, self.context_tokenizer = query_tokenizer, context_tokenizer
        self.image_processor = image_processor
        self.model_id = model_id
        self.dim = model.dim
        self.query_maxlen, self.doc_maxlen = query_maxlen, doc_maxlen
        self.attend_to_mask_tokens = attend_to_mask_tokens
        s = model.settings
        self._instruction_id = None
        if s["mask_instruction_token"]:
            self._instruction_id = query_tokenizer.encode(s["mask_instruction_token"], add_special_tokens=False)[0]
        self._punctuation: set[int] = set()
        if s["mask_punctuation"]:
            for symbol in string.punctuation:
                ids = context_tokenizer.encode(symbol, add_special_tokens=False)
                if ids:
                    self._punctuation.add(ids[0])

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: Any = None, dtype: Any = None) -> "FLMREncoder":
        src = str(name_or_path).removeprefix("hf:")
        cfg = read_checkpoint_config(src)
        if cfg is None or cfg.get("model_type") != "flmr":
            raise ModelNotFoundError(f"'{name_or_path}' has no FLMR config.json (model_type 'flmr').")
        with local_rng():  # the random init is overwritten by the published weights: leave the caller's RNG alone
            model = FLMRModel(cfg)
        model.load_published_state_dict(_weights(src), src)
        qtok, ctok = _tokenizer(src, "query_tokenizer"), _tokenizer(src, "context_tokenizer")
        text_cfg = cfg.get("text_config") or {}
        qmax = int(qtok.init_kwargs.get("query_maxlen") or text_cfg.get("query_maxlen") or 32)
        dmax = int(ctok.init_kwargs.get("doc_maxlen") or 512)
        resolve(device, dtype)  # refuse a bad device/dtype in one line before building the encoder
        encoder = cls(model, qtok, ctok, _image_processor(src, cfg.get("vision_config") or {}), model_id_for(name_or_path),
                      query_maxlen=qmax, doc_maxlen=dmax,
                      attend_to_mask_tokens=bool(qtok.init_kwargs.get("attend_to_mask_tokens", False)))
        return place_weights(encoder, device, dtype)  # fingerprint of the published weights survives a cast

    # ------------------------------------------------------------------ tokenization (ColBERT markers)
    def tokenize_queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``[CLS] [unused0] text [SEP]`` padded with ``[MASK]`` to ``query_maxlen``, and the keep-mask of MaxSim."""
        tok = self.query_tokenizer
        enc = tok([". " + t for t in texts], padding="max_length", truncation=True, max_length=self.query_maxlen,
                  return_tensors="pt")
        ids, att = enc["input_ids"], enc["attention_mask"]
        ids[:, 1] = tok.convert_tokens_to_ids("[unused0]")  # the ". " placeholder becomes the [Q] marker
        ids[ids == tok.pad_token_id] = tok.mask_token_id  # query augmentation
        if self.attend_to_mask_tokens:
            att[ids == tok.mask_token_id] = 1
        keep = ids != 0
        if self._instruction_id is not None:  # drop the instruction: everything after [Q] up to its end token
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            sep = torch.argmax((ids == self._instruction_id).int(), dim=1).clamp(min=1).unsqueeze(1)
            keep &= (pos > sep) | (pos < 2)
        return {"input_ids": ids, "attention_mask": att, "keep": keep}

    def tokenize_docs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``[CLS] [unused1] text [SEP]``; punctuation and padding are not document vectors."""
        tok = self.context_tokenizer
        enc = tok([". " + t for t in texts], padding="longest", truncation=True, max_length=self.doc_maxlen,
                  return_tensors="pt")
        ids = enc["input_ids"]
        ids[:, 1] = tok.convert_tokens_to_ids("[unused1]")
        keep = ids != 0
        if self._punctuation:
            keep &= ~torch.isin(ids, torch.tensor(sorted(self._punctuation)))
        return {"input_ids": ids, "attention_mask": enc["attention_mask"], "keep": keep}

    def _pixels(self, images: list[Any]) -> torch.Tensor:
        return self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    # ------------------------------------------------------------------ encoding
    def _query(self, texts: list[str], images: list[Any] | None) -> list[np.ndarray]:
        b = {k: v.to(self.device) for k, v in self.tokenize_queries(texts).items()}
        px = self._pixels(images).to(self.device) if images is not None else None
        with torch.inference_mode():
            vecs, keep = self.model.query(b["input_ids"], b["attention_mask"], b["keep"], px)
        return ragged(vecs, keep)

    def text_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable query vectors of ``tokenize_queries`` output (+ ``pixel_values`` for multimodal queries)."""
        b = {k: v.to(self.device) for k, v in batch.items()}
        return self.model.query(b["input_ids"], b["attention_mask"], b["keep"], b.get("pixel_values"))

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.doc_images(batch["pixel_values"].to(self.device))

    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        return self._query(texts, None)

    def _encode_queries_with_images(self, texts: list[str], images: list[Any]) -> list[np.ndarray]:
        return self._query(texts, images)

    def _encode_docs_images(self, images: list[Any]) -> list[np.ndarray]:
        with torch.inference_mode():
            return ragged(*self.model.doc_images(self._pixels(images).to(self.device)))

    def encode_documents(self, texts: list[str], batch_size: int = 32) -> list[np.ndarray]:
        """Passages (FLMR's documents): one ``(t_i, dim)`` array each."""
        out: list[np.ndarray] = []
        for s in range(0, len(texts), batch_size):
            b = {k: v.to(self.device) for k, v in self.tokenize_docs(list(texts[s:s + batch_size])).items()}
            with torch.inference_mode():
                out += ragged(*self.model.doc_text(b["input_ids"], b["attention_mask"], b["keep"]))
        return out

    def encode_docs(self, items: list[Any], batch_size: int = 32) -> list[np.ndarray]:
        """Documents for ``index_collection``: passages (``str``), images, or ``(text, image)`` (image vectors first)."""
        texts = [i for i, x in enumerate(items) if isinstance(x, str)]
        out: dict[int, np.ndarray] = dict(zip(texts, self.encode_documents([items[i] for i in texts], batch_size)))
        for i, x in enumerate(items):
            if isinstance(x, tuple):
                text, image = x
                parts = [np.asarray(self.encode_image([image])[0])] if image is not None else []
                parts += self.encode_documents([text]) if text is not None else []
                out[i] = np.concatenate(parts)
            elif i not in out:
                out[i] = np.asarray(self.encode_image([x])[0])
        return [out[i] for i in range(len(items))]

    def encode_query(self, text: str | None = None, image: Any = None) -> np.ndarray:
        """FLMR query: a question, an image, or both (an image alone is asked with an empty question)."""
        if image is not None and text is None:
            text = ""
            return self._encode_queries_with_images([text], [self.load_image(image)])[0]
        return super().encode_query(text=text, image=image)
