"""The import picture the README promises: no job imports another, render/ is entered only through its package
functions, the gate never imports the renderer, and the package's imports have no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "safety_prune"


def _imports() -> dict[str, set[str]]:
    """Each module (dotted, e.g. ``safety_prune.jobs.correct``) and the safety_prune modules it imports."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                module = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}".replace(".", "/") in _MODULES else module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        out[name] = {m for m in found if m.startswith("safety_prune")}
    return out


_MODULES = {str(p.relative_to(PACKAGE.parent).with_suffix("")).removesuffix("/__init__")
            for p in PACKAGE.rglob("*.py")}


def test_no_job_imports_another() -> None:
    jobs = {"audit", "correct", "compress", "circuit"}
    for name, imported in _imports().items():
        if name.startswith("safety_prune.jobs.") and name.rsplit(".", 1)[1] in jobs:
            assert not {m for m in imported if m.rsplit(".", 1)[-1] in jobs and m.startswith("safety_prune.jobs")}, name


def test_render_is_entered_through_its_package_only() -> None:
    for name, imported in _imports().items():
        if not name.startswith("safety_prune.render"):
            inside = sorted(m for m in imported if m.startswith("safety_prune.render."))
            assert not inside, f"{name} imports {inside}: use the functions of safety_prune.render"


def test_the_gate_and_the_schema_do_not_import_the_renderer() -> None:
    graph = _imports()
    for name in ("safety_prune.gate", "safety_prune.results", "safety_prune.schema_check"):
        assert not any(m.startswith("safety_prune.render") for m in graph[name]), name


def test_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
