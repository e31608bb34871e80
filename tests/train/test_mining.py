"""Mined hard negatives: never a positive (images sharing a caption text are positives), hardest first, and training uses them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.errors import InvalidInputError
from xmodal.losses import InfoNCELoss, JointLoss, SigLIPLoss, VSEPPLoss
from xmodal.models.joint import JointModel
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer
from xmodal.train.data import PairDataset
from xmodal.train.mining import MinedNegatives, mine_negatives, positives, read_negatives, write_negatives


@pytest.fixture(scope="module")
def data():
    splits = generate(n_train=120, n_val=1, n_test=1, n_unseen=1, seed=0)
    return splits["train"], build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), seed=0)


def test_mined_negatives_exclude_every_positive(data):
    train, model = data
    pos, texts_of = positives(train)
    shared = sum(len(p) > 1 for p in pos)
    assert shared > 10  # the synthetic captions repeat across scenes: false negatives are a real risk here
    mined = mine_negatives(model, train, k=5)
    assert len(mined["t2i"]) == len(train.captions)
    for q, negs in mined["t2i"].items():
        assert len(negs) == 5 and not set(negs) & pos[q]
    for iid, negs in mined["i2t"].items():
        assert len(negs) == 5 and not {" ".join(train.captions[j].text.lower().split()) for j in negs} & texts_of[iid]
    # hardest first: the first negative is the most similar non-positive image
    t = model.encode_text([train.captions[0].text])
    ids = list(train.images)
    sims = (model.encode_image([train.images[x] for x in ids]) @ t.T).ravel()
    best = max((s, x) for s, x in zip(sims, ids) if x not in pos[0])[1]
    assert mined["t2i"][0][0] == best


def test_training_with_mined_negatives(data, tmp_path):
    train, _ = data
    model = build_tiny_model("clip", None, extra_texts=[c.text for c in train.captions], seed=0)
    mined = mine_negatives(model, train, k=3)
    path = write_negatives(tmp_path / "neg.json", mined, train)
    negs = read_negatives(path, train)
    for make in (InfoNCELoss, lambda m: VSEPPLoss(m, warmup_steps=0)):
        cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=16, warmup_steps=1,
                          checkpoint_every=100, amp="none")
        trainer = Trainer(model, make(model), train, cfg, hard_negatives=negs)
        batch = next(iter(trainer._loader()))
        assert batch["neg_image"]["pixel_values"].shape == batch["image"]["pixel_values"].shape
        assert batch["neg_text"]["input_ids"].shape == batch["text"]["input_ids"].shape
        assert batch["neg_image_valid"].all() and batch["neg_text_valid"].all()
        with_neg = float(trainer.loss(batch).detach())
        plain = float(trainer.loss({k: v for k, v in batch.items() if not k.startswith("neg_")}).detach())
        # the mined images take part: extra softmax columns raise InfoNCE; extra candidates never lower VSE++'s max
        assert with_neg > plain + 1e-4 if isinstance(trainer.loss, InfoNCELoss) else with_neg >= plain - 1e-6
        trainer.train(resume=False, show_progress=False)
    other = generate(n_train=20, n_val=1, n_test=1, n_unseen=1, seed=5)["train"]
    with pytest.raises(InvalidInputError, match="another dataset"):
        read_negatives(path, other)


def test_training_never_draws_a_false_negative(data, tmp_path):
    """Over several epochs every negative drawn for a caption (image) and for its image (caption) is a true negative,
    both directions come from the mined file, and images sharing the caption's text are never among them."""
    train, model = data
    pos, texts_of = positives(train)
    negs = read_negatives(write_negatives(tmp_path / "neg.json", mine_negatives(model, train, k=4), train), train)
    assert isinstance(negs, MinedNegatives) and len(negs.i2t) == len(train.images)
    pairs = PairDataset(train, hard_negatives=negs)
    norm = lambda x: " ".join(x.lower().split())  # noqa: E731
    drawn_images, drawn_texts = set(), set()
    for epoch in range(3):
        pairs.epoch = epoch
        for i, c in enumerate(train.captions):
            image_id, caption = pairs.draw_negatives(i)
            assert image_id in negs.t2i[i] and image_id not in pos[i]
            assert caption in negs.i2t[c.image_id] and norm(train.captions[caption].text) not in texts_of[c.image_id]
            drawn_images.add((i, image_id))
            drawn_texts.add((i, caption))
    assert len(drawn_images) > len(train.captions) and len(drawn_texts) > len(train.captions)  # draws vary by epoch


def test_mined_negatives_with_micro_batch_and_with_the_joint_itm_loss(data, tmp_path):
    train, _ = data
    model = build_tiny_model("clip", None, extra_texts=[c.text for c in train.captions], seed=0)
    negs = read_negatives(write_negatives(tmp_path / "neg.json", mine_negatives(model, train, k=3), train), train)
    cfg = dict(max_steps=2, batch_size=12, warmup_steps=1, checkpoint_every=100, amp="none")
    # GradCache + mined negatives: runs, and the loss sees the mined columns
    trainer = Trainer(model, SigLIPLoss(model), train, TrainConfig(output_dir=str(tmp_path / "cached"), micro_batch=5, **cfg),
                      hard_negatives=negs)
    assert trainer.cached and "neg_text" in next(iter(trainer._loader()))
    trainer.train(resume=False, show_progress=False)
    # the cross-encoder's ITM loss takes its negatives from the mined file
    joint = JointModel.from_dual(model, hidden=16, layers=1, heads=2)
    loss = JointLoss(joint)
    trainer = Trainer(joint, loss, train, TrainConfig(output_dir=str(tmp_path / "joint"), **cfg), hard_negatives=negs)
    batch = next(iter(trainer._loader()))
    scored = []
    real = joint.match_logits
    joint.match_logits = lambda t, i: scored.append((t["input_ids"], i["pixel_values"])) or real(t, i)
    loss.itm(batch)
    texts, images = scored[0]
    n = len(batch["labels"])
    assert torch.equal(images[n:2 * n], batch["neg_image"]["pixel_values"])  # (caption j, its mined image)
    assert torch.equal(texts[2 * n:], batch["neg_text"]["input_ids"])  # (its image's mined caption, image j)
    del joint.match_logits
    trainer.train(resume=False, show_progress=False)


def test_mine_negatives_cli_writes_beside_the_dataset(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["synth", str(tmp_path / "d"), "--n-train", "40", "--n-val", "2", "--n-test", "2",
                               "--n-unseen", "2"]).exit_code == 0
    build_tiny_model("clip", tmp_path / "m")
    ds = f"karpathy:{tmp_path / 'd' / 'dataset.json'}"
    r = runner.invoke(app, ["mine-negatives", "--dataset", ds, "--model", str(tmp_path / "m"), "-k", "4"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "d" / "hard_negatives.train.json").read_text())
    assert len(doc["t2i"]) > 0 and all(len(v) == 4 for v in doc["t2i"].values())
