"""Mined hard negatives inside the losses: each row's mined image (text->image) and mined caption (image->text)
enter that row's loss only, the ITM pairs are made of them, and losses that cannot use them say so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xmodal.losses import InfoNCELoss, ITMLoss, JointLoss, MetricLearningLoss, SigLIPLoss, VSEPPLoss

N, POOL = 6, 12  # 6 pairs per batch; the tables hold 12 texts/images (ids 6..11 are the mined ones)


class TableModel(nn.Module):
    """Embeddings = rows of fixed tables picked by ``ids``; ``match_logits`` records which pairs it scored."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.t = nn.Parameter(torch.randn(POOL, 5, generator=g))
        self.i = nn.Parameter(torch.randn(POOL, 5, generator=g))
        self.w = nn.Parameter(torch.randn(5, 5, generator=g))
        self.scored: list[tuple[int, int]] = []

    def text_embeddings(self, b):
        return F.normalize(self.t[b["ids"]], dim=-1)

    def image_embeddings(self, b):
        return F.normalize(self.i[b["ids"]], dim=-1)

    def match_logits(self, text, image):
        self.scored += list(zip(text["ids"].tolist(), image["ids"].tolist()))
        return ((self.t[text["ids"]] @ self.w) * self.i[image["ids"]]).sum(-1)


def mined_batch(image_valid=None, text_valid=None, labels=None):
    ids = torch.arange(N)
    return {"text": {"ids": ids}, "image": {"ids": ids}, "labels": ids if labels is None else labels,
            "neg_image": {"ids": ids + N}, "neg_text": {"ids": ids + N},
            "neg_image_valid": torch.ones(N, dtype=torch.bool) if image_valid is None else image_valid,
            "neg_text_valid": torch.ones(N, dtype=torch.bool) if text_valid is None else text_valid}


def test_infonce_with_mined_negatives_matches_the_formula():
    m = TableModel()
    valid_i = torch.tensor([True, True, False, True, True, True])
    valid_t = torch.tensor([True, False, True, True, True, False])
    b = mined_batch(valid_i, valid_t)
    loss = InfoNCELoss(m, temperature=0.1)
    t, i = m.text_embeddings(b["text"]), m.image_embeddings(b["image"])
    nt, ni = m.text_embeddings(b["neg_text"]), m.image_embeddings(b["neg_image"])
    want = 0.0
    for j in range(N):  # row j: its own mined negative (if any) is one more candidate; no other row's
        row = [10 * t[j] @ i[k] for k in range(N)] + ([10 * t[j] @ ni[j]] if valid_i[j] else [])
        col = [10 * i[j] @ t[k] for k in range(N)] + ([10 * i[j] @ nt[j]] if valid_t[j] else [])
        want += 0.5 * (-F.log_softmax(torch.stack(row), 0)[j] - F.log_softmax(torch.stack(col), 0)[j]) / N
    assert loss(b).item() == pytest.approx(want.item(), rel=1e-5)
    plain = loss({k: v for k, v in b.items() if not k.startswith("neg_")})
    assert loss(b).item() > plain.item() + 1e-4  # the mined candidates take part


def test_another_rows_mined_negative_never_enters_a_row():
    """A mined image can be a positive of another caption (duplicate captions): it must only meet its own row."""
    m = TableModel()
    b = mined_batch()
    with torch.no_grad():  # make row 1's mined image identical to row 0's own image: a false negative for row 0
        m.i[N + 1] = m.i[0]
    # VSE++ with the sum over negatives (with max violation an unchanged maximum would hide the dependence)
    for make in (InfoNCELoss, SigLIPLoss, lambda x: VSEPPLoss(x, warmup_steps=0, max_violation=False, margin=2.0)):
        loss = make(m)
        m.zero_grad(set_to_none=True)
        loss(b).backward()
        g = m.t.grad.clone()
        # moving row 1's mined image changes the gradient of caption 1 only, never caption 0's
        with torch.no_grad():
            m.i[N + 1] += 0.5
        m.zero_grad(set_to_none=True)
        make(m)(b).backward()
        with torch.no_grad():
            m.i[N + 1] -= 0.5
        assert torch.allclose(m.t.grad[0], g[0]) and not torch.allclose(m.t.grad[1], g[1])


def test_siglip_and_vsepp_add_the_mined_pairs():
    m = TableModel()
    b = mined_batch()
    plain = {k: v for k, v in b.items() if not k.startswith("neg_")}
    sig = SigLIPLoss(m)
    t, i = m.text_embeddings(b["text"]), m.image_embeddings(b["image"])
    nt, ni = m.text_embeddings(b["neg_text"]), m.image_embeddings(b["neg_image"])
    extra = -(F.logsigmoid(-(10 * (t * ni).sum(-1) - 10)).sum() + F.logsigmoid(-(10 * (i * nt).sum(-1) - 10)).sum()) / N
    assert sig(b).item() == pytest.approx(sig(plain).item() + extra.item(), rel=1e-5)
    vse = VSEPPLoss(m, warmup_steps=0, margin=0.2)
    s = t @ i.T
    pos = s.diag()
    off = ~torch.eye(N, dtype=torch.bool)
    hard_t = torch.maximum(((0.2 + s - pos[:, None]).clamp(min=0) * off).max(1).values, (0.2 + (t * ni).sum(-1) - pos).clamp(min=0))
    hard_i = torch.maximum(((0.2 + s - pos[None, :]).clamp(min=0) * off).max(0).values, (0.2 + (i * nt).sum(-1) - pos).clamp(min=0))
    assert vse(b).item() == pytest.approx((hard_t.mean() + hard_i.mean()).item(), rel=1e-5)


def test_itm_scores_the_mined_negatives_and_falls_back_in_batch():
    m = TableModel()
    torch.manual_seed(0)
    ITMLoss(m)(mined_batch())
    pos, rest = m.scored[:N], m.scored[N:]
    assert pos == [(j, j) for j in range(N)]
    # (text j, its mined image) and (its image's mined caption, image j): nothing sampled in-batch
    assert rest == [(j, N + j) for j in range(N)] + [(N + j, j) for j in range(N)]
    # rows without a mined negative take an in-batch one, never their own image (nor a same-image caption)
    m.scored.clear()
    valid = torch.tensor([True, False, True, False, True, True])
    labels = torch.tensor([0, 1, 2, 2, 4, 5])  # captions 2 and 3 describe one image
    ITMLoss(m)(mined_batch(valid, valid, labels))
    t_img, i_txt = m.scored[N:2 * N], m.scored[2 * N:]
    for j in range(N):
        if valid[j]:
            assert t_img[j] == (j, N + j) and i_txt[j] == (N + j, j)
        else:
            assert t_img[j][1] < N and labels[t_img[j][1]] != labels[j]
            assert i_txt[j][0] < N and labels[i_txt[j][0]] != labels[j]


def test_joint_loss_uses_mined_negatives_in_both_parts():
    m = TableModel()
    joint = JointLoss(m)
    assert joint.accepts_mined
    b = mined_batch()
    m.scored.clear()
    value = joint(b)
    assert (0, N) in m.scored and (N, 0) in m.scored
    assert value.item() == pytest.approx(joint.embedding_loss(b).item() + joint.itm(b).item(), rel=1e-5)


def test_losses_that_cannot_use_mined_negatives_are_refused(tmp_path):
    from xmodal.data.synthetic import generate
    from xmodal.errors import InvalidInputError
    from xmodal.models.tiny import build_tiny_model
    from xmodal.train import TrainConfig, Trainer
    from xmodal.train.mining import MinedNegatives
    from pytorch_metric_learning import losses as pml

    train = generate(n_train=8, n_val=1, n_test=1, n_unseen=1, seed=0)["train"]
    model = build_tiny_model("clip", None, extra_texts=[c.text for c in train.captions], seed=0)
    negs = MinedNegatives(t2i={0: [list(train.images)[1]]})
    with pytest.raises(InvalidInputError, match="does not use mined hard negatives"):
        Trainer(model, MetricLearningLoss(model, pml.ContrastiveLoss()), train,
                TrainConfig(output_dir=str(tmp_path), amp="none"), hard_negatives=negs)
