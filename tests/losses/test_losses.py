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


# --- 3x3 example with hand-computed values (issue #4) ---------------------------------------------
# Texts and images are literal unit vectors, so the similarity matrix is exact decimals:
T3 = [[0.0, 0.0, 1.0], [0.0, 0.6, 0.8], [0.0, 0.8, 0.6]]
I3 = [[0.8, 0.0, 0.6], [0.6, 0.0, 0.8], [0.0, 0.0, 1.0]]
# S[t][i] = T3[t] . I3[i], worked out by hand:
S3 = [[0.60, 0.80, 1.00],
      [0.48, 0.64, 0.80],
      [0.36, 0.48, 0.60]]
# ITM head: match logit = Mt[t] . Mi[i] (separate from the embeddings, so mining and scoring are independent).
MT3 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
MI3 = [[2.0, 0.0], [1.0, -1.0], [0.0, 1.0]]
# L[t][i] = MT3[t] . MI3[i] by hand:
L3 = [[2.0, 1.0, 0.0],
      [0.0, -1.0, 1.0],
      [2.0, 0.0, 1.0]]


class LiteralModel(nn.Module):
    """3 texts / 3 images with the literal embeddings and match vectors above."""

    def __init__(self):
        super().__init__()
        self.t = nn.Parameter(torch.tensor(T3))
        self.i = nn.Parameter(torch.tensor(I3))
        self.mt = nn.Parameter(torch.tensor(MT3))
        self.mi = nn.Parameter(torch.tensor(MI3))

    def text_embeddings(self, batch):
        return F.normalize(self.t[batch["ids"]], dim=-1)

    def image_embeddings(self, batch):
        return F.normalize(self.i[batch["ids"]], dim=-1)

    def match_logits(self, text, image):
        return (self.mt[text["ids"]] * self.mi[image["ids"]]).sum(-1)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _softplus(x):  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def hand_infonce(S, scale, pos=(0, 1, 2)):
    """0.5 * (text->image CE + image->text CE); pos[t] = the matching image of text t (a permutation)."""
    n = len(S)
    t2i = sum(-scale * S[t][pos[t]] + math.log(sum(math.exp(scale * S[t][j]) for j in range(n))) for t in range(n)) / n
    i2t = sum(-scale * S[t][pos[t]] + math.log(sum(math.exp(scale * S[j][pos[t]]) for j in range(n))) for t in range(n)) / n
    return 0.5 * (t2i + i2t)


def hand_siglip(S, scale, bias, pos=(0, 1, 2)):
    n = len(S)
    return sum(_softplus(-(1 if pos[t] == j else -1) * (scale * S[t][j] + bias)) for t in range(n) for j in range(n)) / n


def hand_vsepp(S, margin, max_violation):
    n = len(S)
    t2i = [[max(0.0, margin + S[a][j] - S[a][a]) for j in range(n) if j != a] for a in range(n)]
    i2t = [[max(0.0, margin + S[j][b] - S[b][b]) for j in range(n) if j != b] for b in range(n)]
    agg = max if max_violation else sum
    return (sum(agg(c) for c in t2i) + sum(agg(c) for c in i2t)) / n


def hand_bce(pos_logits, neg_logits):
    """Mean binary cross-entropy: positives with target 1, negatives with target 0."""
    terms = [_softplus(-x) for x in pos_logits] + [_softplus(x) for x in neg_logits]
    return sum(terms) / len(terms)


def test_3x3_literal_similarities_are_the_hand_values():
    for t in range(3):
        for j in range(3):
            assert _dot(T3[t], I3[j]) == pytest.approx(S3[t][j], abs=1e-12)
            assert _dot(MT3[t], MI3[j]) == pytest.approx(L3[t][j], abs=1e-12)
    assert sims(LiteralModel(), 3).flatten().tolist() == pytest.approx([x for row in S3 for x in row], abs=1e-6)


def test_3x3_infonce_hand_value():
    expected = hand_infonce(S3, 10.0)
    got = InfoNCELoss(LiteralModel(), temperature=0.1)(batch(3)).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # The check discriminates: other pairings (or the temperature ignored) give other values.
    assert abs(got - hand_infonce(S3, 10.0, pos=(1, 2, 0))) > 1e-2
    assert abs(got - hand_infonce(S3, 1.0)) > 1e-2


def test_3x3_siglip_hand_value():
    expected = hand_siglip(S3, 10.0, -10.0)
    got = SigLIPLoss(LiteralModel())(batch(3)).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(got - hand_siglip(S3, 10.0, -10.0, pos=(1, 2, 0))) > 1e-2


def test_3x3_vsepp_hand_values():
    # Hinge costs with margin 0.2 (text anchors by row, image anchors by column):
    #   text 0: [0.4, 0.6]   text 1: [0.04, 0.36]   text 2: [0, 0.08]
    #   image 0: [0.08, 0]   image 1: [0.36, 0.04]  image 2: [0.6, 0.4]
    # max violation: (0.6 + 0.36 + 0.08)/3 + (0.08 + 0.36 + 0.6)/3 = 2.08/3
    # sum:           (1.0 + 0.4 + 0.08 + 0.08 + 0.4 + 1.0)/3     = 2.96/3
    assert hand_vsepp(S3, 0.2, True) == pytest.approx(2.08 / 3)
    assert hand_vsepp(S3, 0.2, False) == pytest.approx(2.96 / 3)
    m = LiteralModel()
    assert VSEPPLoss(m, margin=0.2, warmup_steps=0)(batch(3)).item() == pytest.approx(2.08 / 3, rel=1e-5)
    assert VSEPPLoss(m, margin=0.2, max_violation=False, warmup_steps=0)(batch(3)).item() == pytest.approx(2.96 / 3, rel=1e-5)


# Hard negatives by hand (argmax over the non-matching entries of S3):
#   text 0 -> image 2 (1.00 > 0.80), text 1 -> image 2 (0.80 > 0.48), text 2 -> image 1 (0.48 > 0.36)
#   image 0 -> text 1 (0.48 > 0.36), image 1 -> text 0 (0.80 > 0.48), image 2 -> text 0 (1.00 > 0.80)
NEG_IMG3, NEG_TXT3 = [2, 2, 1], [1, 0, 0]


def hand_itm(neg_img=NEG_IMG3, neg_txt=NEG_TXT3):
    pos = [L3[k][k] for k in range(3)]                                            # 2, -1, 1
    negs = [L3[k][neg_img[k]] for k in range(3)] + [L3[neg_txt[k]][k] for k in range(3)]  # 0, 1, 0 and 0, 1, 0
    return hand_bce(pos, negs)


def test_3x3_itm_hard_negatives_and_hand_value():
    neg_img, neg_txt = mine_hard_negatives(torch.tensor(S3), torch.arange(3), sample=False)
    assert neg_img.tolist() == NEG_IMG3 and neg_txt.tolist() == NEG_TXT3
    got = ITMLoss(LiteralModel(), sample_negatives=False)(batch(3)).item()
    expected = hand_itm()
    assert got == pytest.approx(expected, rel=1e-6)
    # Swapping the roles of the negatives, or picking the easiest instead of the hardest, changes the value.
    assert abs(got - hand_itm(neg_img=NEG_TXT3, neg_txt=NEG_IMG3)) > 1e-2
    assert abs(got - hand_itm(neg_img=[1, 0, 0], neg_txt=[2, 2, 1])) > 1e-2


def test_3x3_joint_loss_is_embedding_plus_weighted_itm():
    m = LiteralModel()
    joint = JointLoss(m, embedding_loss=InfoNCELoss(m, temperature=0.1), itm_weight=0.5, sample_negatives=False)
    expected = hand_infonce(S3, 10.0) + 0.5 * hand_itm()
    assert joint(batch(3)).item() == pytest.approx(expected, rel=1e-5)


def _lp(s):  # Euclidean distance between unit vectors with cosine s
    return math.sqrt(max(0.0, 2.0 - 2.0 * s))


def test_3x3_metric_learning_contrastive_hand_value():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses

    # ContrastiveLoss(pos_margin=0, neg_margin=1), L2 distance, AvgNonZeroReducer per sub-loss:
    # mean of d over positive pairs + mean of relu(1 - d) over negative pairs with a non-zero loss.
    # (Each pair appears in both orders; that does not change a mean.)
    pos_d = [_lp(S3[k][k]) for k in range(3)]
    cross_neg = [1 - _lp(S3[a][b]) for a in range(3) for b in range(3) if a != b]
    expected = sum(pos_d) / 3 + sum(x for x in cross_neg if x > 0) / sum(1 for x in cross_neg if x > 0)
    # by hand: the only cross-modal negatives closer than 1 are S=0.8 (twice) and S=1.0
    assert expected == pytest.approx((2 * math.sqrt(0.8) + math.sqrt(0.72)) / 3 + (2 * (1 - math.sqrt(0.4)) + 1) / 3)
    m = LiteralModel()
    got = MetricLearningLoss(m, losses.ContrastiveLoss())(batch(3)).item()
    assert got == pytest.approx(expected, rel=1e-5)

    # Without the restriction, text-text and image-image pairs (cosines 0.8, 0.6, 0.96 each) are negatives too.
    same_modal = [1 - _lp(_dot(V[a], V[b])) for V in (T3, I3) for a in range(3) for b in range(a + 1, 3)]
    all_neg = [x for x in cross_neg + same_modal if x > 0]
    expected_all = sum(pos_d) / 3 + sum(all_neg) / len(all_neg)
    got_all = MetricLearningLoss(m, losses.ContrastiveLoss(), cross_modal_only=False)(batch(3)).item()
    assert got_all == pytest.approx(expected_all, rel=1e-5)
    assert abs(got_all - got) > 1e-2
