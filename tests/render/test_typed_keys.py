"""Every results.json key the renderer names goes through the typed model (issue 22).

mypy checks ``results["baseline"]["behaviour_rate"]`` against the TypedDicts of ``results.py``, but not
``results.get("behaviour_rte")`` (a TypedDict's ``.get`` of an unknown key is ``object``, silently) nor
``"behaviour_rte" in block``. So every string literal in ``safety_prune/render`` used as a key (``x["key"]``,
``x.get("key", ...)``, ``"key" in x``) must be a field of a TypedDict of ``results.py``, or of a view type the
renderer declares itself (a TypedDict, so mypy checks it too); the few others are listed below with why.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

from typing_extensions import is_typeddict

import safety_prune.results
from safety_prune import render

RENDER = Path(render.__file__).parent

NOT_RESULTS_KEYS = {
    "$defs": "load._checkers: a key of the JSON Schema results.py exports, not of results.json",
    "BehaviourResults": "load._checkers: the name of a definition in that JSON Schema",
    "quant": "words._DEFAULT_NAME: a named group of the regular expression reading the default model's name",
    "src": "words._DEFAULT_NAME: likewise",
    '<meta name="generator" content="safety-prune': "compare._is_compare_page: text searched for in a page",
    "<title>safety-prune run comparison": "compare._is_compare_page: likewise",
}


def _fields(module: object) -> set[str]:
    """The keys of every TypedDict declared in ``module``."""
    return {key for value in vars(module).values()
            if is_typeddict(value) and value.__module__ == module.__name__  # type: ignore[attr-defined]
            for key in value.__required_keys__ | value.__optional_keys__}


def _render_modules() -> list[Path]:
    return sorted(RENDER.glob("*.py"))


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _key_of(node: ast.AST) -> ast.AST | None:
    """The expression used as a key: ``x[KEY]``, ``x.get(KEY, ...)``, ``KEY (not) in x``; None for any other node."""
    if isinstance(node, ast.Subscript):
        return node.slice
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        return node.args[0]
    if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
        return node.left
    return None


def key_literals(source: str) -> Iterator[tuple[int, str]]:
    """(line, key) of each string literal used as a key."""
    for node in ast.walk(ast.parse(source)):
        if (expr := _key_of(node)) is not None and (key := _text(expr)) is not None:
            yield node.lineno, key


def known_keys() -> set[str]:
    views = [importlib.import_module(f"safety_prune.render.{path.stem}") for path in _render_modules()]
    return _fields(safety_prune.results).union(*(_fields(module) for module in views))


def test_the_finder_sees_each_form_of_key() -> None:
    found = [key for _, key in key_literals('r["a"]\nr.get("b", 1)\n"c" in r\n"d" not in r\nr[k]\nf("e")\n')]
    assert found == ["a", "b", "c", "d"]


def test_every_key_literal_in_render_is_a_typed_field() -> None:
    known = known_keys()
    assert "behaviour_rate" in known and "saved_model_sha256" in known  # the results.py types were read
    stray = [f"{path.name}:{line}: {key!r}" for path in _render_modules()
             for line, key in key_literals(path.read_text(encoding="utf-8"))
             if key not in known and key not in NOT_RESULTS_KEYS]
    assert not stray, ("key literals in render/ that no TypedDict of results.py (or view type of render/) declares; "
                       "read results.json through its types, or add the field to results.py:\n" + "\n".join(stray))


def test_the_exceptions_are_still_needed() -> None:
    """An exception no module uses any more is dropped from the list, so the list stays the few real ones."""
    used = {key for path in _render_modules() for _, key in key_literals(path.read_text(encoding="utf-8"))}
    assert set(NOT_RESULTS_KEYS) <= used, set(NOT_RESULTS_KEYS) - used
