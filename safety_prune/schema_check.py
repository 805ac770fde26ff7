"""Check a JSON value against a JSON Schema made from ``results.py``'s types, with errors a person can act on.

A general validator would answer "'305' is not of type 'number'"; ``report`` must say which key of which file is
wrong and what it must be instead: ``baseline.perplexity is the string '305', but must be a number``. This walks
the subset of JSON Schema that pydantic emits for those types (``type``, ``properties``/``required``,
``additionalProperties``, ``items`` with a length, ``anyOf``, ``enum``/``const``, number bounds, ``$ref``) and names
the first problem by its key path. How a section is named comes from its ``x-what`` (``results._what``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

SLACK = 1e-9
"""Float rounding at a bound (a percentile interpolated between two 1.0s) is not a problem."""
_SCALARS = {"string", "integer", "number", "boolean", "null"}


class Invalid(Exception):
    """``key`` (a dotted path) ``problem``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem


def join(key: str, name: str | int) -> str:
    """``key.name``, ``key[3]`` or ``key['odd name']``."""
    if isinstance(name, int):
        return f"{key}[{name}]"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return f"{key}[{name!r}]"
    return f"{key}.{name}" if key else name


class Checker:
    """Checks values against ``schema`` (its ``$defs`` resolve ``$ref``); ``check`` raises Invalid."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs = schema.get("$defs", {})
        self.root = schema

    def check(self, value: Any, key: str = "", schema: dict[str, Any] | None = None) -> None:
        self._check(value, self.root if schema is None else schema, key)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = {**self.defs[schema["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in schema.items()
                                                                          if k != "$ref"}}
        return schema

    def _check(self, value: Any, schema: dict[str, Any], key: str) -> None:
        schema = self._resolve(schema)
        if "anyOf" in schema or "oneOf" in schema:
            self._branch(value, schema, key)
            return
        if not self._shallow(value, schema):
            raise Invalid(key, f"is {found(value)}, but must be {self.describe(schema)}")
        if isinstance(value, dict):
            for name, sub in schema.get("properties", {}).items():
                if name in value:
                    self._check(value[name], sub, join(key, name))
                elif name in schema.get("required", ()):
                    raise Invalid(key, f"has no {name!r}, which the report needs")
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for name, sub in value.items():
                    if name not in schema.get("properties", {}):
                        self._check(sub, extra, join(key, name))
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                self._check(item, schema["items"], join(key, i))

    def _branch(self, value: Any, schema: dict[str, Any], key: str) -> None:
        """The first branch that takes ``value`` whole; else the problem found in the first of its kind."""
        problems = []
        for branch in (self._resolve(b) for b in schema.get("anyOf", schema.get("oneOf", []))):
            if self._shallow(value, branch):
                try:
                    self._check(value, branch, key)
                    return
                except Invalid as bad:
                    problems.append(bad)
        if problems:
            raise problems[0]
        raise Invalid(key, f"is {found(value)}, but must be {self.describe(schema)}")

    def _shallow(self, value: Any, schema: dict[str, Any]) -> bool:
        """Whether ``value`` is of the schema's kind (type, enum, bounds, length; not what it contains)."""
        schema = self._resolve(schema)
        if "anyOf" in schema or "oneOf" in schema:
            return any(self._shallow(value, b) for b in schema.get("anyOf", schema.get("oneOf", [])))
        if "const" in schema and value != schema["const"]:
            return False
        if "enum" in schema and value not in schema["enum"]:
            return False
        kind = schema.get("type")
        ok = {None: True, "null": value is None, "boolean": isinstance(value, bool), "string": isinstance(value, str),
              "object": isinstance(value, dict), "array": isinstance(value, list),
              "integer": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, int | float) and not isinstance(value, bool)}[kind]
        if not ok:
            return False
        if kind == "number":
            low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
            return (low - SLACK <= value <= high + SLACK
                    and ("exclusiveMinimum" not in schema or value > schema["exclusiveMinimum"]))
        if kind == "array":
            return schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf)
        if kind == "object" and schema.get("additionalProperties") is False:
            return set(value) <= set(schema.get("properties", {}))
        return True

    def describe(self, schema: dict[str, Any]) -> str:
        """What a value of ``schema`` is, in words: "a number from 0 to 1 or null"."""
        schema = self._resolve(schema)
        if "x-what" in schema:
            return schema["x-what"]
        branches = [self._resolve(b) for b in schema.get("anyOf", schema.get("oneOf", []))]
        if branches:
            kinds = {b.get("type") for b in branches}
            if kinds == _SCALARS:
                return "a single value (not an array or object)"
            real = list(dict.fromkeys(self.describe(b) for b in branches if b.get("type") != "null"))
            return " or ".join(real + (["null"] if "null" in kinds else []))
        if "const" in schema:
            return json.dumps(schema["const"])
        if "enum" in schema:
            return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
        kind = schema.get("type")
        if kind == "number":
            if "exclusiveMinimum" in schema:
                return f"a number above {schema['exclusiveMinimum']:g}"
            if "minimum" in schema and "maximum" in schema:
                return f"a number from {schema['minimum']:g} to {schema['maximum']:g}"
        return {"number": "a number", "integer": "a whole number", "string": "a string", "boolean": "true or false",
                "object": "an object", "array": "an array", "null": "null", None: "any value"}[kind]


def found(value: Any) -> str:
    """What was found instead, in words: "the string '305'", "an array"."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}{'...' if len(value) > 40 else ''}"
    return "an array" if isinstance(value, list) else "an object"


def non_finite(value: Any, key: str = "") -> None:
    """NaN or infinity anywhere: the writers refuse them (JSON has no such numbers), so the file was edited."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(key, f"is {value} (not a finite number; safety-prune never writes NaN or infinity)")
    if isinstance(value, dict):
        for name, sub in value.items():
            non_finite(sub, join(key, name))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            non_finite(sub, join(key, i))
