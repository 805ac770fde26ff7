"""io.py: the strict YAML loader (issue 27: a key given twice is an error, not the last one silently winning)."""

from __future__ import annotations

import pytest
import yaml

from safety_prune.io import safe_yaml_load


@pytest.mark.parametrize(("text", "key", "first", "line"), [
    ("max_prompt_tokens: 32\nname: x\nmax_prompt_tokens: 64\n", "'max_prompt_tokens'", 1, 3),
    ("generation:\n  top_p: 0.9\n  top_p: 0.9\n", "'top_p'", 2, 3),  # nested, and the same value twice
    ("reference: {general_n: 4, general_n: 8}\n", "'general_n'", 1, 1),  # flow style
    ("1: a\n1: b\n", "1", 1, 2),
])
def test_duplicate_key_names_the_key_and_both_lines(text: str, key: str, first: int, line: int) -> None:
    """Before (93f5b05): every one of these loaded, the last value winning."""
    with pytest.raises(yaml.YAMLError) as info:
        safe_yaml_load(text)
    msg = str(info.value)
    assert f"found the key {key} a second time" in msg and f"first on line {first})" in msg, msg
    assert f"line {line}, column" in msg and "Keep one of them" in msg, msg


def test_distinct_keys_and_merges_still_load() -> None:
    assert safe_yaml_load("a: 1\nb: {a: 2}\nc: [1, 1]\n") == {"a": 1, "b": {"a": 2}, "c": [1, 1]}
    assert safe_yaml_load("<<: {a: 1, b: 2}\nb: 3\n") == {"a": 1, "b": 3}  # an explicit key overrides a merge
