"""Layers point down: every ``xmodal`` import (module-level and inside functions) goes to a lower layer.

The table below is the architecture (docs/architecture.md): a module may import its own package
and packages of a LOWER rank; two different packages of the same rank may not import each other
(``models`` importing ``indexes`` is as wrong as ``indexes`` importing ``collection``).
A new top-level module or package must be given a rank here, else the test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "xmodal"

# package (first name below xmodal; a plain module counts as its own package) -> rank
RANKS: dict[str, int] = {
    # foundations
    "errors": 0,
    "io": 1, "runtime": 1,  # atomic writes and locks; device/dtype resolution
    # readers of inputs and shared math kernels
    "data": 2, "ops": 2,
    # building blocks: encoders, vector indexes, training losses (independent of one another)
    "models": 3, "indexes": 3, "losses": 3,
    # stages built from the blocks
    "retrieve": 4, "evaluation": 4, "distributed": 4, "visualize": 4,
    "collection": 5, "train": 5,
    # applications of the stages
    "server": 6, "demo": 6,
    # one function per command
    "pipelines": 7,
    # the command line: parse arguments, call one pipelines function
    "cli": 8,
    # the public API (xmodal/__init__.py) and `python -m xmodal`
    "__init__": 9, "__main__": 9,
}

# What the command line may import from xmodal: pipelines and errors, nothing else (issue #18).
CLI_MAY_IMPORT = {"cli", "pipelines", "errors"}

# (importing module, imported module) pairs that are known and scheduled to go; keep this empty.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def xmodal_imports(path: Path) -> list[tuple[str, int]]:
    """(imported xmodal module, line) for every import in the file, including those inside functions."""
    me = module_name(path)
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "xmodal"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import x` / `from .. import x`: x may be a module
                    found += [(f"{target}.{a.name}" if target else a.name, node.lineno) for a in node.names]
                    continue
            else:
                target = node.module or ""
            if target.split(".")[0] == "xmodal":
                found.append((target, node.lineno))
    return found


def violations(src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(src.rglob("*.py")):
        me = module_name(path)
        mine = package_of(me)
        if mine not in RANKS:
            bad.append(f"{me}: package '{mine}' has no rank in tests/test_layers.py RANKS")
            continue
        for target, line in xmodal_imports(path):
            theirs = package_of(target)
            if theirs == mine or (me, target) in KNOWN_EXCEPTIONS:
                continue
            if theirs not in RANKS:
                bad.append(f"{me}:{line} imports {target}: package '{theirs}' has no rank")
            elif mine == "cli" and theirs not in CLI_MAY_IMPORT:
                bad.append(f"{me}:{line} imports {target}: the CLI may import only {sorted(CLI_MAY_IMPORT)}")
            elif RANKS[theirs] >= RANKS[mine]:
                bad.append(f"{me}:{line} imports {target}: {mine} (rank {RANKS[mine]}) may not import "
                           f"{theirs} (rank {RANKS[theirs]})")
    return bad


def test_every_import_points_down():
    assert violations() == []


def test_known_exceptions_are_still_needed():
    """An exception whose import is gone must be deleted from the list (it would hide a new violation)."""
    present = {(module_name(p), t) for p in SRC.rglob("*.py") for t, _ in xmodal_imports(p)}
    assert KNOWN_EXCEPTIONS <= present


@pytest.mark.parametrize("lower, higher, code", [
    ("indexes", "collection", "from ..collection import COLLECTION_FILE\n"),
    ("indexes", "distributed", "def f():\n    from ..distributed.encode import iter_embedding_shards\n"),
    ("models", "indexes", "from xmodal.indexes import load_index\n"),
    ("distributed", "collection", "def g():\n    from ..collection import load_encoder\n"),
    ("data", "pipelines", "from .. import pipelines\n"),
    ("cli", "models", "def h():\n    from ..models import load_model\n"),
])
def test_the_check_catches_upward_imports(tmp_path, lower, higher, code):
    """The checker itself: a planted upward (or sideways) import, module-level or inside a function, is reported."""
    fake = tmp_path / "xmodal"
    (fake / lower).mkdir(parents=True)
    (fake / higher).mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("")
    (fake / lower / "__init__.py").write_text("")
    (fake / lower / "bad.py").write_text(code)
    global SRC
    old, SRC = SRC, fake
    try:
        found = violations(fake)
    finally:
        SRC = old
    assert len(found) == 1 and f"xmodal.{lower}.bad" in found[0] and higher in found[0]
