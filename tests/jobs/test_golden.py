"""results.json is the contract with the report: a tiny audit and correction must reproduce it exactly.

Volatile fields (times, git commit and state, operator, command line, package versions, platform, hardware,
temporary paths) are masked.
After an intended change of the results, regenerate the fixtures with ``SAFETY_PRUNE_UPDATE_GOLDEN=1
pytest tests/test_golden.py`` and review the diff.
"""

import json
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden"
VOLATILE = ("started_unix", "duration_s", "git_commit", "git_dirty", "operator", "command", "versions", "platform",
            "hardware")


def _normalised(path: Path, root: Path) -> str:
    res = json.loads(path.read_text(encoding="utf-8").replace(str(root), "ROOT"))
    for key in VOLATILE:
        res["manifest"][key] = "<volatile>"
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
    assert text == fixture.read_text(encoding="utf-8"), f"{name} results.json changed; see the module docstring"


def test_audit_results_unchanged(setup):
    from safety_prune.cli import main

    root, model, suite = setup
    assert main(["audit", "--model", model, "--probe", suite, "--out", str(root / "audit"), "--batch-size", "4"]) == 0
    _check("audit", _normalised(root / "audit" / "results.json", root))


def test_correct_results_unchanged(setup):
    from safety_prune.cli import main

    root, model, suite = setup
    code = main(["correct", "--model", model, "--probe", suite, "--out", str(root / "correct"), "--batch-size", "4",
                 "--method", "all", "--k", "4", "--sweep", "2"])
    assert code == 0
    _check("correct", _normalised(root / "correct" / "results.json", root))
