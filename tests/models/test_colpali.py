"""ColPali / ColQwen2 through xmodal equal transformers' own ColPaliForRetrieval / ColQwen2ForRetrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from xmodal.models import load_model
from xmodal.models.tiny_late import build_tiny_colpali, build_tiny_colqwen2

QUERIES = ["which page shows the revenue table?", "red cat", "what is the title of the report"]


def _pages() -> list[Image.Image]:
    out = []
    for i, (size, colour) in enumerate([((56, 84), "white"), ((112, 56), "lightblue"), ((60, 60), "pink")]):
        img = Image.new("RGB", size, colour)
        ImageDraw.Draw(img).text((4, 4 + 6 * i), f"page {i}", fill="black")
        out.append(img)
    return out


def _reference(folder, model_cls, proc_cls, texts, images):
    """transformers alone: embeddings of the same batches, padding rows dropped."""
    model, proc = model_cls.from_pretrained(folder).eval(), proc_cls.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for batch in (proc(text=texts, return_tensors="pt"), proc(images=images, return_tensors="pt")):
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "token_type_ids")}
            emb, mask = model(**inputs).embeddings, inputs["attention_mask"].bool()
            out.append([e[m].numpy() for e, m in zip(emb, mask)])
    return out


@pytest.mark.parametrize("arch", ["colpali", "colqwen2"])
def test_embeddings_equal_transformers(tmp_path, arch):
    from transformers import ColPaliForRetrieval, ColPaliProcessor, ColQwen2ForRetrieval, ColQwen2Processor

    build, classes = {"colpali": (build_tiny_colpali, (ColPaliForRetrieval, ColPaliProcessor)),
                      "colqwen2": (build_tiny_colqwen2, (ColQwen2ForRetrieval, ColQwen2Processor))}[arch]
    folder = build(tmp_path / arch)
    model = load_model(str(folder), device="cpu")  # the user's path: the folder's config.json says what it is
    assert model.kind == "colpali" and model.embedding_dim == 16
    pages = _pages()
    q = model.encode_text(QUERIES, batch_size=len(QUERIES))
    d = list(model.encode_image(pages, batch_size=len(pages)))
    ref_q, ref_d = _reference(folder, *classes, QUERIES, pages)
    for ours, ref in zip(q + d, ref_q + ref_d):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # the model's own L2 norm
    # MaxSim over the real vectors only (transformers' score_retrieval zero-pads ragged pages, which can raise a
    # query token's max to 0; xmodal keeps each page's own vectors)
    want = np.array([[np.max(a @ b.T, axis=1).sum() for b in ref_d] for a in ref_q])
    np.testing.assert_allclose(model.similarity(q, d), want, rtol=1e-5, atol=1e-4)


def test_colqwen2_pages_of_different_sizes_keep_their_own_vector_counts(tmp_path):
    model = load_model(str(build_tiny_colqwen2(tmp_path / "q")), device="cpu")
    d = model.encode_image(_pages())
    assert isinstance(d, list) and len({len(x) for x in d}) > 1  # not padded to one length


def test_dtype_reaches_the_model(tmp_path):
    model = load_model(str(build_tiny_colpali(tmp_path / "c")), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.encode_text(["red cat"])[0].dtype == np.float32  # outputs stay float32 for the indexes
