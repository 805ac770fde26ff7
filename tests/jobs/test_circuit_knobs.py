"""The circuit job's ranking options (--relevance, --normalise, --schedule) on hand-computed and tiny-model cases."""

import json
from itertools import pairwise

import pytest
import torch
from test_circuit import tiny_ioi_llama

from safety_prune.attribution import Relevance, Sample, attribute
from safety_prune.cli import main
from safety_prune.errors import ConfigError
from safety_prune.evaluation.ioi import ioi_prompts, ioi_samples
from safety_prune.families import architecture, blocks, geometry
from safety_prune.jobs import circuit as job
from safety_prune.jobs.options import CircuitOptions
from safety_prune.pruning import select

# Per-sample head relevance of a 1-layer, 3-head model: the first prompt explains a large logit difference.
TABLE = {(1, 2): [10.0, 2.0, 0.0], (3, 4): [0.0, 0.0, 1.0]}
SIGNED = {(1, 2): [3.0, -6.0, 1.0], (3, 4): [3.0, 2.0, 1.0]}
# Head 1 decides the second prompt and works against the first; head 0 helps the first only.
MIXED = {(1, 2): [4.0, -6.0, 1.0], (3, 4): [0.0, 3.0, 1.0]}


def _fake_attribute(table):
    """``attribute`` over a fixed table of per-sample relevance, keeping its contract: the batch mean of R (or |R|
    with ``absolute``)."""
    def fake(_model, samples, *, units, absolute, **_):
        per = torch.tensor([table[s.input_ids] for s in samples])
        per = per.abs() if absolute else per
        return Relevance("lrp", {units[0]: per.mean(0, keepdim=True)}, len(samples))
    return fake


def _order(scores: torch.Tensor) -> list[int]:
    """Head indices in pruning order (least relevant first)."""
    return [u.index for u in select({"head": scores}, "head", k=scores.numel())]


SAMPLES = [Sample((1, 2), 1), Sample((3, 4), 1)]


@pytest.mark.parametrize(("relevance", "expected", "order"), [
    ("abs", [3.0, 4.0, 1.0], [2, 0, 1]),  # mean of per-sample |R|: head 1's large negative share counts as large
    ("signed", [3.0, -2.0, 1.0], [1, 2, 0]),  # head 1 works against the task on average: pruned first
])
def test_signed_and_abs_rankings(monkeypatch, relevance, expected, order):
    monkeypatch.setattr(job, "attribute", _fake_attribute(SIGNED))
    scores = job.unit_scores(None, SAMPLES, "lrp", CircuitOptions(unit="head", relevance=relevance), 0)
    assert scores[0].tolist() == pytest.approx(expected)
    assert _order(scores) == order


@pytest.mark.parametrize(("relevance", "expected", "order"), [
    ("signed", [2.0, -1.5, 1.0], [1, 2, 0]),  # head 1's harm on prompt 1 outweighs its decisive help on prompt 2
    ("abs", [2.0, 4.5, 1.0], [2, 0, 1]),
    ("positive", [2.0, 1.5, 1.0], [2, 1, 0]),  # mean of max(R, 0): what pruning costs the prompts a head helps
])
def test_positive_part_ranks_by_what_a_unit_gives(monkeypatch, relevance, expected, order):
    monkeypatch.setattr(job, "attribute", _fake_attribute(MIXED))
    scores = job.unit_scores(None, SAMPLES, "gradient", CircuitOptions(unit="head", relevance=relevance), 0)
    assert scores[0].tolist() == pytest.approx(expected)
    assert _order(scores) == order


def test_relevance_applies_to_signed_methods_only(monkeypatch):
    """Activation scores have no sign; --relevance leaves them as attribution returns them."""
    seen, fake = [], _fake_attribute(SIGNED)

    def spy(*args, **kw):
        seen.append(kw["absolute"])
        return fake(*args, **kw)

    monkeypatch.setattr(job, "attribute", spy)
    for method in ("lrp", "gradient", "activation"):
        job.unit_scores(None, SAMPLES, method, CircuitOptions(relevance="abs"), 0)
    assert seen == [True, True, False]


def test_sample_normalisation_changes_the_documented_ranking(monkeypatch):
    monkeypatch.setattr(job, "attribute", _fake_attribute(TABLE))
    plain = job.unit_scores(None, SAMPLES, "lrp", CircuitOptions(unit="head"), 0)
    normed = job.unit_scores(None, SAMPLES, "lrp", CircuitOptions(unit="head", normalise="sample"), 0)
    assert plain[0].tolist() == pytest.approx([5.0, 1.0, 0.5])
    # each prompt divided by its own total |R| (12, then 1) before the mean
    assert normed[0].tolist() == pytest.approx([(10 / 12) / 2, (2 / 12) / 2, 1 / 2])
    assert _order(plain) == [2, 1, 0]  # the big prompt decides: head 2 looks least relevant
    assert _order(normed) == [1, 0, 2]  # head 2 carries the whole of the second prompt


@pytest.fixture(scope="module")
def ioi(tmp_path_factory):
    """(model folder, model, tokenizer, reference samples, held-out prompts) of a tiny Llama on the IOI vocabulary."""
    folder = tmp_path_factory.mktemp("ioi_knobs")
    model, tok = tiny_ioi_llama(folder, seed=1)
    return str(folder), model, tok, ioi_samples(tok, ioi_prompts(tok, 6, seed=0)), ioi_prompts(tok, 12, seed=1)


@pytest.mark.parametrize("unit", ["head", "neuron"])
@pytest.mark.parametrize("relevance", ["abs", "signed", "positive"])
def test_sample_normalisation_matches_per_sample_attribution(ioi, unit, relevance):
    _, model, tok, samples, _ = ioi
    opt = CircuitOptions(unit=unit, relevance=relevance, normalise="sample", batch_size=4)
    got = job.unit_scores(model, samples, "lrp", opt, tok.pad_token_id)
    signed = [attribute(model, [s], units=(unit,), batch_size=1, pad_token_id=tok.pad_token_id).scores[unit]
              for s in samples]
    per = [{"abs": r.abs(), "signed": r, "positive": r.clamp_min(0)}[relevance] for r in signed]
    hand = sum(p / r.abs().sum() for p, r in zip(per, signed, strict=True)) / len(per)
    torch.testing.assert_close(got, hand)
    # the per-prompt values are those of one batched pass (neurons keep them: per_sample=True)
    plain = job.unit_scores(model, samples, "lrp", CircuitOptions(unit=unit, relevance=relevance, batch_size=4),
                            tok.pad_token_id)
    torch.testing.assert_close(plain, sum(per) / len(per), rtol=1e-4, atol=1e-6)
    if unit == "neuron":
        batched = attribute(model, samples, units=("neuron",), batch_size=4, pad_token_id=tok.pad_token_id,
                            per_sample=True).per_sample["neuron"]
        torch.testing.assert_close(batched, torch.stack(signed), rtol=1e-4, atol=1e-6)


def _zeroed(model, unit: str) -> set[tuple[int, int]]:
    """(layer, index) of every unit whose output entries (o-projection or down-projection columns) are zero."""
    arch, geo = architecture(model), geometry(model)
    out = set()
    for layer, block in enumerate(blocks(model)):
        if unit == "head":
            w = block.get_submodule(f"{arch.attn}.{arch.o}").weight.view(-1, geo.n_heads, geo.head_dim)
            cols = (w == 0).all(-1).all(0)
        else:
            cols = (block.get_submodule(arch.down).weight == 0).all(0)
        out |= {(layer, int(i)) for i in cols.nonzero()[:, 0]}
    return out


@pytest.mark.parametrize("unit", ["head", "neuron"])
def test_iterative_reattributes_the_pruned_model(ioi, monkeypatch, unit):
    _, model, tok, samples, held_out = ioi
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def spy(m, batch, **kw):
        rel = attribute(m, batch, **kw)
        calls.append((_zeroed(m, unit), rel.scores[unit]))
        return rel

    monkeypatch.setattr(job, "attribute", spy)
    opt = CircuitOptions(unit=unit, schedule="iterative", batch_size=4)
    curve, masks = job.prune_curve(model, tok, samples, held_out, "lrp", opt)
    ks = [p["k"] for p in curve]
    assert ks == sorted(ks) and ks[0] == 0 and [len(m) for m in masks] == ks
    pruned = [{(u.layer, u.index) for u in m} for m in masks]
    assert all(a <= b for a, b in pairwise(pruned))  # each step keeps what the previous one pruned
    steps = [i for i in range(1, len(ks)) if ks[i] > ks[i - 1]]
    assert len(calls) == len(steps)  # one attribution per step that prunes more
    for (active, scores), i in zip(calls, steps, strict=True):
        assert active == pruned[i - 1]  # attributed with the previous step's mask in place
        assert all(scores[layer, index] == 0 for layer, index in active)  # so pruned units carry no relevance
        fresh = select({unit: scores}, unit, k=ks[i] - ks[i - 1], exclude=masks[i - 1])
        assert pruned[i] - pruned[i - 1] == {(u.layer, u.index) for u in fresh}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # every mask undone

    calls.clear()
    oneshot, _ = job.prune_curve(model, tok, samples, held_out, "lrp", CircuitOptions(unit=unit, batch_size=4))
    assert len(calls) == 1 and calls[0][0] == set()
    assert [p["k"] for p in oneshot] == ks and oneshot[1] == curve[1]  # the first step is the same ranking


@pytest.mark.parametrize("unit", ["head", "neuron"])
def test_circuit_job_runs_every_knob(ioi, tmp_path, unit):
    folder = ioi[0]
    opt = CircuitOptions(unit=unit, relevance="signed", normalise="sample", schedule="iterative", n_reference=3,
                         n_eval=8, batch_size=4, methods=("lrp", "gradient", "random"))
    res = job.circuit(folder, tmp_path / "run", options=opt)
    settings = json.loads((tmp_path / "run" / "results.json").read_text())["settings"]
    assert {k: settings[k] for k in ("unit", "relevance", "normalise", "schedule")} == \
        {"unit": unit, "relevance": "signed", "normalise": "sample", "schedule": "iterative"}
    assert set(res["curves"]) == {"lrp", "gradient", "random"}
    assert [r["method"] for r in res["comparison"]] == ["lrp", "gradient", "random"]
    assert sum(r["kept"] for r in res["circuit"]["per_layer"]) == res["circuit"]["kept"]


@pytest.mark.parametrize("flag", ["relevance", "normalise", "schedule"])
def test_unknown_knob_names_the_flag(flag, capsys, tmp_path):
    with pytest.raises(ConfigError, match=f"--{flag} nope is unknown. Choose one of"):
        CircuitOptions(**{flag: "nope"}).validate()
    with pytest.raises(SystemExit) as exc:
        main(["circuit", "--out", str(tmp_path / "run"), f"--{flag}", "nope"])
    assert exc.value.code == 2
    assert f"--{flag}: invalid choice: 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_method_all_runs_every_circuit_method_lrp_first():
    from safety_prune.cli import build_parser
    from safety_prune.methods import CIRCUIT_METHODS

    args = build_parser().parse_args(["circuit", "--model", "m", "--out", "o", "--method", "all"])
    assert args.methods == CIRCUIT_METHODS and CIRCUIT_METHODS[0] == "lrp"
    args = build_parser().parse_args(["circuit", "--model", "m", "--out", "o", "--method", "gradient,lrp"])
    assert args.methods == ("gradient", "lrp")
