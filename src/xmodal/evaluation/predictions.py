"""Top-10 prediction files for a dataset, in the convention of its ground truth, for the official scorers.

``write_predictions(path, dataset, model)`` ranks the split's images for every text (``direction="t2i"``)
or its texts for every image (``"i2t"``) and writes one line per query:

- text->image: the ground truth's own field names (``query_id``/``item_ids`` for MUGE files,
  ``text_id``/``image_ids`` for Chinese-CLIP files), ids with the ground truth's JSON type (integers stay
  integers, strings stay strings);
- image->text: Chinese-CLIP's ``{"image_id", "text_ids"}`` layout (the only published one), same id types.

Datasets from other formats (Karpathy, CSV, ...) get MUGE field names with their own string ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.chinese_clip import JsonlLayout
from ..data.types import ImageTextDataset
from ..errors import InvalidInputError
from ..models.roles import MultiVectorEncoder
from ..ops.maxsim import maxsim, pad
from .evaluator import RetrievalEvaluator
from .metrics import _top_k_stable
from .muge import PRED_K, write_muge_predictions

_PLAIN = JsonlLayout("plain", "query_id", "query_text", "item_ids", query_ids_int=False, item_ids_int=False)


def layout_of(dataset: ImageTextDataset) -> JsonlLayout:
    """The ground truth's field names and id types (MUGE names with string ids for other formats)."""
    return dataset.extra.get("layout") or _PLAIN


def top_k_rows(dataset: ImageTextDataset, model: Any, k: int = PRED_K, direction: str = "t2i",
               batch_size: int = 64, chunk: int = 1024) -> np.ndarray:
    """``(n_queries, k)`` gallery positions, best first (ties: lower position first), computed ``chunk`` rows at a time."""
    ev = RetrievalEvaluator(dataset, batch_size=batch_size)
    txt, img = ev.embed(model)
    queries, gallery = (txt, img) if direction == "t2i" else (img, txt)
    if len(gallery) < k:
        what = "images" if direction == "t2i" else "texts"
        raise InvalidInputError(f"the split has {len(gallery)} {what}; the official scorers need exactly {k} distinct "
                                f"ids per query, so predictions need at least {k} {what}.")
    late = isinstance(model, MultiVectorEncoder)
    if late:  # MaxSim with the text's tokens as the query side in both directions, as the evaluator scores
        (tv, tm), (iv, im) = pad(txt), pad(img)
    rows = []
    for a in range(0, len(queries), chunk):
        b = a + chunk
        if late:
            s = maxsim(tv[a:b], tm[a:b], iv, im).numpy() if direction == "t2i" else \
                maxsim(tv, tm, iv[a:b], im[a:b]).numpy().T
        else:
            s = queries[a:b] @ gallery.T
        rows.append(_top_k_stable(s, k))
    return np.concatenate(rows) if rows else np.zeros((0, k), dtype=np.int64)


def write_predictions(path: str | Path, dataset: ImageTextDataset, model: Any, direction: str = "t2i",
                      k: int = PRED_K, batch_size: int = 64) -> Path:
    """Write ``dataset``'s top-``k`` predictions of ``model`` in the ground truth's convention (see module doc)."""
    if direction not in ("t2i", "i2t"):
        raise InvalidInputError(f"direction must be 't2i' or 'i2t'; got '{direction}'.")
    lay = layout_of(dataset)
    top = top_k_rows(dataset, model, k, direction, batch_size)
    text_ids = [lay.query_id(c.caption_id if c.caption_id is not None else n) for n, c in enumerate(dataset.captions)]
    image_ids = [lay.item_id(i) for i in dataset.image_ids]
    if direction == "t2i":
        return write_muge_predictions(path, text_ids, [[image_ids[j] for j in row] for row in top], k,
                                      lay.query_key, lay.items_key)
    return write_muge_predictions(path, image_ids, [[text_ids[j] for j in row] for row in top], k,
                                  "image_id", "text_ids")
