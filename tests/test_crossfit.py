"""K-fold cross-fitting of the validation choice, by hand on a few prompts."""

import pytest

from safety_prune.crossfit import check_folds, cross_fit, one_se_choice, split
from safety_prune.errors import ConfigError


def test_split_is_a_seeded_partition():
    parts = split(7, 3, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(7)) and [len(p) for p in parts] == [3, 2, 2]
    assert parts == split(7, 3, seed=0) and parts != split(7, 3, seed=1)


def test_cross_fit_by_hand():
    """Row 2 is perfect on fold 0 and useless on fold 1; row 1 halves every prompt. On both folds their means tie
    at 0.5 and row 2's standard error is 0.5, so the simpler row 1 is chosen. Cross-fitted, fold 0 is scored with
    the choice made on fold 1 alone (row 1: 0.5 each) and fold 1 with the choice made on fold 0 alone (row 2:
    1.0 each), so the estimate is 1 - 0.75 = 0.25, not the 0.5 that choosing and scoring on the same prompts
    shows."""
    f0, _ = split(4, 2, seed=3)
    base = [1.0] * 4
    rows = [{"k": 0, "scale": None}, {"k": 10, "scale": None}, {"k": 20, "scale": None}]
    per_prompt = {1: [0.5] * 4, 2: [0.0 if i in f0 else 1.0 for i in range(4)]}
    chosen, est = cross_fit(rows, per_prompt, base, folds=2, seed=3)
    assert chosen == 1
    assert est["choice_per_fold"] == [{"k": 10, "scale": None}, {"k": 20, "scale": None}]
    assert est["reduction"] == pytest.approx(0.25) and est["fold_reductions"] == pytest.approx([0.5, 0.0])
    assert est["paired_vs_baseline"]["delta"] == pytest.approx(-0.25)
    # folds at 50% and 0%: range 50 points, sample sd sqrt(2 * 25^2) = 35.36 points
    assert est["fold_spread"] == pytest.approx({"min_pp": 0.0, "max_pp": 50.0, "range_pp": 50.0,
                                                "sd_pp": 35.355339}, rel=1e-6)


def test_one_se_rule_takes_the_best_when_the_others_are_clearly_worse():
    base = [1.0] * 6
    rows = [{"k": 0, "scale": None}, {"k": 10, "scale": None}, {"k": 50, "scale": 0.5}, {"k": 50, "scale": None}]
    per_prompt = {1: [0.9] * 6, 2: [0.4] * 6, 3: [0.41] * 6}
    assert one_se_choice(rows, per_prompt, base, split(6, 3, 0)) == 2  # no spread: only the best qualifies
    per_prompt[3] = [0.4] * 6
    assert one_se_choice(rows, per_prompt, base, split(6, 3, 0)) == 2  # same mean: the milder change (gain 0.5)
    assert one_se_choice(rows, {}, base, split(6, 3, 0)) is None


def test_budget_rule_takes_the_strongest_feasible_row_on_every_fold():
    """Under select_by budget the behaviour does not choose: the row that dampens most, on all folds and on each
    fold's complement alike, so the cross-fitted estimate is that row's plain effect (here 10%, although row 1
    halves every prompt)."""
    base = [1.0] * 4
    rows = [{"k": 0, "scale": None, "dampening": 0.0}, {"k": 10, "scale": None, "dampening": 10.0},
            {"k": 20, "scale": 0.5, "dampening": 10.0}, {"k": 30, "scale": 0.5, "dampening": 15.0}]
    per_prompt = {1: [0.5] * 4, 2: [0.6] * 4, 3: [0.9] * 4}
    chosen, est = cross_fit(rows, per_prompt, base, folds=2, seed=0, select_by="budget")
    assert chosen == 3 and est["choice_per_fold"] == [{"k": 30, "scale": 0.5}] * 2
    assert est["reduction"] == pytest.approx(0.1) and "do not choose" in est["rule"]
    del per_prompt[3]  # a tie in dampening: the earlier row
    assert cross_fit(rows, per_prompt, base, folds=2, seed=0, select_by="budget")[0] == 1
    assert cross_fit(rows, {}, base, folds=2, seed=0, select_by="budget")[0] is None
    with pytest.raises(ConfigError, match="select_by 'luck' is unknown"):
        cross_fit(rows, per_prompt, base, folds=2, seed=0, select_by="luck")


def test_more_folds_than_prompts_is_refused():
    check_folds(None, 3)
    check_folds(3, 3)
    with pytest.raises(ConfigError, match=r"--folds 4 exceeds the 3 validation prompts"):
        check_folds(4, 3)


def test_spread_by_hand():
    """Folds at 10%, 40% and 25%: range 30 points from 10 to 40, sample sd 15 points."""
    from safety_prune.crossfit import spread

    assert spread([0.1, 0.4, 0.25]) == pytest.approx({"min_pp": 10.0, "max_pp": 40.0, "range_pp": 30.0,
                                                      "sd_pp": 15.0})


def test_cost_rule_takes_the_feasible_row_with_the_largest_validation_perplexity():
    """Under select_by cost the row that costs most (validation perplexity), not the one that dampens most."""
    base = [1.0] * 4
    rows = [{"k": 0, "scale": None, "dampening": 0.0, "perplexity": 10.0},
            {"k": 10, "scale": None, "dampening": 30.0, "perplexity": 10.1},
            {"k": 20, "scale": 0.5, "dampening": 10.0, "perplexity": 10.18}]
    per_prompt = {1: [0.5] * 4, 2: [0.8] * 4}
    chosen, est = cross_fit(rows, per_prompt, base, folds=2, seed=0, select_by="cost")
    assert chosen == 2 and est["reduction"] == pytest.approx(0.2) and "costliest" in est["rule"]
    assert cross_fit(rows, per_prompt, base, folds=2, seed=0, select_by="budget")[0] == 1
