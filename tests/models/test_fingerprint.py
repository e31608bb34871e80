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
