"""results.json is the contract with the report: a tiny audit and correction must reproduce it exactly, and match
the exported JSON Schema (docs/results.schema.json).

Volatile fields (times, but each stage's name in ``stages_s`` is kept; git commit and state, operator, command
line, package versions, platform, hardware, temporary paths) are masked; floats are compared to a relative 1e-5
(the CPU's instruction set moves the last digits of float32 sums), everything else exactly.
After an intended change of the results, regenerate the fixtures with ``SAFETY_PRUNE_UPDATE_GOLDEN=1
pytest tests/test_golden.py`` and review the diff.
"""

import json
import math
import os
from pathlib import Path

import pytest
from results_schema import assert_valid_results

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden"
VOLATILE = ("started_unix", "duration_s", "git_commit", "git_dirty", "operator", "command", "versions", "platform",
            "hardware")


def _normalised(path: Path, root: Path) -> str:
    res = json.loads(path.read_text(encoding="utf-8").replace(str(root), "ROOT"))
    for key in VOLATILE:
        res["manifest"][key] = "<volatile>"
    res["manifest"]["stages_s"] = dict.fromkeys(res["manifest"]["stages_s"], "<volatile>")  # names kept
    return json.dumps(res, indent=1, sort_keys=True) + "\n"


@pytest.fixture(autouse=True)
def _one_thread():
    """Float sums depend on how many threads split them: the fixtures are taken with one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check(name: str, text: str) -> None:
    fixture = GOLDEN / f"{name}.json"
    if os.environ.get("SAFETY_PRUNE_UPDATE_GOLDEN"):
        fixture.write_text(text, encoding="utf-8")
    diffs = _differences(json.loads(fixture.read_text(encoding="utf-8")), json.loads(text))
    assert not diffs, f"{name} results.json changed; see the module docstring:\n" + "\n".join(diffs[:20])


def _differences(want, got, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want``: keys, types, strings, counts and choices exactly; floats to a relative
    1e-5 (or 1e-8 absolute, for differences of nearly equal relevances), since float32 kernels, and so the last
    digits of every sum, differ between CPU instruction sets; a mean gain to 2e-3 (below)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if want.keys() != got.keys():
            return [f"{path or '/'}: keys {sorted(want.keys() ^ got.keys())} added or removed"]
        return [d for k in want for d in _differences(want[k], got[k], f"{path}/{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path}: {len(want)} items, now {len(got)}"]
        return [d for i, (a, b) in enumerate(zip(want, got, strict=True)) for d in _differences(a, b, f"{path}/{i}")]
    if isinstance(want, float) and isinstance(got, float) and math.isclose(want, got, rel_tol=1e-5, abs_tol=1e-8):
        return []
    if path.endswith("/intervention/mean_gain") and isinstance(want, float) and isinstance(got, float) and \
            abs(want - got) < 2e-3:
        return []  # AurA's: an AUROC over a handful of tiny-model samples jumps by 1 / (n_pos n_neg) when float
        # noise flips one near-tie, moving the mean gain by ~1e-3 (seen between an AVX2 and an AVX-512 host)
    return [] if type(want) is type(got) and want == got else [f"{path}: {want!r}, now {got!r}"]


def test_audit_results_unchanged(setup):
    from safety_prune.cli import main

    root, model, suite = setup
    assert main(["audit", "--model", model, "--probe", suite, "--out", str(root / "audit"), "--batch-size", "4"]) == 0
    _check("audit", _normalised(root / "audit" / "results.json", root))
    assert_valid_results(root / "audit" / "results.json")  # last: it skips where jsonschema is not installed


def test_correct_results_unchanged(setup):
    from safety_prune.cli import main

    root, model, suite = setup
    code = main(["correct", "--model", model, "--probe", suite, "--out", str(root / "correct"), "--batch-size", "4",
                 "--method", "all", "--k", "4", "--sweep", "2"])
    assert code == 0
    _check("correct", _normalised(root / "correct" / "results.json", root))
    assert_valid_results(root / "correct" / "results.json")  # last: it skips where jsonschema is not installed
