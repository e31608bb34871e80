"""FLMR / PreFLMR checkpoints in the authors' layout: xmodal's vectors equal a reference composed here from
transformers' BertModel / CLIPVisionModel / BertEncoder loaded with the checkpoint's own tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from xmodal.errors import ModelNotFoundError
from xmodal.models import load_model
from xmodal.models.tiny_late import build_tiny_flmr

QUESTION = "using provided image, obtain documents for question: what is the capital of france?"
PASSAGES = ["paris is the capital of france.", "red cat", "the dog, the cat; and a chart!"]


def _image(colour="red") -> Image.Image:
    img = Image.new("RGB", (50, 40), colour)
    ImageDraw.Draw(img).rectangle((5, 5, 20, 30), fill="blue")
    return img


def _sub(state, prefix):
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


class Reference:
    """The published computation, written out step by step from the checkpoint files."""

    def __init__(self, folder, side_q: str, side_c: str):
        from transformers import (AutoTokenizer, BertConfig, BertModel, CLIPImageProcessor, CLIPVisionConfig,
                                  CLIPVisionModel)
        from transformers.models.bert.modeling_bert import BertEncoder

        cfg = json.loads((folder / "config.json").read_text())
        state = load_file(str(folder / "model.safetensors"))
        self.cfg, self.dim = cfg, cfg["dim"]
        bert_cfg = BertConfig(**{k: v for k, v in cfg["text_config"].items() if k != "model_type"})
        clip_cfg = CLIPVisionConfig(**{k: v for k, v in cfg["vision_config"].items() if k != "model_type"})

        def bert(side):
            m = BertModel(bert_cfg, add_pooling_layer=True).eval()
            m.load_state_dict(_sub(state, f"{side}_text_encoder.bert_model"), strict=False)
            return m

        self.q_bert, self.c_bert = bert(side_q), bert(side_c)
        self.q_lin, self.c_lin = state[f"{side_q}_text_encoder_linear.weight"], state[f"{side_c}_text_encoder_linear.weight"]
        self.clip = CLIPVisionModel(clip_cfg).eval()
        self.clip.load_state_dict(_sub(state, f"{side_q}_vision_encoder.vision_model"), strict=False)
        self.mlp = [(state[f"{side_q}_vision_projection.model.{i}.weight"], state[f"{side_q}_vision_projection.model.{i}.bias"])
                    for i in (0, 2)]
        self.state = state
        if cfg["use_transformer_mapping_network"]:
            mcfg = BertConfig(**{k: v for k, v in cfg["text_config"].items() if k != "model_type"})
            mcfg.num_hidden_layers, mcfg.is_decoder, mcfg.add_cross_attention = 1, True, True
            mcfg._attn_implementation = "eager"  # no mask given -> plain bidirectional self-attention
            self.mapping = BertEncoder(mcfg).eval()
            self.mapping.load_state_dict(_sub(state, "transformer_mapping_network"))
        self.qtok = AutoTokenizer.from_pretrained(str(folder / "query_tokenizer"))
        self.ctok = AutoTokenizer.from_pretrained(str(folder / "context_tokenizer"))
        size = cfg["vision_config"]["image_size"]
        self.proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    @torch.no_grad()
    def query(self, text, image=None):
        t = self.qtok
        enc = t([". " + text], padding="max_length", truncation=True, max_length=self.cfg["text_config"]["query_maxlen"],
                return_tensors="pt")
        ids, att = enc["input_ids"], enc["attention_mask"]
        ids[:, 1] = t.convert_tokens_to_ids("[unused0]")
        ids[ids == t.pad_token_id] = t.mask_token_id
        keep = [x != 0 for x in ids[0].tolist()]
        if self.cfg["mask_instruction_token"]:
            sep = ids[0].tolist().index(t.convert_tokens_to_ids(self.cfg["mask_instruction_token"]))
            keep = [k and (i > sep or i < 2) for i, k in enumerate(keep)]
        hidden = self.q_bert(input_ids=ids, attention_mask=att).last_hidden_state
        text_vecs = (hidden @ self.q_lin.T)[0] * torch.tensor(keep).float()[:, None]
        parts = [text_vecs]
        if image is not None:
            px = self.proc([image], return_tensors="pt")["pixel_values"]
            out = self.clip(pixel_values=px, output_hidden_states=True)
            (w0, b0), (w2, b2) = self.mlp
            parts.append((torch.tanh(out.last_hidden_state[:, 0] @ w0.T + b0) @ w2.T + b2).view(-1, self.dim))
            if self.cfg["use_transformer_mapping_network"]:
                s = self.state
                x = out.hidden_states[-2][:, 1:] @ s["transformer_mapping_input_linear.weight"].T + s["transformer_mapping_input_linear.bias"]
                length = self.cfg["transformer_mapping_cross_attention_length"]
                y = self.mapping(x, encoder_hidden_states=hidden[:, :length]).last_hidden_state
                parts.append((y @ s["transformer_mapping_output_linear.weight"].T + s["transformer_mapping_output_linear.bias"])[0])
            keep = keep + [True] * sum(len(p) for p in parts[1:])
        q = torch.nn.functional.normalize(torch.cat(parts), dim=-1)
        return q[torch.tensor(keep)].numpy()

    @torch.no_grad()
    def passage(self, text):
        import string

        t = self.ctok
        enc = t([". " + text], return_tensors="pt")
        ids = enc["input_ids"]
        ids[:, 1] = t.convert_tokens_to_ids("[unused1]")
        punct = {t.encode(p, add_special_tokens=False)[0] for p in string.punctuation}
        keep = torch.tensor([x != 0 and x not in punct for x in ids[0].tolist()])
        h = self.c_bert(input_ids=ids, attention_mask=enc["attention_mask"]).last_hidden_state[0] @ self.c_lin.T
        return torch.nn.functional.normalize(h, dim=-1)[keep].numpy()


@pytest.mark.parametrize("preflmr", [True, False], ids=["PreFLMR", "FLMR"])
def test_vectors_equal_the_published_computation(tmp_path, preflmr):
    folder = build_tiny_flmr(tmp_path / "ckpt", preflmr=preflmr, separate_towers=not preflmr)
    model = load_model(str(folder), device="cpu")  # the folder's config.json (model_type "flmr") picks the loader
    assert model.kind == "flmr" and model.embedding_dim == 16
    # tied towers are stored as query_* only (PreFLMR variant); separate towers under both names
    ref = Reference(folder, "query", "query" if preflmr else "context")
    img = _image()
    q_text, q_mm = model.encode_query(QUESTION), model.encode_query(QUESTION, img)
    np.testing.assert_allclose(q_text, ref.query(QUESTION), atol=1e-5)
    np.testing.assert_allclose(q_mm, ref.query(QUESTION, img), atol=1e-5)
    # question tokens first, then prefix_length mapped vectors, then (PreFLMR) one per patch
    patches = (30 // 6) ** 2
    assert len(q_mm) == len(q_text) + 4 + (patches if preflmr else 0)
    if preflmr:  # instruction masked: [CLS] [Q] + the tokens after ':' (what is the capital [SEP], truncated to 16)
        assert len(q_text) == 7
    docs = model.encode_docs(PASSAGES)
    for ours, text in zip(docs, PASSAGES):
        np.testing.assert_allclose(ours, ref.passage(text), atol=1e-5)
    assert len(docs[0]) == 9  # [CLS] [D] paris is the capital of france [SEP]; the period is not a vector
    assert model.similarity([q_mm], docs).shape == (1, 3)


def test_separate_towers_use_their_own_weights(tmp_path):
    model = load_model(str(build_tiny_flmr(tmp_path / "f", preflmr=False, separate_towers=True)), device="cpu")
    assert model.model.query_text_encoder is not model.model.context_text_encoder
    same_text = "red cat"
    q = model.encode_text([same_text])[0]
    d = model.encode_docs([same_text])[0]
    assert not np.allclose(q[: len(d)], d, atol=1e-3)


def test_multimodal_queries_through_index_collection(tmp_path):
    from xmodal import index_collection

    model = load_model(str(build_tiny_flmr(tmp_path / "p")), device="cpu")
    coll = index_collection(model, PASSAGES + [_image("green")], tmp_path / "idx", nbits=None, show_progress=False)
    results = coll.search([(QUESTION, _image()), "red cat"], k=4)
    assert [len(r.ids) for r in results] == [4, 4]
    # exact index: the ranking equals MaxSim of the model's own vectors
    docs = model.encode_docs(PASSAGES + [_image("green")])
    want = np.argsort(-model.similarity([model.encode_query(QUESTION, _image())], docs)[0], kind="stable")
    assert results[0].ids == [str(i) for i in want]


def test_incomplete_checkpoint_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    folder = build_tiny_flmr(tmp_path / "broken")
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "vision_projection" not in k}, str(folder / "model.safetensors"))
    with pytest.raises(ModelNotFoundError, match="not a complete FLMR checkpoint"):
        load_model(str(folder), device="cpu")
