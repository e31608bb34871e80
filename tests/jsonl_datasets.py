"""Tiny MUGE / Chinese-CLIP splits on disk (texts jsonl + base64 image TSV), for data, evaluation and CLI tests."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink", "brown", "cyan"]
FIELDS = {"muge": ("query_id", "query_text", "item_ids"), "cnclip": ("text_id", "text", "image_ids")}


def png_b64(colour: str, urlsafe: bool = False) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), colour).save(buf, format="PNG")
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return enc(buf.getvalue()).decode()


def write_split(folder: Path, layout: str = "cnclip", string_ids: bool = False, urlsafe: bool = False,
                split: str = "valid") -> tuple[Path, Path, list[dict]]:
    """12 images (ids 1000..1011) and 13 texts (one per colour + one listing two images).

    Returns (texts jsonl, images TSV, the text records as written).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ident = (lambda v: str(v)) if string_ids else (lambda v: v)
    tsv = folder / f"{split}_imgs.tsv"
    tsv.write_text("".join(f"{1000 + n}\t{png_b64(c, urlsafe)}\n" for n, c in enumerate(COLOURS)))
    qkey, tkey, ikey = FIELDS[layout]
    recs = [{qkey: ident(500 + n), tkey: f"{c} 方块", ikey: [ident(1000 + n)]} for n, c in enumerate(COLOURS)]
    recs.append({qkey: ident(599), tkey: "red or green", ikey: [ident(1000), ident(1001)]})
    texts = folder / f"{split}_texts.jsonl"
    texts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return texts, tsv, recs
