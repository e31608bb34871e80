"""A synthetic compositional benchmark: rendered scenes of shapes with multilingual captions.

No real dataset can be downloaded here, so this generator makes one on which training must
measurably work: scenes of 1-4 objects, each with a shape, colour and size, placed in a 2x2 grid
(so "left of" / "above" relations are well defined). Captions come from varied templates in
English, German and Chinese. The ``test_unseen`` split holds (colour, shape) combinations never
seen in training, which tests compositional generalisation. Every caption has hard negatives
that differ in exactly one attribute or relation.

    >>> splits = generate(n_train=200, n_test=50, seed=0)      # dict split -> ImageTextDataset
    >>> write_synthetic("synth", n_train=2000)                 # images/ + dataset.json (Karpathy format)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageDraw

from .types import Caption, ImageTextDataset

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
           "purple": (150, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "big")
LANGS = ("en", "de", "zh")

# German: noun gender decides the adjective ending after "ein/eine" (m: -er, n: -es).
DE_SHAPE = {"circle": ("kreis", "m"), "square": ("quadrat", "n"), "triangle": ("dreieck", "n"), "cross": ("kreuz", "n")}
DE_COLOUR = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lila", "orange": "orange",
             "white": "weiß"}
DE_SIZE = {"small": "klein", "big": "groß"}
ZH_SHAPE = {"circle": "圆形", "square": "方形", "triangle": "三角形", "cross": "十字"}
ZH_COLOUR = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
             "white": "白色"}
ZH_SIZE = {"small": "小", "big": "大"}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int  # 0..3 in a 2x2 grid: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right


def _phrase(o: Obj, lang: str, dative: bool = False) -> str:
    if lang == "en":
        return f"a {o.size} {o.colour} {o.shape}"
    if lang == "de":
        noun, gender = DE_SHAPE[o.shape]
        # nominative "ein kleiner/kleines", dative (after "von"/"mit") "einem kleinen"
        art, end = ("einem", "en") if dative else ("ein", "er" if gender == "m" else "es")
        colour = DE_COLOUR[o.colour]
        adj_c = colour if colour in ("lila", "orange") else colour + end  # these two do not inflect
        return f"{art} {DE_SIZE[o.size]}{end} {adj_c} {noun}"
    return f"一个{ZH_SIZE[o.size]}的{ZH_COLOUR[o.colour]}{ZH_SHAPE[o.shape]}"


def _relation(a: Obj, b: Obj) -> str | None:
    """'left'/'right'/'above'/'below' of a relative to b when they share a row/column."""
    ra, ca, rb, cb = a.cell // 2, a.cell % 2, b.cell // 2, b.cell % 2
    if ra == rb:
        return "left" if ca < cb else "right"
    if ca == cb:
        return "above" if ra < rb else "below"
    return None


REL = {"en": {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"},
       "de": {"left": "links von", "right": "rechts von", "above": "über", "below": "unter"},
       "zh": {"left": "在{b}的左边", "right": "在{b}的右边", "above": "在{b}的上边", "below": "在{b}的下边"}}
OPP = {"left": "right", "right": "left", "above": "below", "below": "above"}


def describe(objs: list[Obj], lang: str, rng: random.Random, relation: str | None = None) -> str:
    """One caption for a scene; two-object scenes in a line get a spatial relation."""
    if len(objs) == 2 and (relation or _relation(objs[0], objs[1])):
        rel = relation or _relation(objs[0], objs[1])
        a, b = _phrase(objs[0], lang), _phrase(objs[1], lang, dative=rel in ("left", "right"))
        if lang == "de" and rel in ("above", "below"):
            b = _phrase(objs[1], lang, dative=True)
        if lang == "zh":
            return a + REL["zh"][rel].format(b=b)
        return f"{a} {REL[lang][rel]} {b}"
    parts = [_phrase(o, lang) for o in objs]
    if lang == "en":
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return rng.choice(["{}", "a picture of {}", "an image with {}", "{} on a dark background"]).format(body)
    if lang == "de":
        template = rng.choice(["{}", "ein bild mit {}"])
        parts = [_phrase(o, lang, dative=template != "{}") for o in objs]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " und " + parts[-1]
        return template.format(body)
    body = "和".join(parts)
    return rng.choice(["{}", "一张有{}的图片"]).format(body)


def hard_negatives(objs: list[Obj], lang: str, rng: random.Random, n: int = 3) -> list[str]:
    """Captions that differ from the scene in exactly one attribute (or the relation)."""
    out: list[str] = []
    positive = {describe(objs, lang, random.Random(0))}
    for _ in range(n * 4):
        kind = rng.choice(["colour", "shape", "size"] + (["relation"] if len(objs) == 2 and _relation(*objs) else []))
        if kind == "relation":
            cap = describe(objs, lang, rng, relation=OPP[_relation(objs[0], objs[1])])
        else:
            i = rng.randrange(len(objs))
            o = objs[i]
            pool = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}[kind]
            new = rng.choice([v for v in pool if v != getattr(o, kind)])
            changed = list(objs)
            changed[i] = Obj(**{**o.__dict__, kind: new})
            cap = describe(changed, lang, rng)
        if cap not in out and cap not in positive:
            out.append(cap)
        if len(out) == n:
            break
    return out


def render(objs: list[Obj], size: int = 64, seed: int = 0) -> Image.Image:
    """Draw the scene: dark background, each object in its grid cell with a little jitter."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (25, 25, 30))
    draw = ImageDraw.Draw(img)
    half = size // 2
    for o in objs:
        r = (0.42 if o.size == "big" else 0.22) * half
        cx = (o.cell % 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
        cy = (o.cell // 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif o.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            w = r / 2.5
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    return img


def unseen_combinations(seed: int = 0, share: float = 0.2) -> set[tuple[str, str]]:
    """(colour, shape) pairs held out of training: each colour and each shape still appears in training."""
    rng = random.Random(seed + 7919)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    rng.shuffle(combos)
    held: set[tuple[str, str]] = set()
    for c, s in combos:
        if len(held) >= int(share * len(combos)):
            break
        if sum(1 for x in held if x[0] == c) < len(SHAPES) - 1 and sum(1 for x in held if x[1] == s) < len(COLOURS) - 2:
            held.add((c, s))
    return held


def _scene(rng: random.Random, max_objects: int, allowed: callable) -> list[Obj]:
    while True:
        n = rng.choices(range(1, max_objects + 1), weights=[4, 3, 1, 1][:max_objects])[0]
        cells = rng.sample(range(4), n)
        objs = [Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), c) for c in cells]
        if allowed(objs):
            return objs


def generate(n_train: int = 2000, n_val: int = 200, n_test: int = 200, n_unseen: int = 200, *, seed: int = 0,
             langs: Iterable[str] = ("en",), captions_per_image: int = 2, max_objects: int = 2, image_size: int = 64,
             hard_negatives_per_caption: int = 0) -> dict[str, ImageTextDataset]:
    """Splits ``train``, ``val``, ``test`` (seen combinations) and ``test_unseen``, as in-memory datasets."""
    langs = tuple(langs)
    unknown = set(langs) - set(LANGS)
    if unknown:
        raise ValueError(f"unsupported languages {unknown}; choose from {LANGS}")
    held = unseen_combinations(seed)
    seen_only = lambda objs: all((o.colour, o.shape) not in held for o in objs)  # noqa: E731
    has_unseen = lambda objs: any((o.colour, o.shape) in held for o in objs)  # noqa: E731
    rng = random.Random(seed)
    out: dict[str, ImageTextDataset] = {}
    for split, n, allowed in (("train", n_train, seen_only), ("val", n_val, seen_only), ("test", n_test, seen_only),
                              ("test_unseen", n_unseen, has_unseen)):
        images, captions, negs, scenes, seen_keys = {}, [], {}, {}, set()
        while len(images) < n:
            objs = _scene(rng, max_objects, allowed)
            key = tuple(sorted((o.shape, o.colour, o.size, o.cell) for o in objs))
            if key in seen_keys and len(seen_keys) < 5000:  # prefer distinct scenes
                continue
            seen_keys.add(key)
            iid = f"{split}_{len(images):05d}.png"
            images[iid] = render(objs, image_size, seed=rng.randrange(1 << 30))
            scenes[iid] = [o.__dict__ for o in objs]
            for lang in langs:
                texts: list[str] = []
                for _ in range(captions_per_image * 3):
                    t = describe(objs, lang, rng)
                    if t not in texts:
                        texts.append(t)
                    if len(texts) == captions_per_image:
                        break
                for t in texts:
                    captions.append(Caption(t, iid, lang, f"{iid}#{len(captions)}"))
                    if hard_negatives_per_caption:
                        negs[f"{iid}#{len(captions) - 1}"] = hard_negatives(objs, lang, rng, hard_negatives_per_caption)
        out[split] = ImageTextDataset(images, captions, name="synthetic-shapes", split=split,
                                      extra={"hard_negatives": negs, "scenes": scenes, "unseen": sorted(held)})
    return out


def write_synthetic(out_dir: str | Path, region_feature_dim: int = 0, **kwargs) -> Path:
    """Render the benchmark to ``out_dir/images/*.png`` and ``out_dir/dataset.json`` (Karpathy format).

    Each sentence has ``raw``, ``lang``, ``sentid`` and, with ``hard_negatives_per_caption``, ``hard_negatives``;
    each image has its ``scene`` (objects with shape/colour/size/cell). With ``region_feature_dim`` > 0, also
    ``out_dir/features/<image>.npz`` region features (see ``region_features``). Returns the JSON path.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = generate(**kwargs)
    if region_feature_dim:
        from .features import write_features

        features, _ = region_features(splits, dim=region_feature_dim, seed=kwargs.get("seed", 0),
                                      image_size=kwargs.get("image_size", 64))
        write_features(features, out / "features", format="npz")
    records = []
    sentid = 0
    for split, ds in splits.items():
        by_image: dict[str, list[Caption]] = {}
        for c in ds.captions:
            by_image.setdefault(c.image_id, []).append(c)
        for iid, img in ds.images.items():
            img.save(out / "images" / iid)
            sents = []
            for c in by_image.get(iid, []):
                s = {"raw": c.text, "lang": c.lang, "sentid": sentid}
                if c.caption_id in ds.extra["hard_negatives"]:
                    s["hard_negatives"] = ds.extra["hard_negatives"][c.caption_id]
                sents.append(s)
                sentid += 1
            records.append({"filename": iid, "filepath": "images", "split": split, "sentences": sents,
                            "scene": ds.extra["scenes"][iid]})
    meta = {"dataset": "synthetic-shapes", "unseen_combinations": [list(x) for x in splits["train"].extra["unseen"]],
            "generator": {k: v for k, v in kwargs.items()}, "images": records}
    path = out / "dataset.json"
    path.write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    return path


def all_caption_texts(splits: dict[str, ImageTextDataset]) -> list[str]:
    """Every caption and hard negative, e.g. to build a tiny tokenizer's vocabulary."""
    texts = [c.text for ds in splits.values() for c in ds.captions]
    texts += [t for ds in splits.values() for negs in ds.extra.get("hard_negatives", {}).values() for t in negs]
    return texts


def region_features(splits: dict[str, ImageTextDataset], dim: int = 64, *, clutter: int = 2, noise: float = 0.3,
                    image_size: int = 64, seed: int = 0) -> tuple[dict[str, Any], dict[str, ImageTextDataset]]:
    """Detector-style region features for the synthetic scenes (for OSCAR/UNITER/TERN-style models).

    Each object becomes one region: ``relu(attributes @ W + noise)``, where ``attributes`` one-hot
    encodes colour, shape and size and ``W`` is a fixed random (seeded) ``(13, dim)`` matrix, with the
    object's pixel box as the detector's box and its shape as the class label. ``clutter`` extra regions
    per image carry no attributes (background detections). Region order is shuffled, so only the boxes
    tell where an object is ("left of", "above"). This stands in for bottom-up-attention features, which
    cannot be downloaded here; it is not a detector.

    Returns ``(features, region_splits)``: image id -> ``RegionFeatures``, and the same splits with each
    image source replaced by its id (resolve them with ``FeatureStore.from_dict(features)``).
    """
    import numpy as np

    from .features import RegionFeatures

    rng = np.random.default_rng(seed + 4242)
    attrs = [*COLOURS, *SHAPES, *SIZES]
    weights = rng.standard_normal((len(attrs), dim)).astype(np.float32)
    features: dict[str, Any] = {}
    out: dict[str, ImageTextDataset] = {}
    half = image_size / 2
    for split, ds in splits.items():
        for iid in ds.images:
            regions, boxes, labels = [], [], []
            for o in ds.extra["scenes"][iid]:
                onehot = np.zeros(len(attrs), np.float32)
                onehot[[attrs.index(o["colour"]), attrs.index(o["shape"]), attrs.index(o["size"])]] = 1.0
                regions.append(np.maximum(onehot @ weights + noise * rng.standard_normal(dim), 0.0))
                r = (0.42 if o["size"] == "big" else 0.22) * half
                cx = (o["cell"] % 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
                cy = (o["cell"] // 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
                boxes.append([cx - r, cy - r, cx + r, cy + r])
                labels.append(SHAPES.index(o["shape"]))
            for _ in range(clutter):
                regions.append(np.maximum(noise * rng.standard_normal(dim), 0.0))
                x, y = rng.uniform(0, image_size - 4, 2)
                boxes.append([x, y, min(image_size, x + rng.uniform(2, 12)), min(image_size, y + rng.uniform(2, 12))])
                labels.append(len(SHAPES))
            order = rng.permutation(len(regions))
            features[iid] = RegionFeatures(regions=np.asarray(regions, np.float32)[order],
                                           boxes=np.asarray(boxes, np.float32)[order], image_w=image_size,
                                           image_h=image_size, labels=np.asarray(labels, np.int64)[order])
        out[split] = ImageTextDataset({iid: iid for iid in ds.images}, list(ds.captions), name=f"{ds.name}-regions",
                                      split=split, extra=ds.extra)
    return features, out
