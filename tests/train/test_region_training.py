"""Region-feature models train with the standard losses and evaluate through the standard evaluator."""

from __future__ import annotations

import pytest

from xmodal.data.features import FeatureStore
from xmodal.data.synthetic import all_caption_texts, generate, region_features
from xmodal.evaluation import RetrievalEvaluator
from xmodal.losses import InfoNCELoss, JointLoss
from xmodal.models.regions import build_tiny_region_model
from xmodal.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def region_data():
    splits = generate(n_train=400, n_val=40, n_test=60, n_unseen=10, seed=0)
    features, region_splits = region_features(splits, dim=64, seed=0)
    return FeatureStore.from_dict(features), region_splits, all_caption_texts(splits)


def test_generated_region_features_follow_the_scenes(region_data):
    store, splits, _ = region_data
    iid = next(iter(splits["test"].images))
    rec = store[iid]
    n_objects = len(splits["test"].extra["scenes"][iid])
    assert rec.num_regions == n_objects + 2 and rec.dim == 64 and rec.labels is not None
    assert (rec.regions >= 0).all() and (rec.boxes[:, 2:] > rec.boxes[:, :2]).all()


def test_two_stream_model_learns_retrieval_with_infonce(region_data, tmp_path):
    store, splits, texts = region_data
    model = build_tiny_region_model("two-stream", extra_texts=texts, seed=0).attach_features(store)
    ev = RetrievalEvaluator(splits["test"])
    before = ev(model)
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=150, batch_size=32, lr=2e-3, warmup_steps=10,
                      checkpoint_every=1000, log_every=10, eval_every=150)
    state = Trainer(model, InfoNCELoss(model), splits["train"], cfg, evaluator=RetrievalEvaluator(splits["val"])).train(
        show_progress=False)
    after = ev(model)
    losses = [h["loss"] for h in state.history if "loss" in h]
    assert losses[-1] < 0.6 * losses[0]
    # 60 test images: chance R@5 is ~8 %; the trained model must be far above it and above the untrained one
    assert after["t2i_R@5"] > before["t2i_R@5"] + 20 and after["t2i_R@5"] > 40
    assert (tmp_path / "best" / "model.safetensors").exists()


def test_single_stream_model_trains_jointly_and_reranks(region_data, tmp_path):
    store, splits, texts = region_data
    model = build_tiny_region_model("single-stream", extra_texts=texts, seed=0).attach_features(store)
    # ITM with mined hard negatives (one attribute apart) starts to learn only after a few hundred steps
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=600, batch_size=32, lr=2e-3, warmup_steps=10,
                      checkpoint_every=1000, log_every=20)
    state = Trainer(model, JointLoss(model), splits["train"], cfg).train(show_progress=False)
    losses = [h["loss"] for h in state.history if "loss" in h]
    assert losses[-1] < 0.4 * losses[0]
    ev = RetrievalEvaluator(splits["test"])
    retrieve = ev(model)
    reranked = ev(model, reranker=model, depth=5)  # the same weights rerank their own top 5
    rerank_all = ev(None, reranker=model)  # the cross-encoder alone over all 60 x 120 pairs
    assert retrieve["t2i_R@5"] > 60  # chance ~8 %
    # reranking only reorders the top 5: R@5 cannot change, R@1 is the cross-encoder's call
    assert reranked["t2i_R@5"] == pytest.approx(retrieve["t2i_R@5"])
    assert rerank_all["t2i_R@5"] > 40 and rerank_all["i2t_R@10"] > 40
    assert ev.last_mode == "rerank_all"
