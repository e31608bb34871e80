"""create_app(device=, dtype=): the encoder and reranker it loads run where and in the precision asked (#14)."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient


def test_create_app_loads_models_in_the_given_precision(served, monkeypatch):
    import xmodal.runtime as runtime
    from xmodal.server import create_app

    placed = []
    original = runtime.place_model

    def spy(model, device=None, dtype=None):
        out = original(model, device, dtype)
        placed.append((type(out).__name__, next(out.parameters()).dtype))
        return out

    monkeypatch.setattr(runtime, "place_model", spy)
    root = served["root"]
    app = create_app(root / "idx", reranker=str(root / "joint"), device="cpu", dtype="bfloat16")
    with TestClient(app, base_url="http://127.0.0.1") as client:  # runs the app's start-up (model loading)
        r = client.post("/search", json={"text": "a red circle", "k": 2})
        assert r.status_code == 200, r.text
    assert {name for name, _ in placed} >= {"DualEncoder", "JointModel"}
    assert all(dtype == torch.bfloat16 for _, dtype in placed)


def test_create_app_refuses_a_bad_device_before_starting(served):
    from xmodal.errors import InvalidInputError
    from xmodal.server import create_app

    with pytest.raises(InvalidInputError, match="cuda:7"):
        create_app(served["root"] / "idx", device="cuda:7")
