"""Losses against hand-written formulas on fixed embeddings, and ITM mining."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xmodal.losses import InfoNCELoss, ITMLoss, JointLoss, MetricLearningLoss, SigLIPLoss, VSEPPLoss, mine_hard_negatives


class FixedModel(nn.Module):
    """Embeddings are rows of learnable tables indexed by the batch's ids; match logits from a bilinear form."""

    def __init__(self, n=6, d=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.t = nn.Parameter(torch.randn(n, d, generator=g))
        self.i = nn.Parameter(torch.randn(n, d, generator=g))
        self.w = nn.Parameter(torch.randn(d, d, generator=g))

    def text_embeddings(self, batch):
        return F.normalize(self.t[batch["ids"]], dim=-1)

    def image_embeddings(self, batch):
        return F.normalize(self.i[batch["ids"]], dim=-1)

    def match_logits(self, text, image):
        return ((self.t[text["ids"]] @ self.w) * self.i[image["ids"]]).sum(-1)


def batch(n=6, labels=None):
    ids = torch.arange(n)
    return {"text": {"ids": ids}, "image": {"ids": ids}, "labels": labels if labels is not None else ids}


def sims(model, n=6):
    b = batch(n)
    return model.text_embeddings(b["text"]) @ model.image_embeddings(b["image"]).T


def test_infonce_matches_formula_and_learns_temperature():
    m = FixedModel()
    loss = InfoNCELoss(m, temperature=0.1)
    s = sims(m) / 0.1
    target = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target))
    value = loss(batch())
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert loss.log_scale.grad is not None and m.t.grad is not None
    assert loss.temperature == pytest.approx(0.1)


def test_infonce_masks_duplicate_images():
    m = FixedModel()
    labels = torch.tensor([0, 0, 1, 2, 3, 4])  # captions 0 and 1 describe the same image
    got = InfoNCELoss(m, temperature=0.1)(batch(labels=labels))
    s = sims(m) / 0.1
    s[0, 1] = s[1, 0] = float("-inf")
    t = torch.arange(6)
    assert got.item() == pytest.approx((0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))).item(), rel=1e-5)


def test_siglip_matches_formula():
    m = FixedModel()
    s = sims(m)
    z = 10 * s - 10
    sign = 2 * torch.eye(6) - 1
    expected = -F.logsigmoid(sign * z).sum() / 6
    assert SigLIPLoss(m)(batch()).item() == pytest.approx(expected.item(), rel=1e-5)


def test_vsepp_max_violation_matches_brute_force():
    m = FixedModel(seed=1)
    s = sims(m).detach()
    margin, n = 0.2, 6
    total = 0.0
    for a in range(n):
        total += max(max(0.0, margin + s[a, j].item() - s[a, a].item()) for j in range(n) if j != a) / n
        total += max(max(0.0, margin + s[j, a].item() - s[a, a].item()) for j in range(n) if j != a) / n
    assert VSEPPLoss(m, margin=margin, warmup_steps=0)(batch()).item() == pytest.approx(total, rel=1e-5)
    sum_version = VSEPPLoss(m, margin=margin, max_violation=False)(batch()).item()
    assert sum_version >= total - 1e-6


def test_vsepp_warms_up_with_the_sum_then_takes_the_hardest_negative():
    m = FixedModel(seed=1)
    summed = VSEPPLoss(m, max_violation=False)(batch()).item()
    hardest = VSEPPLoss(m, warmup_steps=0)(batch()).item()
    assert summed > hardest + 1e-3
    loss = VSEPPLoss(m, warmup_steps=2)
    assert [loss(batch()).item() for _ in range(3)] == pytest.approx([summed, summed, hardest], rel=1e-6)
    assert int(loss.state_dict()["batches_seen"]) == 3  # saved in checkpoints: a resumed run switches at the same step
    loss.eval()
    fresh = VSEPPLoss(m, warmup_steps=2).eval()  # evaluation neither warms up nor counts
    assert fresh(batch()).item() == pytest.approx(hardest, rel=1e-6) and int(fresh.batches_seen) == 0


def test_hard_negative_mining_never_picks_a_positive():
    s = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.9, 0.2], [0.1, 0.3, 0.95]])
    labels = torch.tensor([0, 0, 1])  # texts 0 and 1 share an image
    neg_img, neg_txt = mine_hard_negatives(s, labels, sample=False)
    assert neg_img.tolist() == [2, 2, 1] and neg_txt.tolist() == [2, 2, 1]
    for _ in range(20):
        ni, nt = mine_hard_negatives(s, labels, sample=True)
        assert all(labels[i] != labels[j] for i, j in enumerate(ni.tolist()))


def test_itm_and_joint_losses_train():
    torch.manual_seed(0)
    m = FixedModel()
    loss = JointLoss(m, itm_weight=1.0)
    opt = torch.optim.Adam(list(m.parameters()) + [loss.embedding_loss.log_scale], lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        v = loss(batch())
        v.backward()
        opt.step()
        first = first if first is not None else v.item()
    assert v.item() < 0.5 * first
    with pytest.raises(TypeError, match="match_logits"):
        ITMLoss(nn.Linear(2, 2))


def test_pytorch_metric_learning_adapter():
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses

    m = FixedModel()
    loss = MetricLearningLoss(m, losses.TripletMarginLoss(margin=0.2))
    v = loss(batch())
    v.backward()
    assert v.item() > 0 and m.t.grad.abs().sum() > 0
    assert math.isfinite(MetricLearningLoss(m, losses.NTXentLoss(), cross_modal_only=False)(batch()).item())
