"""LiT-style tower locking with optional partial unlocking of the last N layers.

The tower's parameters come from the backbone itself (``backbone.text_parameters()`` /
``image_parameters()``): matching parameter names by fragments froze most of open_clip's image tower
along with its text tower, because both contain a ``transformer``.
"""

from __future__ import annotations

from torch import nn

from ..errors import InvalidInputError

TOWERS = ("text", "image")
# Parts of a tower before its blocks (token/patch/position embeddings, the stem): they stay locked under --unlock-last.
_STEM = ("embed", "conv1", "ln_pre", "pre_layrnorm", "patch", "class_", "cls_token", "position", "stem")


def _block_list(parts: list[tuple[str, nn.Module | nn.Parameter]]) -> tuple[str, nn.Module] | None:
    """The tower's stack of layers: the largest ModuleList/Sequential whose children all share one type."""
    best: tuple[str, nn.Module] | None = None
    for path, obj in parts:
        if not isinstance(obj, nn.Module):
            continue
        for name, mod in obj.named_modules(prefix=path):
            kids = list(mod.children())
            if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(kids) >= 2 and len({type(k) for k in kids}) == 1:
                if best is None or len(kids) >= len(list(best[1].children())):
                    best = (name, mod)
    return best


def freeze_tower(model: nn.Module, tower: str, unlock_last: int = 0) -> dict[str, int]:
    """Set ``requires_grad=False`` on ``tower`` of ``model.backbone``; with ``unlock_last`` keep its last N layers
    and everything after them (final norm, projection) trainable. Returns counts of frozen/unlocked parameters."""
    if tower not in TOWERS:
        raise InvalidInputError(f"freeze must be 'text' or 'image'; got {tower!r}.")
    backbone = getattr(model, "backbone", None)
    try:
        parts = backbone.tower_parts(tower)
    except (AttributeError, NotImplementedError) as e:
        raise InvalidInputError(f"{type(model).__name__} cannot lock its {tower} tower: {e}.") from e
    params = getattr(backbone, f"{tower}_parameters")()
    if not params:
        raise InvalidInputError(f"found no {tower} tower parameters to freeze in {type(model).__name__}.")
    for p in params:
        p.requires_grad_(False)
    unlocked = 0
    if unlock_last > 0:
        found = _block_list(parts)
        if found is None:
            raise InvalidInputError(f"--unlock-last: the {tower} tower of {type(model).__name__} has no stack of layers.")
        blocks = list(found[1].children())
        keep = {id(p) for b in blocks[-unlock_last:] for p in b.parameters()}
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        for path, obj in parts:  # the head after the blocks: final norm, pooler, projection
            named = [(path, obj)] if isinstance(obj, nn.Parameter) else [(f"{path}.{n}", p) for n, p in obj.named_parameters()]
            for name, p in named:
                if id(p) not in in_blocks and not any(s in name.lower() for s in _STEM):
                    keep.add(id(p))
        for p in params:
            if id(p) in keep:
                p.requires_grad_(True)
                unlocked += 1
    return {"frozen": len(params) - unlocked, "unlocked": unlocked}
