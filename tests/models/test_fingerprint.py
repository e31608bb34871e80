"""weights_fingerprint: equal for the same weights (also after save/load), different after any change."""

from __future__ import annotations

import torch

from xmodal.models.fingerprint import weights_fingerprint


def test_fingerprint_tracks_weights_not_names(tiny_model_dir, tmp_path):
    from xmodal import DualEncoder

    a = DualEncoder.from_pretrained(tiny_model_dir)
    b = DualEncoder.from_pretrained(tiny_model_dir)
    rng = torch.random.get_rng_state()
    fa = weights_fingerprint(a)
    assert torch.equal(rng, torch.random.get_rng_state())  # no hidden RNG use
    assert fa == weights_fingerprint(b) and fa.startswith("sha256:")
    with torch.no_grad():
        p = dict(b.named_parameters())
        name = sorted(p)[len(p) // 2]
        p[name].view(-1)[1] += 1e-4  # one element of one tensor, off the hashed sample grid
    fb = weights_fingerprint(b)
    assert fb != fa
    b.save(tmp_path / "b")
    assert weights_fingerprint(DualEncoder.from_pretrained(tmp_path / "b")) == fb


def test_objects_without_weights_have_no_fingerprint():
    assert weights_fingerprint(object()) is None


def test_same_checkpoint_in_another_precision_has_the_same_fingerprint(tiny_model_dir):
    """Indexing on a GPU in float16 and searching on a CPU in float32 is one model, not a mismatch."""
    from xmodal.models import load_model

    full = weights_fingerprint(load_model(tiny_model_dir))
    for dtype in ("float16", "bfloat16"):
        low = load_model(tiny_model_dir, dtype=dtype)
        assert next(low.parameters()).dtype == getattr(torch, dtype)
        assert weights_fingerprint(low) == full
        with torch.no_grad():  # training it afterwards makes it another model again
            next(low.parameters()).view(-1)[0] += 1
        assert weights_fingerprint(low) != full


def test_fingerprint_hashes_values_not_storage_precision(tiny_model_dir):
    """Weights whose values are exact in bfloat16, held as float32 or as bfloat16, hash alike."""
    from xmodal import DualEncoder

    a = DualEncoder.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    b = DualEncoder.from_pretrained(tiny_model_dir)
    b.load_state_dict(a.state_dict())
    b.to(torch.bfloat16)
    assert weights_fingerprint(a) == weights_fingerprint(b)
