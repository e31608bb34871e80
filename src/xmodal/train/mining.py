"""Mined hard negatives: for each caption the nearest non-matching images, for each image the nearest non-matching captions.

The training set is encoded with the current model and searched with an exact FAISS inner-product index.
False negatives are excluded: an image is a positive of a caption when any of the image's captions has
the same text (after lower-casing and collapsing spaces) - datasets repeat captions across images, and a
"negative" that fits the caption word for word would teach the model to separate true matches.
The result is written beside the dataset as JSON (with a signature of the captions, so a file mined for
another version of the dataset is refused) and read by ``xmodal train --hard-negatives``.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.types import ImageTextDataset
from ..errors import InvalidInputError

FORMAT = 1


@dataclass
class MinedNegatives:
    """What ``read_negatives`` gives the trainer: both directions of a mined file.

    ``t2i``: caption index -> negative image ids (hardest first); ``i2t``: image id -> negative caption indices.
    Neither ever holds a positive (see ``positives``).
    """

    t2i: dict[int, list[str]] = field(default_factory=dict)
    i2t: dict[str, list[int]] = field(default_factory=dict)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def dataset_signature(dataset: ImageTextDataset) -> str:
    h = hashlib.sha1()
    for c in dataset.captions:
        h.update(f"{c.image_id}\t{c.text}\n".encode())
    return h.hexdigest()


def positives(dataset: ImageTextDataset) -> tuple[list[set[str]], dict[str, set[str]]]:
    """Per caption: the image ids it describes (its own + every image with a caption of the same text);
    per image: the normalised texts of its captions."""
    images_of_text: dict[str, set[str]] = defaultdict(set)
    texts_of_image: dict[str, set[str]] = defaultdict(set)
    for c in dataset.captions:
        images_of_text[_norm(c.text)].add(c.image_id)
        texts_of_image[c.image_id].add(_norm(c.text))
    return [images_of_text[_norm(c.text)] for c in dataset.captions], texts_of_image


def mine_negatives(model: Any, dataset: ImageTextDataset, k: int = 10, batch_size: int = 64,
                   show_progress: bool = False) -> dict[str, Any]:
    """``{"t2i": {caption index: [image ids]}, "i2t": {image id: [caption indices]}}``, hardest first, no positives."""
    import faiss

    if k < 1:
        raise InvalidInputError(f"k must be at least 1; got {k}.")
    image_ids = list(dataset.images)
    texts = [c.text for c in dataset.captions]
    t = np.ascontiguousarray(model.encode_text(texts, batch_size=batch_size, show_progress=show_progress), dtype=np.float32)
    i = np.ascontiguousarray(model.encode_image([dataset.images[x] for x in image_ids], batch_size=batch_size,
                                                show_progress=show_progress), dtype=np.float32)
    pos_images, texts_of_image = positives(dataset)
    image_index = faiss.IndexFlatIP(i.shape[1])
    image_index.add(i)
    depth = min(len(image_ids), k + max(len(p) for p in pos_images))  # enough to skip every positive
    _, near = image_index.search(t, depth)
    t2i = {}
    for q, row in enumerate(near):
        t2i[q] = [image_ids[j] for j in row if j >= 0 and image_ids[j] not in pos_images[q]][:k]
    text_index = faiss.IndexFlatIP(t.shape[1])
    text_index.add(t)
    same_text = defaultdict(int)
    for c in dataset.captions:
        same_text[_norm(c.text)] += 1
    extra = max(sum(same_text[x] for x in texts_of_image[iid]) for iid in image_ids)
    _, near = text_index.search(i, min(len(texts), k + extra))
    i2t = {}
    for q, row in enumerate(near):
        own = texts_of_image[image_ids[q]]
        i2t[image_ids[q]] = [int(j) for j in row if j >= 0 and _norm(texts[j]) not in own][:k]
    return {"t2i": t2i, "i2t": i2t}


def write_negatives(path: str | Path, mined: dict[str, Any], dataset: ImageTextDataset, model_id: str = "") -> Path:
    path = Path(path)
    doc = {"format": FORMAT, "dataset": dataset_signature(dataset), "split": dataset.split, "model_id": model_id,
           "t2i": {str(q): v for q, v in mined["t2i"].items()}, "i2t": mined["i2t"]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def read_negatives(path: str | Path, dataset: ImageTextDataset) -> MinedNegatives:
    """Both directions of a mined file (caption -> images, image -> captions), refused if mined for other captions."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read hard negatives '{path}': {e}") from e
    if doc.get("dataset") != dataset_signature(dataset):
        raise InvalidInputError(f"hard negatives '{path}' were mined for another dataset or split; run "
                                "`xmodal mine-negatives` again for this one.")
    return MinedNegatives(t2i={int(q): v for q, v in doc["t2i"].items()},
                          i2t={iid: [int(j) for j in v] for iid, v in doc.get("i2t", {}).items()})
