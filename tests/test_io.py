"""io.py: the strict YAML loader (issue 27: a key given twice is an error, not the last one silently winning)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from refusal import ROOT, job_argv, paragraph, temps
from tiny import tree_hashes, write_tiny_suite

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


def _alias_bomb(folder: Path) -> Path:
    """The billion laughs in the description: nine levels of nine aliases, 9^9 strings from a few hundred bytes
    (the suite reads it with ``str(description)``)."""
    lines = ["description:", "  - &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"  - &{name} [{','.join(['*' + prev] * 9)}]")
    text = (Path(write_tiny_suite(folder)).read_text().replace("description: tiny test suite\n", "")
            + "\n".join(lines) + "\n")
    path = folder / "bomb.yaml"
    path.write_text(text)
    return path


def test_yaml_alias_bomb_is_refused(tiny_setup, tmp_path):
    """Run in a child with a memory cap and a timeout: before the fix the suite loaded, and the error naming the
    description's bad value expanded all 9^9 strings (memory and time without bound)."""
    bomb = _alias_bomb(tmp_path / "suite")
    size = len(bomb.read_bytes()) - len(Path(tmp_path / "suite" / "tiny_suite.yaml").read_bytes())
    assert size < 1000  # the bomb itself is under a kilobyte
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from safety_prune.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    before = tree_hashes(tiny_setup[1], tmp_path / "suite", mtimes=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        res = subprocess.run([sys.executable, "-c", code, *job_argv("audit", tiny_setup[1], bomb, tmp_path / "run")],
                             capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb was expanded (no answer within 120 s)")
    assert res.returncode == 2, res.stderr[-2000:]
    msg = paragraph(res.stderr)
    assert "bomb.yaml" in msg and "alias" in msg
    assert tree_hashes(tiny_setup[1], tmp_path / "suite", mtimes=True) == before and not temps(tmp_path)
    assert not (tmp_path / "run").exists()
