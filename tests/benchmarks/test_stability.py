"""stability.py's overlap between seeds: units tied in gain are ordered by the run's ranking score, not by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_script import load
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def stab():
    return load("stability")


def _run(root: Path, name: str, tied: range, scores: torch.Tensor) -> Path:
    """A finished run's masks.json (every unit in ``tied`` at gain 0.5) and its relevance.safetensors."""
    run = root / name
    run.mkdir()
    units = [{"id": f"L0.mlp.neuron[{i}]", "kind": "neuron", "layer": 0, "index": i, "gain": 0.5} for i in tied]
    (run / "masks.json").write_text(json.dumps({"intervention": {"kind": "gains"}, "units": units}), encoding="utf-8")
    save_file({"diff.neuron": scores.reshape(1, -1)}, str(run / "relevance.safetensors"))
    return run


def test_tied_gains_are_ordered_by_score(stab, tmp_path: Path) -> None:
    # neurons 50-149 are the most undesired in both runs; the runs tie 150 units each at the same gain, but
    # different ones (0-149 vs 50-199): by name the two "top 100" would be different sets
    scores = torch.full((200,), -1.0)
    scores[50:150] = -10.0
    a = stab.gains(_run(tmp_path, "a", range(0, 150), scores))
    b = stab.gains(_run(tmp_path, "b", range(50, 200), scores))
    assert a["L0.mlp.neuron[60]"] == (0.5, -10.0)
    overlap = stab.jaccard(a, b)
    assert overlap["top100"] == 1.0
    assert overlap["weighted"] == pytest.approx(100 / 200)  # 100 shared units of 200 changed, all at gain 0.5


def test_repeated_seed_is_refused(stab) -> None:
    with pytest.raises(SystemExit, match=r"seed\(s\) \[1\] given twice"):
        stab.seeds_of("0,1,1")
    with pytest.raises(SystemExit, match="at least two seeds"):
        stab.seeds_of("3")
