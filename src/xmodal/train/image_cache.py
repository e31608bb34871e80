"""Fast training images: a preprocessed, memory-mapped uint8 cache and augmentation for from-scratch towers.

Decoding a JPEG and resizing it costs far more than a small model's step, and the plain collator does
it again for every image at every epoch. ``ImageCache`` decodes each image once, resizes it (shortest
edge to the model's input size, centre crop) and stores the ``(size, size, 3)`` uint8 pixels in one
flat file that training reads through ``np.memmap``. The cache is keyed by

- the preprocessing config (size, resampling, format version): one sub-folder per config, and
- each image's signature (resolved path + byte size + modification time; a content hash for bytes
  and in-memory images): a changed file gets a new signature, so it is decoded again, never served stale.

so one cache folder serves every epoch and later runs (and several datasets).

Space is reclaimed by compaction, done while filling when no other run has the cache open: entries whose
file changed or disappeared (stale) and records a killed run left without an index entry are dropped once
they make up ``compact_at`` (25 %) of the file, and with ``max_bytes`` (``--cache-max-gb``) entries the
current run does not need are evicted, oldest first, to stay under the bound. The live entries are copied to
a new pixel file and the index switches to it in one atomic rename, so a crash leaves the old cache intact.
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
PIXELS_FILE = "pixels.u8"  # the first pixel file; compaction writes pixels-<n>.u8, named in the index
INDEX_FILE = "index.json"
USERS_FILE = ".users"  # every open cache holds a shared flock on it; compaction needs it exclusively


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


def stale_signature(sig: str) -> bool:
    """True when a file signature no longer describes the file (changed or deleted); bytes/images never go stale."""
    if not sig.startswith("file:"):
        return False
    path, size, mtime = sig[5:].rsplit(":", 2)
    try:
        st = os.stat(path)
    except OSError:
        return True
    return st.st_size != int(size) or st.st_mtime_ns != int(mtime)


class ImageCache:
    """``(size, size, 3)`` uint8 images in one memory-mapped file under ``root/<size>px-<config hash>/``.

    Args:
        max_bytes: bound on the pixel file; entries this run does not need are evicted (oldest first) to stay under it.
        compact_at: share of dead records (stale or orphaned) that triggers a compaction.
    """

    def __init__(self, root: str | Path, prep: ImagePrep, max_bytes: int | None = None, compact_at: float = 0.25) -> None:
        self.prep, self.max_bytes, self.compact_at = prep, max_bytes, compact_at
        self.folder = Path(root) / f"{prep.size}px-{prep.key()}"
        self.item_bytes = prep.size * prep.size * 3
        self.pixels = PIXELS_FILE
        self._map: np.memmap | None = None
        self._map_len = 0
        self._users: Any = None  # the open USERS_FILE (shared flock) while this cache is in use

    # ---------------------------------------------------------------- building
    def _read_index(self) -> dict[str, int]:
        path = self.folder / INDEX_FILE
        if not path.exists():
            return {}
        meta = json.loads(path.read_text())
        if meta.get("prep") != asdict(self.prep):
            raise InvalidInputError(f"image cache '{self.folder}' was made with other settings; delete it or use another --cache-dir.")
        self.pixels = meta.get("pixels", PIXELS_FILE)
        return meta["slots"]

    def _write_index(self, slots: dict[str, int]) -> None:
        # the index names only slots whose bytes are on disk; written last, atomically (the commit point)
        tmp = self.folder / f".{INDEX_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"prep": asdict(self.prep), "pixels": self.pixels, "slots": slots}))
        os.replace(tmp, self.folder / INDEX_FILE)

    def open(self) -> "ImageCache":
        """Register as a user (a shared lock held until ``close``): no other run compacts the file under us."""
        if self._users is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._users = open(self.folder / USERS_FILE, "a")
            fcntl.flock(self._users, fcntl.LOCK_SH)
        return self

    def close(self) -> None:
        if self._users is not None:
            self._users.close()  # releases the shared lock
            self._users = None
        self._map = None

    def _only_user(self) -> bool:
        """Take the users lock exclusively if nobody else holds it (then compaction is safe)."""
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            fcntl.flock(self._users, fcntl.LOCK_SH)  # a failed conversion may have dropped our shared lock
            return False

    def _compact(self, slots: dict[str, int], used: int, needed: set[str], new: int) -> tuple[dict[str, int], int]:
        """Copy the live entries (those this run needs first, then others newest first within ``max_bytes``) to a new file."""
        live = {s: n for s, n in slots.items() if s in needed or not stale_signature(s)}
        keep = [s for s in live if s in needed]
        if self.max_bytes is not None:
            room = self.max_bytes // self.item_bytes - new - len(keep)
            if room < 0:
                gb = (len(keep) + new) * self.item_bytes / 1e9
                raise InvalidInputError(f"the training images need {gb:.2f} GB in the image cache at {self.prep.size} px, "
                                        f"more than --cache-max-gb {self.max_bytes / 1e9:g}; raise it or drop --cache-dir.")
            others = sorted((s for s in live if s not in needed), key=live.get, reverse=True)[:room]
        else:
            others = [s for s in live if s not in needed]
        keep = sorted(keep + others, key=live.get)  # old order: sequential reads
        old = np.memmap(self.folder / self.pixels, dtype=np.uint8, mode="r", shape=(used, self.item_bytes)) if used else None
        generation = int(self.pixels.removeprefix("pixels-").removesuffix(".u8")) + 1 if self.pixels != PIXELS_FILE else 1
        name = f"pixels-{generation}.u8"
        with open(self.folder / name, "wb") as f:
            for s in keep:
                f.write(old[live[s]].tobytes())
            f.flush()
            os.fsync(f.fileno())
        del old
        previous, self.pixels = self.pixels, name
        slots = {s: n for n, s in enumerate(keep)}
        self._write_index(slots)  # commit: from here on readers open the new file
        (self.folder / previous).unlink(missing_ok=True)
        return slots, len(keep)

    def ensure(self, sources: Sequence[Any], num_workers: int = 0, show_progress: bool = False) -> list[int]:
        """Slots for ``sources``, decoding (with ``num_workers`` processes) only those not cached yet."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        self.open()
        sigs = [image_signature(s) for s in sources]
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs filling one cache take turns
            slots = self._read_index()
            data = self.folder / self.pixels
            used = data.stat().st_size // self.item_bytes if data.exists() else 0
            first: dict[str, int] = {}  # one decode per new signature (a file listed twice is cached once)
            for i, s in enumerate(sigs):
                if s not in slots:
                    first.setdefault(s, i)
            needed = set(sigs)
            dead = used - sum(1 for s in slots if s in needed or not stale_signature(s))
            over = self.max_bytes is not None and (used + len(first)) * self.item_bytes > self.max_bytes
            if (over or (dead > 0 and dead >= self.compact_at * used)) and self._only_user():
                try:
                    slots, used = self._compact(slots, used, needed, len(first))
                finally:
                    fcntl.flock(self._users, fcntl.LOCK_SH)
                data = self.folder / self.pixels
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
                self._write_index(slots)
        self._map = None
        return [slots[s] for s in sigs]

    # ---------------------------------------------------------------- reading
    def __getitem__(self, slot: int) -> np.ndarray:
        if self._map is None or slot >= self._map_len:  # opened lazily: once per DataLoader worker
            data = self.folder / self.pixels
            self._map_len = data.stat().st_size // self.item_bytes
            self._map = np.memmap(data, dtype=np.uint8, mode="r", shape=(self._map_len, self.prep.size, self.prep.size, 3))
        return np.array(self._map[slot])  # a copy: the batch must not pin the mapping

    def __getstate__(self) -> dict[str, Any]:  # workers open their own mapping (the parent holds the users lock)
        return {**self.__dict__, "_map": None, "_map_len": 0, "_users": None}


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
