"""``xmodal evaluate``: R@1/5/10 both directions and mean recall on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer



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
    from ..pipelines import evaluate as run_evaluate

    run = run_evaluate(dataset, model, images=images, split=split, rerank=rerank, depth=depth, compare=compare,
                       batch_size=batch_size, out=out, muge_predictions=muge_out, tr_predictions=tr_out,
                       features=features, echo=typer.echo)
    for direction, path in run.predictions.items():
        typer.echo(f"{direction} predictions written to {path}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
