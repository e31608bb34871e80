"""Issue 17 item 5: the official `openai` client embeds through POST /v1/embeddings (float and base64)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

TEXTS = ["a red circle", "a blue square", "two green triangles"]


@pytest.fixture(scope="module")
def openai_client(served):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=served["base"] + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.mark.parametrize("fmt", ["float", "base64", None])
def test_openai_client_matches_encode_text(openai_client, tiny_model, fmt):
    kwargs = {} if fmt is None else {"encoding_format": fmt}  # None: the client's default (base64, decoded by it)
    out = openai_client.embeddings.create(model="tiny-clip", input=TEXTS, **kwargs)
    got = np.array([d.embedding for d in out.data], dtype=np.float32) if fmt != "base64" else np.stack(
        [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in out.data])
    want = tiny_model.encode_text(TEXTS, show_progress=False)
    assert out.model == "tiny-clip" and [d.index for d in out.data] == [0, 1, 2]
    np.testing.assert_allclose(got, want, atol=1e-5)
    one = openai_client.embeddings.create(model="tiny-clip", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-5)


def test_wrong_model_is_refused(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError, match="not served here"):
        openai_client.embeddings.create(model="text-embedding-3-small", input="hello")


def test_token_ids_are_refused(openai_client):
    import openai

    with pytest.raises(openai.UnprocessableEntityError, match="token ids"):
        openai_client.embeddings.create(model="tiny-clip", input=[[1, 2, 3]])


def test_images_through_the_extension(served, tiny_model):
    data = (served["images"] / "blue.png").read_bytes()
    b64 = base64.b64encode(data).decode()
    r = httpx.post(served["base"] + "/v1/embeddings", timeout=30, json={
        "model": "tiny-clip", "input": ["a blue circle", {"image": b64}, {"image": "data:image/png;base64," + b64}]})
    assert r.status_code == 200, r.text
    vecs = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vecs[0], tiny_model.encode_text(["a blue circle"], show_progress=False)[0], atol=1e-5)
    want = tiny_model.encode_image([Image.open(io.BytesIO(data)).convert("RGB")], show_progress=False)[0]
    np.testing.assert_allclose(vecs[1], want, atol=1e-4)
    np.testing.assert_allclose(vecs[2], vecs[1], atol=1e-6)
    bad = httpx.post(served["base"] + "/v1/embeddings", json={"input": [{"image": "###"}]})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]["message"]  # OpenAI's error shape under /v1
    bad = httpx.post(served["base"] + "/embed", json={"input": [{"image": "###"}]})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]  # xmodal's shape elsewhere


def test_embed_is_an_alias(served):
    a = httpx.post(served["base"] + "/embed", json={"input": TEXTS}).json()
    b = httpx.post(served["base"] + "/v1/embeddings", json={"input": TEXTS, "model": "tiny-clip"}).json()
    assert a["data"] == b["data"] and a["model"] == b["model"] == "tiny-clip"
