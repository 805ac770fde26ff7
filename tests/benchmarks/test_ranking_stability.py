"""The ranking-stability benchmark keeps the two targets' draws apart: a sequence-level file never counts as a
token-level draw of the same seed (the glob matches both names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_script import load
from safetensors.torch import save_file


def _module():
    return load("ranking_stability")


def _draw(path: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    save_file({name: torch.randn(6, 2, 16, generator=g) for name in ("general", "benign", "undesired")}, str(path))


def test_each_target_reads_only_its_own_draws(tmp_path: Path) -> None:
    rs = _module()
    for seed in (0, 1):
        _draw(rs._path(tmp_path, seed), seed)
        _draw(rs._path(tmp_path, seed, "continuation"), 100 + seed)
    assert rs._path(tmp_path, 0).name == "seed-0.safetensors"
    assert rs._path(tmp_path, 0, "continuation").name == "seed-0-continuation.safetensors"
    tokens = rs.compare(tmp_path, tmp_path / "tokens.json")
    seq = rs.compare(tmp_path, tmp_path / "seq.json", "continuation")
    assert tokens["seeds"] == seq["seeds"] == [0, 1]
    assert tokens["target"] == "tokens" and seq["target"] == "continuation"
    first = {r["variant"]: r["top100"]["mean"] for r in tokens["rows"]}
    assert first != {r["variant"]: r["top100"]["mean"] for r in seq["rows"]}  # other files, other agreement
    assert json.loads((tmp_path / "seq.json").read_text(encoding="utf-8"))["target"] == "continuation"


def test_a_group_pools_the_named_draws(tmp_path: Path) -> None:
    rs = _module()
    _draw(rs._path(tmp_path, 0), 0)
    _draw(rs._path(tmp_path, 0, "continuation"), 100)
    both = rs._group_draws(tmp_path, "0+0@continuation")
    assert len(both) == 2
    assert not torch.equal(both[0]["undesired"], both[1]["undesired"])
    assert torch.equal(rs._group_draws(tmp_path, "0@continuation")[0]["general"], both[1]["general"])


def test_settings_parse_with_the_default_guard_and_refuse_bad_items() -> None:
    rs = _module()
    assert rs.parse_settings("0.5/0.3,1/0.3/0.1") == [(0.5, 0.3, rs.GUARD), (1.0, 0.3, 0.1)]
    for bad, why in (("1", "strength/reach"), ("1/0.3/0.1/2", "strength/reach"), ("a/0.3", "strength/reach"),
                     ("1.5/0.3", "in \\(0, 1\\]"), ("1/0", "in \\(0, 1\\]"), ("1/0.3/1", "guard in"),
                     ("1/0.3,1/0.3", "each setting once")):
        with pytest.raises(SystemExit, match=why):
            rs.parse_settings(bad)
