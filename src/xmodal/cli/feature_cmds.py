"""``xmodal features split|info|convert``: region-feature stores (npz folder, TSV, HDF5, LMDB)."""

from __future__ import annotations

from pathlib import Path

import typer

features_app = typer.Typer(
    help="Region-feature stores (Faster R-CNN bottom-up features): split a big TSV, inspect, convert.",
    no_args_is_help=True,
)

_SHOW_SKIPPED = 20


def _echo_skipped(skipped: list[tuple[str, str]]) -> None:
    for where, reason in skipped[:_SHOW_SKIPPED]:
        typer.echo(f"  skipped {where}: {reason}", err=True)
    if len(skipped) > _SHOW_SKIPPED:
        typer.echo(f"  ... and {len(skipped) - _SHOW_SKIPPED} more skipped records", err=True)


@features_app.command("split")
def split(
    src: Path = typer.Argument(..., help="A bottom-up-attention TSV (image_id, image_w, image_h, num_boxes, boxes, features)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one <image_id>.npz per row."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Split a TSV into one npz per image; re-running skips ids already written (resumable)."""
    from ..pipelines import features_split

    report = features_split(src, out, progress=progress)
    typer.echo(report.summary())
    _echo_skipped(report.skipped)


@features_app.command("info")
def info(
    path: Path = typer.Argument(..., help="A feature store: npz folder, .tsv, .h5/.hdf5 or LMDB folder."),
    format: str = typer.Option("auto", "--format", "-f", help="auto, npz, tsv, hdf5 or lmdb"),
    limit: int = typer.Option(0, help="Read only the first N records for the statistics (0 = all)."),
    progress: bool = typer.Option(False, help="Show a progress bar."),
) -> None:
    """Format, count, feature dim, regions per image, box statistics and skipped records."""
    from ..pipelines import features_info

    d = features_info(path, format, limit=limit or None, progress=progress)
    r, b = d["regions"], d["boxes"]
    read = f" (statistics over the first {d['read']})" if d["read"] != d["count"] else ""
    typer.echo(f"{d['path']}: {d['format']}, {d['count']} images{read}, feature dim {d['feature_dim']}")
    typer.echo(f"regions per image: min {r['min']}, mean {r['mean']:.1f}, max {r['max']} ({r['total']} in all)")
    if b["mean_w"] is not None:
        typer.echo(f"boxes: mean size {b['mean_w']:.1f} x {b['mean_h']:.1f} px, corners from "
                   f"({b['min_xy'][0]:.0f}, {b['min_xy'][1]:.0f}) to ({b['max_xy'][0]:.0f}, {b['max_xy'][1]:.0f}); "
                   f"{b['degenerate']} degenerate, {b['outside_image']} outside their image")
    typer.echo(f"image size known for {d['with_image_size']}, class labels for {d['with_labels']}"
               + (f"; {d['nonfinite_values']} NaN/inf feature values" if d["nonfinite_values"] else ""))
    typer.echo(f"skipped records: {len(d['skipped'])}")
    _echo_skipped(d["skipped"])


@features_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Any feature store xmodal reads."),
    to: str = typer.Option("auto", "--to", help="npz, tsv, hdf5 or lmdb (auto: from the --out suffix)."),
    out: Path = typer.Option(..., "--out", "-o"),
    overwrite: bool = typer.Option(False, help="Replace an existing store at --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Copy a store into another format (written beside --out and renamed into place)."""
    from ..pipelines import features_convert

    path, skipped, fmt, count = features_convert(src, out, to, overwrite=overwrite, progress=progress)
    typer.echo(f"wrote '{path}': {fmt}, {count} images; skipped {len(skipped)} malformed records.")
    _echo_skipped(skipped)


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
