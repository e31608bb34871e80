"""Cached-gradient (GradCache) contrastive loss: the gradient equals the plain large-batch gradient."""

from __future__ import annotations

import pytest
import torch

from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.errors import InvalidInputError
from xmodal.losses import InfoNCELoss, ITMLoss, SigLIPLoss, VSEPPLoss, cached_backward
from xmodal.models.joint import JointModel
from xmodal.models.tiny import build_tiny_model
from xmodal.train.data import PairCollator, PairDataset
from xmodal.train.mining import mine_negatives


@pytest.fixture(scope="module")
def setup():
    splits = generate(n_train=40, n_val=1, n_test=1, n_unseen=1, seed=0)
    model = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)
    pairs = PairDataset(splits["train"])
    batch = PairCollator(model.backbone)([pairs[i] for i in range(24)])
    batch["labels"][5] = batch["labels"][3]  # two captions of one image: masked out of each other's negatives
    return model, batch


@pytest.fixture(scope="module")
def mined_setup():
    """A batch with mined hard negatives (both directions); some rows have none."""
    splits = generate(n_train=40, n_val=1, n_test=1, n_unseen=1, seed=0)
    train = splits["train"]
    model = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)
    negs = mine_negatives(model, train, k=3)
    from xmodal.train.mining import MinedNegatives

    negs = MinedNegatives(t2i={q: v for q, v in negs["t2i"].items() if q % 4}, i2t={
        iid: v for n, (iid, v) in enumerate(negs["i2t"].items()) if n % 3})
    pairs = PairDataset(train, hard_negatives=negs)
    batch = PairCollator(model.backbone)([pairs[i] for i in range(24)])
    assert not batch["neg_image_valid"].all() and batch["neg_image_valid"].any() and batch["neg_text_valid"].any()
    return model, batch


def grads(model, loss):
    return {n: p.grad.clone() for n, p in list(model.named_parameters()) + list(loss.named_parameters())
            if p.grad is not None and not n.startswith("model.")}


@pytest.mark.parametrize("make", [InfoNCELoss, SigLIPLoss, lambda m: VSEPPLoss(m, warmup_steps=0)],
                         ids=["infonce", "siglip", "vsepp"])
def test_cached_gradient_equals_plain_large_batch(setup, make):
    model, batch = setup
    model.train()
    loss = make(model)
    model.zero_grad(set_to_none=True)
    plain = loss(batch)
    plain.backward()
    want = grads(model, loss)
    model.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    if isinstance(loss, VSEPPLoss):
        loss.batches_seen.zero_()
    value = cached_backward(loss, batch, micro_batch=5)  # 24 rows in micro-batches of 5 (ragged last one)
    got = grads(model, loss)
    assert abs(value - float(plain.detach())) < 1e-5
    assert set(got) == set(want) and len(want) > 20
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-5, rtol=1e-4), n
    assert any(want[n].abs().max() > 1e-4 for n in want)  # the comparison is not between zeros


@pytest.mark.parametrize("make", [InfoNCELoss, SigLIPLoss, lambda m: VSEPPLoss(m, warmup_steps=0)],
                         ids=["infonce", "siglip", "vsepp"])
def test_cached_gradient_with_mined_negatives_equals_plain_large_batch(mined_setup, make):
    """--micro-batch with --hard-negatives: the mined images and captions are embedded per micro-batch too."""
    test_cached_gradient_equals_plain_large_batch(mined_setup, make)


def test_plain_accumulation_differs_so_the_check_can_fail(setup):
    """Averaging micro-batch losses (what --grad-accum does) gives a different gradient: the test above is meaningful."""
    model, batch = setup
    loss = InfoNCELoss(model)
    model.zero_grad(set_to_none=True)
    loss(batch).backward()
    want = grads(model, loss)
    model.zero_grad(set_to_none=True)
    loss.zero_grad(set_to_none=True)
    from xmodal.losses import split_batch

    parts = split_batch(batch, 6)
    for c in parts:
        (loss(c) / len(parts)).backward()
    got = grads(model, loss)
    assert any(not torch.allclose(got[n], want[n], atol=1e-5) for n in want)


def test_cached_refuses_losses_that_need_more_than_embeddings(setup):
    model, batch = setup
    joint = JointModel.from_dual(model, hidden=16, layers=1, heads=2)
    with pytest.raises(InvalidInputError, match="micro-batch"):
        cached_backward(ITMLoss(joint), batch, micro_batch=4)
