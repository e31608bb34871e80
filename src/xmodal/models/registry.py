"""Model kinds: one saved-config format, one table of kinds, one loader.

Every saved xmodal model folder has an ``xmodal.json`` (``ModelConfig``): which kind of model it is, the
backbone backend, the model id and kind-specific settings. This module is the only one that reads or
writes that file. A model class registers its kind with one line::

    @register_kind("dual")
    class DualEncoder(nn.Module): ...

and ``load_model(path)`` picks the class from the folder's own config (hub ids and open_clip names, which
have no ``xmodal.json``, are dual encoders; rerankers without one are BLIP cross-encoders). A kind
defined in a new file of ``xmodal.models`` is found without importing it first: an unknown kind makes
the registry import the package's remaining modules once.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import InvalidInputError, ModelNotFoundError
from ..io import atomic_write_json
from .roles import ROLE_NAMES, MultiVectorEncoder, PairScorer, as_role

CONFIG_FILE = "xmodal.json"
_FIELDS = ("kind", "backend", "model_id")

T = TypeVar("T", bound=type)


@dataclass
class ModelConfig:
    """What ``xmodal.json`` records.

    ``dims``: sizes the kind needs to rebuild itself (e.g. ``{"dim": 128}`` for late interaction);
    ``extra``: other kind-specific settings (e.g. the joint model's ``head``), stored at the top level.
    """

    kind: str = "dual"
    backend: str | None = None
    model_id: str | None = None
    dims: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "backend": self.backend, "model_id": self.model_id}
        if self.dims:
            out["dims"] = dict(self.dims)
        clash = set(self.extra) & {*_FIELDS, "dims"}
        if clash:
            raise InvalidInputError(f"model config extra keys {sorted(clash)} clash with ModelConfig fields.")
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        rest = {k: v for k, v in data.items() if k not in (*_FIELDS, "dims")}
        dims = dict(data.get("dims") or {})
        if "dim" in rest:  # folders saved before ModelConfig kept the late-interaction size at the top level
            dims.setdefault("dim", rest.pop("dim"))
        return cls(kind=data.get("kind") or "dual", backend=data.get("backend"), model_id=data.get("model_id"),
                   dims=dims, extra=rest)


def read_config(name_or_path: str | Path) -> ModelConfig | None:
    """The ``ModelConfig`` of a saved folder; ``None`` for hub ids, open_clip names and folders without one."""
    file = Path(str(name_or_path)).expanduser() / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(f"'{file}' is not a readable model config ({type(e).__name__}: {e}).") from e
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"'{file}' is not a model config (expected a JSON object).")
    return ModelConfig.from_dict(data)


def write_config(folder: str | Path, config: ModelConfig) -> Path:
    """Write ``config`` as ``folder/xmodal.json`` (atomically: a reader never sees half a file)."""
    return atomic_write_json(Path(folder) / CONFIG_FILE, config.to_dict())


def read_checkpoint_config(name_or_path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a local folder or of a hub id (cache first); ``None`` when there is none to read."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        return json.loads(cfg.read_text()) if cfg.exists() else None
    name = str(name_or_path)
    if name.startswith("hf:"):
        name = name[3:]
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or ":" in name:  # not a hub id (open_clip:...)
        return None
    try:  # a hub id: the cached/downloaded config.json (fails fast offline)
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "config.json")).read_text())
    except Exception:
        return None


def _checkpoint_kind(name_or_path: str | Path) -> str | None:
    """The kind of a third-party checkpoint whose ``config.json`` ``model_type`` a registered kind claims."""
    model_type = str((read_checkpoint_config(name_or_path) or {}).get("model_type", "")).lower()
    if not model_type:
        return None
    if model_type not in CHECKPOINT_TYPES:
        _discover()
    return CHECKPOINT_TYPES.get(model_type)


# ---------------------------------------------------------------------------------------------- kinds
KINDS: dict[str, type] = {}
CHECKPOINT_TYPES: dict[str, str] = {}  # config.json model_type of a third-party checkpoint -> kind
_discovered = False
_import_failures: dict[str, str] = {}


def register_kind(kind: str, model_types: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Class decorator: ``@register_kind("dual")`` adds the class to ``KINDS`` and sets its ``kind``.

    The class needs ``from_pretrained(name_or_path, device=None, dtype=None, **kw)`` and, to be saved,
    a ``save(folder)`` that writes its ``ModelConfig`` with ``write_config``. ``model_types``: the
    ``config.json`` ``model_type`` values of third-party checkpoints (no ``xmodal.json``) that are this kind,
    e.g. ``("colpali", "colqwen2")``.
    """

    def add(cls: T) -> T:
        old = KINDS.get(kind)
        if old is not None and f"{old.__module__}.{old.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise InvalidInputError(f"model kind '{kind}' is already registered by {old.__module__}.{old.__qualname__}.")
        cls.kind = kind
        KINDS[kind] = cls
        CHECKPOINT_TYPES.update({t.lower(): kind for t in model_types})
        return cls

    return add


def _discover() -> None:
    """Import the modules of ``xmodal.models`` not imported yet, so their ``@register_kind`` lines run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{__package__}.{info.name}"
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:  # an optional dependency of one kind must not break the others
            _import_failures[info.name] = f"{type(e).__name__}: {e}"


def model_class(kind: str) -> type:
    """The class registered for ``kind`` (a clear error naming the known kinds otherwise)."""
    if kind not in KINDS:
        _discover()
    if kind not in KINDS:
        failed = "; ".join(f"{m}: {err}" for m, err in sorted(_import_failures.items()))
        raise ModelNotFoundError(f"unknown model kind '{kind}'; known kinds: {', '.join(sorted(KINDS))}."
                                 + (f" (modules that failed to import: {failed})" if failed else ""))
    return KINDS[kind]


def load_model(name_or_path: str | Path, role: type | str | None = None, device: Any = None, dtype: Any = None,
               adapt_dual: bool = False, **kwargs: Any) -> Any:
    """Load any model: the class comes from the model's own ``xmodal.json``.

    Args:
        name_or_path: a saved folder, a hub id, ``hf:ID`` or ``open_clip:ARCH[/TAG]``.
        role: the protocol the caller needs (``SingleVectorEncoder``, ``MultiVectorEncoder``, ``PairScorer``,
            or their names ``"single-vector"``, ``"multi-vector"``, ``"pair-scorer"``); a model that does not
            play it is refused with one clear line. Without a config, ``PairScorer`` means a BLIP
            cross-encoder and anything else a dual encoder.
        adapt_dual: only with the multi-vector role: a plain dual encoder is wrapped as late interaction with
            fresh, untrained token projections (what the late-interaction index engine has always done)
            instead of being refused.
        device, dtype: see ``xmodal.runtime.resolve_device`` / ``resolve_dtype``.
        kwargs: passed to the class's ``from_pretrained``.
    """
    role = as_role(role)
    config = read_config(name_or_path)
    if config is not None:
        kind = config.kind
    else:  # hub ids, open_clip names, plain transformers folders: claimed by a kind's model_types, else the default
        kind = _checkpoint_kind(name_or_path) or ("cross" if role is PairScorer else "dual")
    if adapt_dual and role is MultiVectorEncoder and kind == "dual":
        kind = "late"  # LateInteractionEncoder.from_pretrained wraps a dual folder/name explicitly
    cls = model_class(kind)
    if role is not None and not _class_may_play(cls, role):  # refuse before reading any weights
        hint = (" It gives several vectors per item: use it with a multi-vector (late-interaction) index."
                if _class_may_play(cls, MultiVectorEncoder) else "")
        raise ModelNotFoundError(f"'{name_or_path}' holds a '{kind}' model, not a {ROLE_NAMES[role]}.{hint}")
    model = cls.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)
    if role is not None and not isinstance(model, role):
        raise ModelNotFoundError(f"'{name_or_path}' holds a '{kind}' model, not a {ROLE_NAMES[role]}.")
    return model


def _class_may_play(cls: type, role: type) -> bool:
    """The class has the role's methods and properties (instance attributes such as ``model_id`` are checked later)."""
    members = [n for n, v in vars(role).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))]
    return all(hasattr(cls, n) for n in members)
