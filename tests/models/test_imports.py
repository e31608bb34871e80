"""``xmodal.models`` has no import cycle (static graph from the AST, imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import xmodal.models

MODELS = Path(xmodal.models.__file__).parent


def models_import_graph() -> dict[str, set[str]]:
    """module name (``dual``, ``__init__``, ...) -> the ``xmodal.models`` modules it imports, anywhere in the file."""
    names = {p.stem for p in MODELS.glob("*.py")}
    graph: dict[str, set[str]] = {n: set() for n in names}
    for path in MODELS.glob("*.py"):
        me = path.stem
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from .x import y / from . import y
                    if node.module:
                        targets.append(node.module.split(".")[0])
                    else:
                        targets += [a.name if a.name in names else "__init__" for a in node.names]
                elif node.level == 0 and (node.module or "").startswith("xmodal.models"):
                    rest = node.module[len("xmodal.models"):].lstrip(".")
                    targets.append(rest.split(".")[0] if rest else "__init__")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("xmodal.models."):
                        targets.append(a.name.split(".")[2])
            graph[me] |= {t for t in targets if t in names and t != me}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_models_package_has_no_import_cycle():
    cycle = find_cycle(models_import_graph())
    assert cycle is None, "import cycle in xmodal.models: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
