"""Pretrained late-interaction checkpoints from the command line: a tiny ColPali indexes rendered pages,
`xmodal search` finds the planted page, `xmodal evaluate` scores it; unknown layouts fail in one line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from xmodal.models.tiny_late import build_tiny_colpali

PAGES = {
    "page_0.png": "annual report title",
    "page_1.png": "revenue table two",
    "page_2.png": "the cat and the dog",
    "page_3.png": "chart of red numbers",
    "page_4.png": "paris is the capital",
    "page_5.png": "figure three blue",
}


def run(*args: str) -> subprocess.CompletedProcess:
    """In-process console entry point (importing transformers once keeps this test fast on a busy machine)."""
    import contextlib
    import io

    from xmodal.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def pages_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("colpali-e2e")
    pages = root / "pages"
    pages.mkdir()
    for i, (name, text) in enumerate(PAGES.items()):  # a few text "pages", each drawn differently
        img = Image.new("RGB", (56, 72), "white")
        draw = ImageDraw.Draw(img)
        for line, word in enumerate(text.split()):
            draw.text((3 + 2 * i, 4 + 12 * line), word, fill=(20 * i, 0, 120))
        draw.rectangle((4 * i, 60, 4 * i + 12, 70), fill="black")
        img.save(pages / name)
    model = build_tiny_colpali(root / "tiny-colpali", extra_texts=PAGES.values())
    return pages, model


def test_index_search_evaluate_with_a_colpali_folder(pages_and_model, tmp_path):
    pages, model_dir = pages_and_model
    idx = tmp_path / "idx"
    r = run("index", str(pages), "--engine", "late-interaction", "--model", str(model_dir), "--out", str(idx),
            "--nbits", "0", "-q")
    assert r.returncode == 0, r.stderr
    assert "6 added" in r.stdout

    # the planted page, asked for by its own content (the page image as the query), comes first
    for planted in ("page_3.png", "page_4.png"):
        r = run("search", str(idx), "--image", str(pages / planted), "--json", "-k", "3")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ids"][0] == planted

    # a text query: the ranking is exactly the one transformers' own ColPali gives (MaxSim of its embeddings)
    query = "which page shows the revenue table"
    r = run("search", str(idx), query, "--json", "-k", "6")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    from transformers import ColPaliForRetrieval, ColPaliProcessor

    hf, proc = ColPaliForRetrieval.from_pretrained(model_dir).eval(), ColPaliProcessor.from_pretrained(model_dir)
    names = sorted(PAGES)
    with torch.no_grad():
        q = hf(**{k: v for k, v in proc(text=[query], return_tensors="pt").items() if k != "token_type_ids"}).embeddings[0]
        d = hf(**{k: v for k, v in proc(images=[Image.open(pages / n).convert("RGB") for n in names],
                                         return_tensors="pt").items() if k not in ("labels", "token_type_ids")}).embeddings
    scores = (q @ d.transpose(1, 2)).max(dim=2).values.sum(dim=1).numpy()
    want = [names[i] for i in np.argsort(-scores, kind="stable")]
    assert got["ids"] == want
    np.testing.assert_allclose(got["scores"], np.sort(scores)[::-1], rtol=1e-4)

    # evaluate: page captions as queries, pages as documents
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{n},{t}\n" for n, t in PAGES.items()))
    r = run("evaluate", "--dataset", f"csv:{csv}", "--images", str(pages), "--model", str(model_dir),
            "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())["retrieve"]
    assert 0 <= metrics["t2i_R@1"] <= 100 and metrics["t2i_R@10"] == 100.0  # 6 pages: every page within 10


def test_late_model_needs_the_late_engine_and_unknown_layouts_fail_in_one_line(pages_and_model, tmp_path):
    pages, model_dir = pages_and_model
    r = run("index", str(pages), "--model", str(model_dir), "--out", str(tmp_path / "a"), "-q")
    assert r.returncode == 2 and "colpali" in r.stderr and "Traceback" not in r.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    r = run("index", str(pages), "--engine", "late-interaction", "--model", str(odd), "--out", str(tmp_path / "b"), "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "error:" in r.stderr


def test_colqwen2_pages_of_different_sizes_are_refused_in_one_line(tmp_path):
    from xmodal.models.tiny_late import build_tiny_colqwen2

    pages = tmp_path / "pages"
    pages.mkdir()
    for i, size in enumerate([(56, 84), (112, 56)]):
        Image.new("RGB", size, (90 * i, 0, 0)).save(pages / f"p{i}.png")
    model = build_tiny_colqwen2(tmp_path / "m")
    r = run("index", str(pages), "--engine", "late-interaction", "--model", str(model), "--out", str(tmp_path / "i"), "-q")
    assert r.returncode == 2 and "different number of vectors" in r.stderr and "Traceback" not in r.stderr
