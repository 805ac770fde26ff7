"""The determinism contract: the same seed, device and dtype give bit-identical results.json numbers whatever
the number of CPU threads, in MKL's strict reproducible mode (tests/conftest.py; README, "Same command, same
answer")."""

from __future__ import annotations

import json

import pytest
import torch

from safety_prune.cli import main

VOLATILE = ("started_unix", "duration_s", "stages_s", "command", "hardware")


def _numbers(path) -> dict:
    res = json.loads(path.read_text(encoding="utf-8"))
    for key in VOLATILE:
        res["manifest"].pop(key, None)
    return res


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_count_does_not_change_a_correction(setup, tmp_path, threads):
    _, model, suite = setup
    argv = ["correct", "--model", model, "--probe", suite, "--batch-size", "4", "--k", "4", "--sweep", "2",
            "--stability", "5"]
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, threads):
            torch.set_num_threads(n)
            out = tmp_path / f"t{n}"
            assert main([*argv, "--out", str(out)]) == 0
            runs.append(_numbers(out / "results.json"))
    finally:
        torch.set_num_threads(before)
    assert runs[0]["manifest"]["numerics"] == {"device": "cpu", "dtype": "float32"}  # what the numbers depend on
    assert runs[0]["manifest"]["versions"]["torch"] == torch.__version__
    one, many = (json.dumps(r, sort_keys=True).replace(str(tmp_path / f"t{n}"), "OUT")
                 for r, n in zip(runs, (1, threads), strict=True))
    assert one == many
