"""``schema_check.py``: a value checked against a JSON Schema of ours, each problem named by key path and need."""

from __future__ import annotations

import math

import pytest

from safety_prune.results import json_schema
from safety_prune.schema_check import Checker, Invalid, join, non_finite

SHARE = {"type": "number", "minimum": 0, "maximum": 1}


def _problem(value, schema) -> str:
    with pytest.raises(Invalid) as info:
        Checker(schema).check(value)
    return f"{info.value.key} {info.value.problem}".strip()


def test_key_paths():
    assert join("", "baseline") == "baseline" and join("comparison", 3) == "comparison[3]"
    assert join("manifest.data_sha256", "a/b.txt") == "manifest.data_sha256['a/b.txt']"


@pytest.mark.parametrize(("value", "schema", "problem"), [
    ("305", {"type": "number", "exclusiveMinimum": 0}, "is the string '305', but must be a number above 0"),
    (1.5, SHARE, "is the number 1.5, but must be a number from 0 to 1"),
    ([0.1], {"type": "array", "items": SHARE, "minItems": 2, "maxItems": 2, "x-what": "a pair of numbers"},
     "is an array, but must be a pair of numbers"),
    ({"a": "x"}, {"type": "object", "additionalProperties": SHARE}, "a is the string 'x', but must be a number from 0 "
                                                                   "to 1"),
    ({}, {"type": "object", "properties": {"rule": {}}, "required": ["rule"]}, "has no 'rule', which the report needs"),
    ("maybe", {"enum": ["pass", "fail"], "type": "string"}, 'is the string \'maybe\', but must be one of "pass", '
                                                          '"fail"'),
    ({"k": 1}, {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
                          {"type": "null"}]}, "is an object, but must be a single value (not an array or object)"),
    (True, {"anyOf": [SHARE, {"type": "null"}]}, "is true, but must be a number from 0 to 1 or null"),
])
def test_problems_in_words(value, schema, problem):
    assert _problem(value, schema) == problem


def test_a_branch_that_fits_names_the_problem_inside_it():
    """``selection: {"k": 5}`` is an object, so the problem is the selection's missing rule, not "not {}"."""
    schema = {"anyOf": [{"type": "object", "properties": {"rule": {}}, "required": ["rule"]},
                        {"type": "object", "properties": {}, "additionalProperties": False}, {"type": "null"}]}
    assert _problem({"k": 5}, schema) == "has no 'rule', which the report needs"
    Checker(schema).check({})  # {} stands for none
    Checker(schema).check(None)


def test_float_rounding_at_a_bound_is_no_problem():
    Checker(SHARE).check(1 + 1e-12)
    assert "must be a number from 0 to 1" in _problem(1 + 1e-6, SHARE)


def test_refs_resolve_through_the_results_schema():
    schema = json_schema()
    checker = Checker({"$defs": schema["$defs"], **schema["$defs"]["Paired"]})
    checker.check({"delta": 0.1, "ci_low": 0.0, "ci_high": 0.2, "p_value": 0.5})
    with pytest.raises(Invalid, match="has no 'ci_high'"):
        checker.check({"delta": 0.1, "ci_low": 0.0})


def test_non_finite_numbers_are_named():
    with pytest.raises(Invalid) as info:
        non_finite({"baseline": {"perplexity_ci": [1.0, math.inf]}})
    assert info.value.key == "baseline.perplexity_ci[1]" and "not a finite number" in info.value.problem
