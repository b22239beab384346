"""The package's layering: no import cycle between the subpackages (and top-level modules) of
``src/plda``, counting imports inside functions too, so a cycle cannot hide in a local import."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "plda"


def _unit(module: str) -> str | None:
    """``plda.x.y`` -> ``x`` (the subpackage or top-level module it belongs to)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "plda" else None


def import_graph(root: Path = SRC) -> dict[str, dict[str, list[str]]]:
    """{unit: {unit it imports: ["file:line", ...]}} over every import statement, local ones
    included (relative imports stay inside their own unit)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        me = _unit(".".join(rel.parts))
        if me in (None, "__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            for other in sorted({_unit(t) for t in targets} - {None, me, "__init__", "__main__"}):
                graph.setdefault(me, {}).setdefault(other, []).append(where)
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of units as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    assert {"pipeline", "report", "inference", "evaluation", "models", "weights"} <= set(graph)
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(graph[a][b][:2])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle: " + "; ".join(steps))


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "plda"
    for name, text in {"a/__init__.py": "", "a/x.py": "from plda.b.y import f\n",
                       "b/__init__.py": "",
                       "b/y.py": "def f():\n    from plda.a.x import g\n    return g\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph == {"a": {"b": ["plda/a/x.py:1"]}, "b": {"a": ["plda/b/y.py:2"]}}
    assert find_cycle(graph) == ["a", "b", "a"]
    (pkg / "b" / "y.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None
