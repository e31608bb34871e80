"""Pictures of results: a contact sheet (PNG) of queries and their top images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .data.images import open_image


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def save_gallery(
    rows: Sequence[tuple[str, Sequence[str | Path], Sequence[float]]],
    out: str | Path,
    thumb: int = 96,
    marks: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """Write one row per query: its text on the left, then its result images with scores.

    Args:
        rows: ``(query label, image paths best first, scores)`` per query.
        marks: optional per-result flags (e.g. "is a correct match"), drawn as a green/red frame.
    """
    label_w, pad, text_h = 260, 6, 16
    cols = max((len(paths) for _, paths, _ in rows), default=0)
    sheet = Image.new("RGB", (label_w + cols * (thumb + pad) + pad, len(rows) * (thumb + text_h + 2 * pad) + pad), "white")
    draw, font = ImageDraw.Draw(sheet), _font(13)
    for r, (label, paths, scores) in enumerate(rows):
        y = pad + r * (thumb + text_h + 2 * pad)
        words, line, lines = label.split(), "", []
        for w in words:  # wrap the query text to the label column
            if draw.textlength(f"{line} {w}".strip(), font=font) > label_w - 2 * pad:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        for j, ln in enumerate(lines[:6]):
            draw.text((pad, y + j * text_h), ln, fill="black", font=font)
        for c, (path, score) in enumerate(zip(paths, scores)):
            x = label_w + c * (thumb + pad)
            try:
                img = open_image(path)
                img.thumbnail((thumb, thumb))
            except Exception:  # a missing file must not break the picture of everything else
                img = Image.new("RGB", (thumb, thumb), "lightgray")
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
            if marks is not None:
                colour = "green" if marks[r][c] else "red"
                draw.rectangle((x - 2, y - 2, x + thumb + 1, y + thumb + 1), outline=colour, width=3)
            draw.text((x, y + thumb + 2), f"{score:.3f}", fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
