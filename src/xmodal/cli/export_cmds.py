"""``xmodal export``: parse arguments, call ``pipelines.export``."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    model: str = typer.Argument(..., help="Model to export: a saved folder or hub id of a dual encoder (CLIP, SigLIP, Chinese-CLIP)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (new, empty, or an earlier export: replaced)."),
    format: str = typer.Option("onnx", "--format", help="Export format: onnx (text.onnx + image.onnx, dynamic batch)."),
    check: bool = typer.Option(True, help="Compare onnxruntime with torch on sample inputs and print the largest difference."),
) -> None:
    """Export a model's text and image towers (ONNX); load the folder like any model (`--model DIR`) to encode with onnxruntime."""
    from ..pipelines import export as run_export

    done = run_export(model, out, format=format, check=check)
    typer.echo(f"exported '{done['model_id']}' to {done['folder']}: {', '.join(done['files'])} + tokenizer/processor files")
    if done.get("parity"):
        typer.echo("max |onnxruntime - torch|: " + ", ".join(f"{k} {v:.2e}" for k, v in done["parity"].items()))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
