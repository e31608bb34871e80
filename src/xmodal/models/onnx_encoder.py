"""ONNX export of a dual encoder's towers, and the ``onnx`` model kind that encodes with onnxruntime.

``export_onnx(model, out)`` (``xmodal export MODEL --format onnx --out DIR``) writes ``text.onnx`` and
``image.onnx`` (L2-normalised embeddings, dynamic batch axis; the text's sequence axis is dynamic too),
the tokenizer and image processor files beside them (tokenization and preprocessing stay in Python), and an
``xmodal.json`` of kind ``onnx`` recording the source model's id and weight fingerprint, so indexes built
with the torch model accept the exported one and the other way round. ``load_model(DIR)`` then returns an
``OnnxEncoder``: ``encode_text``/``encode_image`` as the torch model's, run by onnxruntime.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter). With torch 2.14.1 the
default dynamo exporter took ~30 s per tower of a tiny CLIP and wrote a graph onnxruntime 1.32 refuses
("Duplicate definition of name"); the TorchScript one exports in about a second with max |diff| ~2e-7.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelNotFoundError
from .registry import ModelConfig, read_config, register_kind, write_config

KIND = "onnx"
FORMAT = 1
OPSET = 17
INSTALL = "pip install 'xmodal[onnx]' (or: pip install onnx onnxruntime)"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelNotFoundError(f"running ONNX models needs onnxruntime: {INSTALL}.") from None
    return onnxruntime


def _check_exportable(model: Any, name: str) -> None:
    from .backbones import HFBackbone

    kind = getattr(model, "kind", type(model).__name__)
    if kind == KIND:
        raise InvalidInputError(f"'{name}' is already an ONNX export.")
    if kind != "dual" or not isinstance(getattr(model, "backbone", None), HFBackbone):
        raise InvalidInputError(
            f"cannot export '{name}' to ONNX: it is a '{kind}' model; export supports dual encoders from transformers "
            "(CLIP, SigLIP, Chinese-CLIP)." + (" open_clip models are not supported yet."
                                               if getattr(getattr(model, "backbone", None), "backend", "") == "open_clip" else ""))


def _towers(backbone: Any) -> tuple[Any, Any]:
    import torch

    class Text(torch.nn.Module):
        def __init__(self, names: Sequence[str]) -> None:
            super().__init__()
            self.backbone, self.names = backbone, list(names)

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            feats = self.backbone.text_features(dict(zip(self.names, inputs)))
            return torch.nn.functional.normalize(feats.float(), dim=-1)

    class Image(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            feats = self.backbone.image_features({"pixel_values": pixel_values})
            return torch.nn.functional.normalize(feats.float(), dim=-1)

    return Text, Image


def _sample_images(side: int) -> list[Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (side + 7 * i, side + 3 * i, 3), dtype=np.uint8)) for i in range(3)]


SAMPLE_TEXTS = ["a photo", "a small red circle left of a big blue square", "一 个 红 色 的 圆"]


def export_onnx(model: Any, out: str | Path, *, opset: int = OPSET, check: bool = True) -> dict[str, Any]:
    """Write ``model``'s towers as ONNX into the folder ``out`` (new, empty, or an earlier ONNX export, replaced
    whole). ``model``: a loaded ``DualEncoder`` or a name/folder. Returns what was written and, with ``check``,
    the largest |difference| between onnxruntime and torch on sample inputs (``parity``)."""
    import torch

    from .fingerprint import weights_fingerprint
    from .registry import load_model

    name = str(model) if isinstance(model, (str, Path)) else getattr(model, "model_id", "model")
    if isinstance(model, (str, Path)):
        config = read_config(model)
        if config is not None and config.kind != "dual":
            _check_exportable(type("M", (), {"kind": config.kind})(), name)
        model = load_model(model, role="single-vector")
    _check_exportable(model, name)
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ModelNotFoundError(f"ONNX export needs the onnx package: {INSTALL}.") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        cfg = read_config(out) if (out / "xmodal.json").is_file() else None
        if cfg is None or cfg.kind != KIND:
            raise InvalidInputError(f"'{out}' is not empty and not an ONNX export; give a new or empty folder.")
    model = model.to("cpu").float().eval()
    bb = model.backbone
    text_batch = bb.tokenize(SAMPLE_TEXTS[:2])
    names = list(text_batch)
    side = int(getattr(getattr(bb.model.config, "vision_config", None), "image_size", 224))
    pixels = bb.preprocess(_sample_images(side)[:2])["pixel_values"]
    Text, Image = _towers(bb)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        seq_axis = {} if bb.padding == "max_length" else {1: "sequence"}
        with torch.no_grad():
            torch.onnx.export(Text(names).eval(), tuple(text_batch[n] for n in names), str(staging / "text.onnx"),
                              input_names=names, output_names=["text_embeds"], opset_version=opset, dynamo=False,
                              dynamic_axes={**{n: {0: "batch", **seq_axis} for n in names}, "text_embeds": {0: "batch"}})
            torch.onnx.export(Image().eval(), (pixels,), str(staging / "image.onnx"), input_names=["pixel_values"],
                              output_names=["image_embeds"], opset_version=opset, dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
        bb.tokenizer.save_pretrained(staging)
        bb.image_processor.save_pretrained(staging)
        extra = {"format": FORMAT, "text_inputs": names, "padding": bb.padding, "max_length": bb.max_length,
                 "image_size": side, "fingerprint": weights_fingerprint(model), "source": name,
                 "files": {f: _sha256(staging / f) for f in ("text.onnx", "image.onnx")}}
        write_config(staging, ModelConfig(kind=KIND, backend="onnxruntime", model_id=model.model_id,
                                          dims={"dim": int(model.embedding_dim)}, extra=extra))
        parity = _parity(model, staging) if check else None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"folder": str(out), "files": ["text.onnx", "image.onnx"], "model_id": model.model_id, "parity": parity}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parity(model: Any, folder: Path) -> dict[str, float]:
    """Largest |onnxruntime - torch| over sample texts and images of several sizes (batch sizes 1 and 3)."""
    enc = OnnxEncoder.from_pretrained(folder)
    images = _sample_images(enc.image_size)
    out = {}
    for what, items in (("text", SAMPLE_TEXTS), ("image", images)):
        fn = "encode_text" if what == "text" else "encode_image"
        diffs = [np.abs(getattr(enc, fn)(items[:n], batch_size=n) - getattr(model, fn)(items[:n], batch_size=n)).max()
                 for n in (1, len(items))]
        out[what] = float(max(diffs))
    return out


@register_kind(KIND)
class OnnxEncoder:
    """A dual encoder exported by ``export_onnx``, encoding with onnxruntime (a ``SingleVectorEncoder``).

    >>> enc = OnnxEncoder.from_pretrained("clip-onnx/")  # doctest: +SKIP
    >>> enc.encode_text(["a photo of a cat"])             # (1, d) float32, L2-normalised
    """

    kind = KIND

    def __init__(self, folder: Path, config: ModelConfig, device: Any = None) -> None:
        ort = _onnxruntime()
        from transformers import AutoImageProcessor, AutoTokenizer

        extra = config.extra
        if int(extra.get("format", 0)) > FORMAT:
            raise ModelNotFoundError(f"'{folder}' is an ONNX export of a newer format; upgrade xmodal.")
        for f in ("text.onnx", "image.onnx"):
            if not (folder / f).is_file():
                raise ModelNotFoundError(f"ONNX export '{folder}' is missing {f}; export it again (xmodal export).")
        providers = ["CPUExecutionProvider"]
        if device is not None and str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            opts.intra_op_num_threads = int(threads)
        self.text_session = ort.InferenceSession(str(folder / "text.onnx"), sess_options=opts, providers=providers)
        self.image_session = ort.InferenceSession(str(folder / "image.onnx"), sess_options=opts, providers=providers)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.image_processor = AutoImageProcessor.from_pretrained(str(folder))
        self.folder = folder
        self.model_id = config.model_id or str(folder)
        self.recorded_fingerprint = extra.get("fingerprint")  # the torch weights it was exported from
        self.text_inputs = list(extra.get("text_inputs") or ["input_ids", "attention_mask"])
        self.padding = extra.get("padding", True)
        self.max_length = int(extra.get("max_length", 77))
        self.image_size = int(extra.get("image_size", 224))
        self._dim = int(config.dims.get("dim", 0)) or int(self.text_session.get_outputs()[0].shape[-1])

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: Any = None, dtype: Any = None) -> "OnnxEncoder":
        """Open an export folder; ``device`` ``cuda`` uses onnxruntime's CUDA provider when installed.
        ``dtype`` is ignored: the exported graphs compute in float32."""
        folder = Path(str(name_or_path)).expanduser()
        config = read_config(folder)
        if config is None or config.kind != KIND:
            raise ModelNotFoundError(f"'{folder}' is not an ONNX export (xmodal export MODEL --format onnx).")
        return cls(folder, config, device=device)

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def load_image(self, source: Any) -> Any:
        from ..data.images import open_image

        return open_image(source)

    # ------------------------------------------------------------------ encoding
    def _tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return {n: np.asarray(enc[n], dtype=np.int64) for n in self.text_inputs}

    def _pixels(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        px = self.image_processor(images=list(images), return_tensors="np")["pixel_values"]
        return {"pixel_values": np.asarray(px, dtype=np.float32)}

    def _run(self, session: Any, feeds: dict[str, Any]) -> np.ndarray:
        feeds = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in feeds.items()}
        return session.run(None, feeds)[0].astype(np.float32, copy=False)

    def _encode(self, items: Sequence[Any], prepare: Any, session: Any, batch_size: int, show_progress: bool | None,
                desc: str, convert_to: str) -> Any:
        from tqdm.auto import tqdm

        n = len(items)
        show = n > batch_size if show_progress is None else show_progress
        chunks = [self._run(session, prepare(items[s:s + batch_size]))
                  for s in tqdm(range(0, n, batch_size), desc=desc, disable=not show, unit="batch")]
        out = np.concatenate(chunks) if chunks else np.empty((0, self.embedding_dim), dtype=np.float32)
        if convert_to == "torch":
            import torch

            return torch.from_numpy(out)
        return out

    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 64, show_progress: bool | None = None,
                    convert_to: str = "numpy") -> Any:
        """Embed texts: ``(n, d)`` float32, L2-normalised, in input order."""
        from .base import as_texts

        return self._encode(as_texts(texts), self._tokens, self.text_session, batch_size, show_progress,
                            "encode text", convert_to)

    def encode_image(self, images: Sequence[Any] | Any, batch_size: int = 32, show_progress: bool | None = None,
                     convert_to: str = "numpy") -> Any:
        """Embed images (``PIL.Image``, paths or bytes): ``(n, d)`` float32, L2-normalised, in input order."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self._encode(list(images), lambda chunk: self._pixels([self.load_image(x) for x in chunk]),
                            self.image_session, batch_size, show_progress, "encode images", convert_to)

    def text_embeddings(self, batch: dict[str, Any]) -> Any:
        """Embeddings of a tokenized batch (a torch tensor, not differentiable: train the torch model)."""
        import torch

        return torch.from_numpy(self._run(self.text_session, {n: batch[n] for n in self.text_inputs}))

    def image_embeddings(self, batch: dict[str, Any]) -> Any:
        import torch

        return torch.from_numpy(self._run(self.image_session, {"pixel_values": batch["pixel_values"]}))

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T


def onnx_folder(name_or_path: str | Path, cache_dir: str | Path | None = None) -> str:
    """An ONNX export of ``name_or_path``: the folder itself when it is one, else an export made once into
    ``cache_dir`` (default ``$XMODAL_CACHE/onnx`` or ``~/.cache/xmodal/onnx``), keyed by the model's path and
    the sizes and times of its files (a changed checkpoint is exported again)."""
    config = read_config(name_or_path)
    if config is not None and config.kind == KIND:
        return str(name_or_path)
    path = Path(str(name_or_path)).expanduser()
    key = str(path.resolve()) if path.is_dir() else str(name_or_path)
    if path.is_dir():
        key += "".join(f"|{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir()) if p.is_file())
    root = Path(cache_dir or os.environ.get("XMODAL_CACHE") or Path.home() / ".cache" / "xmodal") / "onnx"
    target = root / hashlib.sha256(key.encode()).hexdigest()[:20]
    if not (target / "xmodal.json").is_file():
        export_onnx(str(name_or_path), target)
    return str(target)


def source_of(name_or_path: str | Path) -> str:
    """The model an ONNX export was made from (to run it in torch again); other models are returned as they are."""
    config = read_config(name_or_path)
    if config is None or config.kind != KIND:
        return str(name_or_path)
    source = config.extra.get("source")
    if not source or not (Path(source).is_dir() or "/" in source and not Path(source).is_absolute()):
        raise ModelNotFoundError(f"'{name_or_path}' is an ONNX export whose torch model ('{source}') is not at hand; "
                                 "pass --model with the torch model.")
    return str(source)


def with_runtime(name_or_path: str | Path, runtime: str | None) -> str:
    """The model to load for ``runtime``: ``None`` as given; ``onnx`` an ONNX export (made once into the cache
    when needed); ``torch`` the torch model an export was made from."""
    if runtime in (None, "auto"):
        return str(name_or_path)
    if runtime == "onnx":
        return onnx_folder(name_or_path)
    if runtime == "torch":
        return source_of(name_or_path)
    raise InvalidInputError(f"unknown runtime '{runtime}'; use torch or onnx.")
