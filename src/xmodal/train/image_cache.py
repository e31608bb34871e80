"""Fast training images: a preprocessed, memory-mapped uint8 cache and augmentation for from-scratch towers.

Decoding a JPEG and resizing it costs far more than a small model's step, and the plain collator does
it again for every image at every epoch. ``ImageCache`` decodes each image once, resizes it (shortest
edge to the model's input size, centre crop) and stores the ``(size, size, 3)`` uint8 pixels in one
flat file that training reads through ``np.memmap``. The cache is keyed by

- the preprocessing config (size, resampling, format version): one sub-folder per config, and
- each image's signature (resolved path + byte size + modification time; a content hash for bytes
  and in-memory images): a changed file gets a new signature, so it is decoded again, never served stale.

so one cache folder serves every epoch and later runs (and several datasets). Slots of changed files
are not reused (the file only grows); delete the folder to reclaim the space.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..data.images import open_image
from ..errors import InvalidInputError

CACHE_FORMAT = 1
PIXELS_FILE = "pixels.u8"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class ImagePrep:
    """How cached pixels were made; any change gives a different cache sub-folder."""

    size: int
    resample: str = "bicubic"
    format: int = CACHE_FORMAT

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def fit_image(img: Image.Image, size: int, resample: str = "bicubic") -> np.ndarray:
    """Resize the shorter edge to ``size`` and centre-crop to ``size x size``: ``(size, size, 3)`` uint8."""
    method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[resample]
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.convert("RGB").resize((nw, nh), method, reducing_gap=3.0 if min(w, h) > 3 * size else None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def image_signature(source: Any) -> str:
    """Identity of an image's content: path + size + mtime for files, a hash for bytes/decoded images."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        try:
            st = p.stat()
        except OSError as e:
            raise InvalidInputError(f"image not found: '{source}'.") from e
        return f"file:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if isinstance(source, (bytes, bytearray)):
        return "bytes:" + hashlib.sha1(source).hexdigest()
    if isinstance(source, Image.Image):
        h = hashlib.sha1(source.tobytes())
        h.update(f"{source.mode}{source.size}".encode())
        return "pil:" + h.hexdigest()
    raise InvalidInputError(f"cannot cache an image given as {type(source).__name__}.")


def _as_is(x: Any) -> Any:
    return x


class _Decode:
    """Decode + fit one source (a picklable callable for DataLoader workers)."""

    def __init__(self, sources: Sequence[Any], prep: ImagePrep) -> None:
        self.sources, self.prep = sources, prep

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> np.ndarray:
        return fit_image(open_image(self.sources[i]), self.prep.size, self.prep.resample)


class ImageCache:
    """``(size, size, 3)`` uint8 images in one memory-mapped file under ``root/<size>px-<config hash>/``."""

    def __init__(self, root: str | Path, prep: ImagePrep) -> None:
        self.prep = prep
        self.folder = Path(root) / f"{prep.size}px-{prep.key()}"
        self.item_bytes = prep.size * prep.size * 3
        self._map: np.memmap | None = None
        self._map_len = 0

    # ---------------------------------------------------------------- building
    def _read_index(self) -> dict[str, int]:
        path = self.folder / INDEX_FILE
        if not path.exists():
            return {}
        meta = json.loads(path.read_text())
        if meta.get("prep") != asdict(self.prep):
            raise InvalidInputError(f"image cache '{self.folder}' was made with other settings; delete it or use another --cache-dir.")
        return meta["slots"]

    def ensure(self, sources: Sequence[Any], num_workers: int = 0, show_progress: bool = False) -> list[int]:
        """Slots for ``sources``, decoding (with ``num_workers`` processes) only those not cached yet."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        sigs = [image_signature(s) for s in sources]
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs filling one cache take turns
            slots = self._read_index()
            data = self.folder / PIXELS_FILE
            used = data.stat().st_size // self.item_bytes if data.exists() else 0
            first: dict[str, int] = {}  # one decode per new signature (a file listed twice is cached once)
            for i, s in enumerate(sigs):
                if s not in slots:
                    first.setdefault(s, i)
            todo = list(first.values())
            if todo:
                loader = DataLoader(_Decode([sources[i] for i in todo], self.prep), batch_size=None,
                                    num_workers=num_workers, collate_fn=_as_is)
                with open(data, "r+b" if data.exists() else "wb") as f:
                    f.seek(used * self.item_bytes)
                    f.truncate(used * self.item_bytes)  # drop a partial record left by a killed run
                    for i, arr in zip(todo, tqdm(loader, total=len(todo), desc="caching images", disable=not show_progress)):
                        f.write(np.ascontiguousarray(arr).tobytes())
                        slots[sigs[i]] = used
                        used += 1
                    f.flush()
                    os.fsync(f.fileno())
                # the index names only slots whose bytes are on disk; written last, atomically
                tmp = self.folder / f".{INDEX_FILE}.tmp-{os.getpid()}"
                tmp.write_text(json.dumps({"prep": asdict(self.prep), "slots": slots}))
                os.replace(tmp, self.folder / INDEX_FILE)
        self._map = None
        return [slots[s] for s in sigs]

    # ---------------------------------------------------------------- reading
    def __getitem__(self, slot: int) -> np.ndarray:
        if self._map is None or slot >= self._map_len:  # opened lazily: once per DataLoader worker
            data = self.folder / PIXELS_FILE
            self._map_len = data.stat().st_size // self.item_bytes
            self._map = np.memmap(data, dtype=np.uint8, mode="r", shape=(self._map_len, self.prep.size, self.prep.size, 3))
        return np.array(self._map[slot])  # a copy: the batch must not pin the mapping

    def __getstate__(self) -> dict[str, Any]:  # workers open their own mapping
        return {**self.__dict__, "_map": None, "_map_len": 0}


def model_image_size(backbone: Any) -> int | None:
    """The square input size a pixel backbone expects (None for region-feature backbones)."""
    size = getattr(backbone, "image_size", None)
    if size is None:
        model = getattr(backbone, "model", None)
        cfg = getattr(getattr(model, "config", None), "vision_config", None)
        size = getattr(cfg, "image_size", None)
        if size is None and hasattr(model, "visual"):
            size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else None


class Augment:
    """Random resized crop and/or horizontal flip on a decoded image, for vision towers trained from scratch.

    Flipping swaps left and right: do not use it when captions say "left of"/"right of".
    """

    CHOICES = ("crop", "flip")

    def __init__(self, spec: str, size: int, min_scale: float = 0.5) -> None:
        from torchvision.transforms import v2

        parts = [p.strip() for p in spec.split(",") if p.strip()]
        bad = [p for p in parts if p not in self.CHOICES]
        if bad or not parts:
            raise InvalidInputError(f"unknown augmentation {bad or spec!r}; use a comma-separated list of {', '.join(self.CHOICES)}.")
        ops = []
        if "crop" in parts:
            ops.append(v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True))
        if "flip" in parts:
            ops.append(v2.RandomHorizontalFlip())
        self.spec, self.transform = spec, v2.Compose(ops)

    def __call__(self, img: Image.Image, seed: int | None = None) -> Image.Image:
        """Augment ``img``; with ``seed`` the draw depends on it alone (not on the global RNG or the process),
        which keeps training with DataLoader workers reproducible and a resumed run exact."""
        if seed is None:
            return self.transform(img)
        import torch

        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG: isolate it
            torch.manual_seed(seed)
            return self.transform(img)
