"""The offline demo: train a tiny model on synthetic scenes, index them, search by text, show the results.

No pretrained weights can be downloaded here, so the demo makes everything it needs: a rendered
image collection with captions, a tiny CLIP trained on it for ~20 s, a FAISS index built with the
same code path as ``xmodal index``, and searches whose results are printed and drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .collection import build_collection, open_collection
from .train.recipes import train_demo_model
from .visualize import save_gallery


def run_demo(out: str | Path = "xmodal-demo", steps: int = 1000, seed: int = 0, queries: list[str] | None = None,
             echo: Callable[[str], Any] = print, show_progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    echo(f"[1/4] training a tiny CLIP on synthetic shapes ({steps} steps, CPU)...")
    run = train_demo_model(out / "training", seed=seed, steps=steps, show_progress=show_progress)
    b, a, u = run["before"], run["after"], run["unseen"]
    echo(f"      text->image R@1 on held-out scenes: {b['t2i_R@1']:.1f}% before -> {a['t2i_R@1']:.1f}% after "
         f"(R@5 {a['t2i_R@5']:.1f}%); unseen colour-shape combinations: R@1 {u['t2i_R@1']:.1f}%")
    echo(f"      training curve: {run['curve']}")

    echo("[2/4] writing the test scenes as an image folder...")
    test = run["splits"]["test"]
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for iid, img in test.images.items():
        img.save(images / iid)
    (out / "captions.json").write_text(json.dumps({c.image_id: [] for c in test.captions} | {
        iid: [c.text for c in test.captions if c.image_id == iid] for iid in test.images}, indent=1))

    echo("[3/4] indexing them (same code as `xmodal index`)...")
    report = build_collection(images, str(run["model_dir"]), out / "index", show_progress=show_progress)
    echo(f"      {report.summary()}")

    echo("[4/4] searching:")
    collection = open_collection(out / "index")
    retriever = collection.retriever()
    queries = queries or pick_queries(test)
    captions_of = {iid: {c.text for c in test.captions if c.image_id == iid} for iid in test.images}
    rows, marks = [], []
    for q in queries:
        res = retriever.search(text=q, k=5)
        hits = [_matches(q, captions_of.get(i, set())) for i in res.ids]
        echo(f"  '{q}'")
        for rank, (i, s, h) in enumerate(zip(res.ids, res.scores, hits), start=1):
            echo(f"     {rank}. {s:+.3f} {i:<22} {'match' if h else '':<6} {sorted(captions_of.get(i, []))[0]}")
        rows.append((q, [collection.image_path(i) for i in res.ids], res.scores))
        marks.append(hits)
    gallery = save_gallery(rows, out / "results.png", marks=marks)
    echo(f"\nresults picture: {gallery}   (green frame = the scene matches the query)")
    echo(f"search it yourself: xmodal search {out / 'index'} \"a small green circle\" -k 5")
    return {"training": run, "report": report, "gallery": gallery, "index": out / "index"}


def pick_queries(test: Any, n: int = 4) -> list[str]:
    """Plain captions (no template wrapper) of scenes in the collection: three single objects and one relation."""
    plain = [c.text for c in test.captions if c.lang == "en" and not any(w in c.text for w in ("picture", "image", "background", ","))]
    single = list(dict.fromkeys(t for t in plain if " and " not in t and " of " not in t and "above" not in t and "below" not in t))
    relation = list(dict.fromkeys(t for t in plain if " of " in t or "above" in t or "below" in t))
    return single[: n - 1] + relation[:1]


def _matches(query: str, captions: set[str]) -> bool:
    """A result is correct when one of its captions says the query (templates may wrap it)."""
    return any(query in c for c in captions)
