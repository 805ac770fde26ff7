"""The selection screen refuses a strength outside [0, 1] before it opens the run or writes anything."""

from __future__ import annotations

import pytest
from bench_script import load

from safety_prune.errors import ConfigError


def test_a_strength_outside_0_1_is_refused_before_the_run_is_opened(tmp_path, monkeypatch) -> None:
    screen = load("selection_screen")
    out = tmp_path / "screen.json"
    monkeypatch.setattr("sys.argv", ["selection_screen", str(tmp_path / "no-run"), "--strengths", "0.5,-0.1",
                                     "--json", str(out)])
    with pytest.raises(ConfigError, match=r"--strengths -0\.1 lies outside"):
        screen.main()
    assert not out.exists()
