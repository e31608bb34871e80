"""``xmodal evaluate``: R@1/5/10 both directions and mean recall on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError


def evaluate(
    dataset: str = typer.Option(..., "--dataset", "-d", help="FORMAT:PATH, e.g. karpathy:dataset_flickr30k.json, csv:pairs.csv, folder:DIR, muge:valid_texts.jsonl (MUGE or Chinese-CLIP fields), cnclip:valid_texts.jsonl, coco:captions_val2014.json[,karpathy=dataset_coco.json], wds:shards-*.tar, multi30k:IMAGE_LIST,LANG=CAPTIONS[,...] (e.g. multi30k:test_2016_flickr.txt,en=test_2016_flickr.en,de=test_2016_flickr.de; --images = image folder)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Dual encoder (hub id, open_clip:..., folder)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder (Karpathy/CSV/COCO) or base64 TSV (MUGE/Chinese-CLIP)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate (Karpathy: test/val/train)."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder to rerank with."),
    depth: int = typer.Option(20, "--depth", help="Candidates reranked per query."),
    compare: bool = typer.Option(False, "--compare", help="With --rerank: also run retrieve-only and rerank-all (small sets)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics JSON here."),
    muge_out: Optional[Path] = typer.Option(None, "--muge-predictions", help="Write top-10 text->image predictions jsonl in the ground truth's fields and id types (MUGE / Chinese-CLIP scorers)."),
    tr_out: Optional[Path] = typer.Option(None, "--tr-predictions", help="Write top-10 image->text predictions jsonl ({image_id, text_ids}, Chinese-CLIP's evaluation_tr.py)."),
    features: Optional[Path] = typer.Option(None, "--features", help="Region-feature store (npz folder, TSV, HDF5, LMDB) for region-feature models."),
) -> None:
    """Evaluate retrieval (optionally with reranking) and print a table of recalls."""
    from ..data.datasets import load_dataset
    from ..evaluation import RetrievalEvaluator, format_table

    if model is None and rerank is None:
        raise InvalidInputError("give --model, --rerank, or both.")
    ds = load_dataset(dataset, images=images, split=split)
    ev = RetrievalEvaluator(ds, batch_size=batch_size, show_progress=True)
    encoder = reranker = None
    if model:
        from ..models import load_model

        encoder = load_model(model)
    if rerank:
        from ..models.cross import load_reranker

        reranker = load_reranker(rerank)
    if features is not None:
        attach_feature_store(features, encoder, reranker)
    results: dict[str, dict[str, float]] = {}
    if encoder is not None and (reranker is None or compare):
        results["retrieve"] = ev(encoder)
    if reranker is not None and encoder is not None:
        results[f"retrieve+rerank@{depth}"] = ev(encoder, reranker=reranker, depth=depth)
    if reranker is not None and (encoder is None or compare):
        results["rerank-all"] = ev(None, reranker=reranker)
    typer.echo(f"{ds.name} / {ds.split}: {len(ds.images)} images, {len(ds.captions)} captions")
    typer.echo(format_table(results))
    if out:
        from ..evaluation import write_metrics

        write_metrics(out, results)
    for pred_out, direction in ((muge_out, "t2i"), (tr_out, "i2t")):
        if pred_out:
            if encoder is None:
                raise InvalidInputError("--muge-predictions / --tr-predictions need --model.")
            from ..evaluation import write_predictions

            write_predictions(pred_out, ds, encoder, direction=direction, batch_size=batch_size)
            typer.echo(f"{direction} predictions written to {pred_out}")


def attach_feature_store(path: Path, *models: object) -> None:
    """Open a region-feature store and give it to every region-feature model among ``models``."""
    from ..data.features import FeatureStore

    takers = [m for m in models if m is not None and hasattr(getattr(m, "backbone", None), "features")]
    if not takers:
        raise InvalidInputError("--features is for region-feature models; the given model(s) read pixels.")
    store = FeatureStore.open(path)
    for m in takers:
        m.attach_features(store)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
