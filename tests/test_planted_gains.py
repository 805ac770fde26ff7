"""The planted circuit of ``test_planted_circuit`` under soft interventions: proportional LRP gains and AurA's own
gains silence the planted neuron and remove the behaviour on the held-out prompts, where the random control (the
same gains on random units) leaves it."""

import json

import pytest
from test_planted_circuit import PLANTED, _documents, _suite, planted  # noqa: F401  (planted: the fixture)

from safety_prune.jobs.correct import correct
from safety_prune.jobs.options import CorrectOptions


def test_proportional_and_aura_gains_remove_the_planted_behaviour(planted, tmp_path):  # noqa: F811
    folder, _ = planted
    suite = _suite(tmp_path / "suite", _documents(5, 80, with_trigger=False))
    res = correct(folder, suite, tmp_path / "run", options=CorrectOptions(
        method="all", intervention="proportional", strength=(1.0,), threshold=(0.5,), batch_size=4, stability=0))
    gains = {u["id"]: u["gain"] for u in json.loads((tmp_path / "run" / "masks.json").read_text())["units"]}
    assert gains[PLANTED] == 0.0  # the most undesired unit: 1 - strength
    assert res["baseline"]["behaviour_rate"] == pytest.approx(0.5)
    rows = {row["method"]: row for row in res["comparison"]}
    assert rows["random"]["k"] == rows["lrp"]["k"] == len(gains)
    assert rows["random"]["behaviour_rate"] == pytest.approx(0.5)
    assert rows["lrp"]["behaviour_rate"] == 0.0 and rows["lrp"]["paired_vs_random"]["ci_high"] < 0
    assert rows["aura"]["intervention"]["kind"] == "aura" and rows["aura"]["behaviour_rate"] == 0.0
