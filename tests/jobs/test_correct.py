"""End-to-end correct on tiny models: outputs, determinism, held-out discipline, saved models."""

import json
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from safety_prune.cli import main
from safety_prune.errors import ConfigError, OutputError
from safety_prune.evaluation import perplexity
from safety_prune.jobs import correct as correct_job
from safety_prune.jobs.correct import correct
from safety_prune.jobs.options import CorrectOptions
from safety_prune.render.facts import run_id_of


def test_correct_all_methods_and_reload(setup, tmp_path):
    _, model, suite = setup
    opts = CorrectOptions(method="all", k=4, batch_size=4, save_model=str(tmp_path / "saved"), force=True)
    res = correct(model, suite, tmp_path / "run", options=opts)
    methods = [row["method"] for row in res["comparison"]]
    assert methods == ["random", "lrp", "gradient", "wanda", "activation", "aura", "aura-topk"]
    top_k = [row for row in res["comparison"] if row["method"] != "aura"]
    assert all(row["k"] == 4 and row["intervention"] == {"kind": "zero"} for row in top_k)
    assert all("paired_vs_random" in row for row in top_k if row["method"] != "random")
    aura = res["comparison"][methods.index("aura")]  # its own gains: no random control at its budget
    assert aura["intervention"]["kind"] == "aura" and "paired_vs_random" not in aura
    assert res["pruned"] == res["pruned"] | {"unit": "neuron", "count": 4}
    # the saved model reloads with plain transformers and reproduces the corrected perplexity
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    from safety_prune.models import load_model
    from safety_prune.suite import load_suite

    lm = load_model(model)
    s = load_suite(suite)
    ppl = perplexity(reloaded, lm.tokenizer, s.general_test(), max_length=s.perplexity.max_length,
                     stride=s.perplexity.stride).perplexity
    assert ppl == pytest.approx(res["corrected"]["perplexity"], rel=1e-4)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "Corrected" in card
    # one results.json, decided before the card was written: the card names the run id the report shows
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert f"run id `{run_id_of(written['manifest'])}`" in card and written["pruned"]["saved_model_sha256"]


def test_same_seed_same_masks(setup, tmp_path):
    _, model, suite = setup
    for name in ("a", "b"):
        correct(model, suite, tmp_path / name, options=CorrectOptions(k=3, batch_size=4, seed=7))
    assert (tmp_path / "a" / "masks.json").read_bytes() == (tmp_path / "b" / "masks.json").read_bytes()


def _poisoned_suite(root, tag: str, base_suite: str) -> str:
    """The tiny suite with explicit eval prompts and general *test* documents replaced by ``tag`` sentinels;
    reference prompts, validation prompts and validation/reference documents stay byte-identical."""
    from safety_prune.suite import load_suite

    src = Path(base_suite).parent
    folder = root / tag
    folder.mkdir()
    test_docs = set(load_suite(base_suite).general_test())
    seen, lines = set(), []
    for i, line in enumerate((src / "general.txt").read_text().splitlines()):
        key = " ".join(line.split())
        if not key or key in seen:
            continue
        seen.add(key)
        lines.append(f"{tag}{i} " + " ".join(["filler"] * (len(line.split()) - 1)) if line in test_docs else line)
    (folder / "general.txt").write_text("\n".join(lines) + "\n")
    (folder / "prompts.txt").write_text((src / "prompts.txt").read_text())
    (folder / "eval.txt").write_text("\n".join(f"{tag} eval prompt {i} about the lake" for i in range(8)) + "\n")
    text = (Path(base_suite)).read_text().replace(
        "split: {eval_fraction: 0.4, validation_fraction: 0.2, seed: 0}",
        "split: {validation_fraction: 0.3, seed: 0}\neval: {source: {path: eval.txt}}")
    (folder / "suite.yaml").write_text(text)
    return str(folder / "suite.yaml")


@pytest.mark.parametrize("variant", [
    dict(search_k=(2, 4)),
    dict(search_k=(2, 4), folds=3),
    dict(method="all", intervention="proportional", strength=(0.5, 1.0), threshold=(0.0,), reach=(1.0,), folds=2)])
def test_held_out_by_data_flow(setup, tmp_path, monkeypatch, variant):
    """Selection sees only reference and validation data: runs that differ only in (sentinel-poisoned) eval
    prompts and test documents select the same units by the same trail, and no selection-time generation,
    perplexity, attribution or AurA activation pass ever receives a sentinel; for the top-k search and for the
    strength search of proportional gains (with every method, AurA's own gains included)."""
    from safety_prune import aura, contrast, selection
    from safety_prune.evaluation import behaviour

    _, model, suite = setup
    phase = {"selecting": False}

    def guard_texts(texts, what):
        if phase["selecting"] and any("SENTINEL" in t for t in texts):
            pytest.fail(f"selection-time {what} read held-out data")

    def checked(fn, what, texts_of):
        def call(*args, **kwargs):
            guard_texts(texts_of(*args, **kwargs), what)
            return fn(*args, **kwargs)
        return call

    def selecting(fn):
        def call(*args, **kwargs):
            phase["selecting"] = True
            try:
                return fn(*args, **kwargs)
            finally:
                phase["selecting"] = False
        return call

    from tiny import tiny_tokenizer

    from safety_prune.jobs.stages import build_references

    tok = tiny_tokenizer()
    monkeypatch.setattr(behaviour, "generate_detailed",
                        checked(behaviour.generate_detailed, "generation", lambda m, t, prompts, **k: prompts))
    monkeypatch.setattr(behaviour, "perplexity", checked(behaviour.perplexity, "perplexity", lambda m, t, x, **k: x))
    monkeypatch.setattr(selection, "perplexity", checked(selection.perplexity, "perplexity", lambda m, t, x, **k: x))
    monkeypatch.setattr(contrast, "attribute", checked(contrast.attribute, "attribution", lambda m, samples, **k: [
        tok.decode(s.input_ids) for s in samples]))
    monkeypatch.setattr(aura, "pooled_activations", checked(aura.pooled_activations, "aura activations",
                                                            lambda m, samples, *a, **k: [
                                                                tok.decode(s.input_ids) for s in samples]))
    for name, fn in (("build_references", build_references), ("rank", correct_job.rank),
                     ("validation_search", correct_job.validation_search),
                     ("search_settings", correct_job.search_settings),
                     ("damage_screen", correct_job.damage_screen)):
        monkeypatch.setattr(correct_job, name, selecting(fn))
    runs = {}
    for tag in ("SENTINELA", "SENTINELB"):
        opts = CorrectOptions(batch_size=4, screen=3, screen_max=0.0, stability=5, **variant)
        runs[tag] = correct(model, _poisoned_suite(tmp_path, tag, suite), tmp_path / f"run{tag}", options=opts)
        assert tag in (tmp_path / f"run{tag}" / "samples.jsonl").read_text()  # the eval really was poisoned
    a, b = runs["SENTINELA"], runs["SENTINELB"]
    assert a["selection"] == b["selection"] and a["selection"]["screen"] and len(a["selection"]["search"]) == 3
    if "folds" in variant:  # the cross-fitted estimate, from validation prompts only
        assert a["selection"]["cross_fit"]["folds"] == variant["folds"]
        assert len(a["selection"]["cross_fit"]["choice_per_fold"]) == variant["folds"]
    assert (tmp_path / "runSENTINELA" / "masks.json").read_bytes() == \
        (tmp_path / "runSENTINELB" / "masks.json").read_bytes()
    assert a["baseline"]["perplexity"] != b["baseline"]["perplexity"]  # and the test text really differed


def test_save_model_refuses_a_model_that_is_not_better(setup, tmp_path):
    """A tiny random model cannot be made measurably better: the report is written, the model is not."""
    from safety_prune.errors import SaveRefused

    _, model, suite = setup
    with pytest.raises(SaveRefused, match="--force"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, batch_size=4,
                                                                       save_model=str(tmp_path / "saved")))
    assert (tmp_path / "run" / "report.html").is_file() and not (tmp_path / "saved").exists()
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["release"]["allowed"] is False and res["release"]["reasons"]
    correct(model, suite, tmp_path / "run2", options=CorrectOptions(k=2, batch_size=4, force=True,
                                                                     save_model=str(tmp_path / "saved")))
    assert (tmp_path / "saved" / "README.md").is_file()


def test_too_few_undesired_references_writes_nothing(setup, tmp_path):
    from safety_prune.errors import DataSourceError

    _, model, suite = setup
    text = Path(suite).read_text().replace("undesired_min: 1, undesired_max: 6",
                                           "undesired_min: 500, undesired_max: 600")
    bad = Path(suite).parent / "few.yaml"
    bad.write_text(text)
    with pytest.raises(DataSourceError, match="undesired_min asks for 500"):
        correct(model, str(bad), tmp_path / "run", options=CorrectOptions(k=2, batch_size=4))
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.parametrize("opts, match", [
    (dict(k=10_000), "exceeds"),
    (dict(sparsity=1.5), "between 0 and 1"),
    (dict(sparsity=0.0), "between 0 and 1"),
    (dict(k=2, sparsity=0.1), "either --k or --sparsity"),
    (dict(dampen=(0.3, 1.0)), r"--dampen 1\.0 lies outside \[0, 1\)"),
    (dict(dampen=(-0.2,)), "outside"),
    (dict(method="nope"), "--method 'nope' is unknown"),
])
def test_bad_options(setup, tmp_path, opts, match):
    _, model, suite = setup
    with pytest.raises(ConfigError, match=match):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(**opts))
    assert not (tmp_path / "run").exists()


def test_save_model_inside_input_folder_refused(setup, tmp_path):
    _, model, suite = setup
    with pytest.raises(OutputError, match="inside the input model folder"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, save_model=f"{model}/corrected"))


def test_save_model_non_empty_refused(setup, tmp_path):
    _, model, suite = setup
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(OutputError, match="not an empty folder"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, save_model=str(tmp_path / "busy")))


def test_cli_k_too_large_is_clear(setup, tmp_path, capsys):
    _, model, suite = setup
    code = main(["correct", "--model", model, "--probe", suite, "--out", str(tmp_path / "run"), "--k", "99999"])
    err = capsys.readouterr().err
    assert code != 0 and "exceeds" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_results_json_is_strict_json(setup, tmp_path):
    _, model, suite = setup
    correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, batch_size=4))
    text = (tmp_path / "run" / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in results.json"))


def test_damage_screen_reads_validation_and_logs(setup, tmp_path):
    _, model, suite = setup
    res = correct(model, suite, tmp_path / "run",
                  options=CorrectOptions(ppl_budget=0.5, screen=6, screen_max=0.0, batch_size=4, search_k=(2, 4)))
    screen = res["selection"]["screen"]
    assert len(screen) == 6 and all("rise" in row and "dropped" in row for row in screen)
    dropped = {row["unit"] for row in screen if row["dropped"]}
    assert not dropped & set(res["pruned"]["units"])  # a dropped unit is only picked after all others


def test_exclude_layers_are_never_pruned(setup, tmp_path):
    _, model, suite = setup
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(k=5, exclude_layers=(1,), batch_size=4))
    assert res["pruned"]["count"] == 5 and all(u.startswith("L0.") for u in res["pruned"]["units"])
    with pytest.raises(ConfigError, match=r"layers 0\.\.1"):
        correct(model, suite, tmp_path / "bad", options=CorrectOptions(k=5, exclude_layers=(7,)))


def test_secondary_scorer_in_every_comparison_row(setup, tmp_path):
    """Every row scored by the second opinion too; selection, gate and release read the primary only."""
    from test_audit import SECONDARY_KEYS, _suite_with

    _, model, suite = setup
    suite = _suite_with(suite, tmp_path / "suite", "scorer: {name: profanity, threshold: 0.1, validate: false, "
                        "secondary: [repetition]}")
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(method="lrp", k=2, sweep=(1,),
                                                                         batch_size=4))
    assert [s["name"] for s in res["scorer"]["secondary"]] == ["repetition"]
    for block in [res["baseline"], res["corrected"], *res["comparison"], *res["tradeoff"]]:
        assert set(block["secondary"]) == {"repetition"}
        assert set(block["secondary"]["repetition"]) == SECONDARY_KEYS
    assert len(res["tradeoff"]) == 4  # random and lrp at k = 2 and the sweep's k = 1
    assert all(check["metric"] == "behaviour_rate" for check in res["gate"]["checks"])
    assert "Second opinion" in (tmp_path / "run" / "report.html").read_text()


def _looping_model(folder: Path) -> str:
    """A tiny Llama that mostly copies its last token (tied embeddings, damped blocks): prompts ending in a
    whole word loop ("the the the"), those ending in a word piece do not."""
    import torch
    from tiny import tiny_config, tiny_tokenizer

    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.2)
            layer.mlp.down_proj.weight.mul_(0.2)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def looping_suite(folder: Path, target: str, scorer_options: str = "{}", extra: str = "") -> str:
    """A tiny repetition suite whose prompts make ``_looping_model`` loop (half of them) under greedy decoding."""
    from tiny import write_tiny_suite

    suite = Path(write_tiny_suite(folder))
    (suite.parent / "prompts.txt").write_text("\n".join(
        f"Prompt {i}: the river flows past the mill and {'the' if i % 2 else 'sing'}" for i in range(30)) + "\n")
    suite.write_text(suite.read_text()
                     .replace("scorer: {name: profanity, threshold: 0.1, validate: false}",
                              "scorer: {name: repetition, threshold: 0.5, validate: false, "
                              f"options: {scorer_options}}}\n"
                              "behaviour: {name: looping continuations, metric: repetition ratio}")
                     .replace("max_new_tokens: 6", "max_new_tokens: 10")
                     .replace("target: continuation", f"target: {target}")
                     .replace("samples_per_prompt: 4", "samples_per_prompt: 1")  # loops come from greedy decoding
                     + extra)
    return str(suite)


def test_correct_on_a_tiny_repetition_suite(tmp_path):
    """The second behaviour runs through the same machinery: looping references, repeat-token targets,
    behaviour-neutral names and the suite's labels."""
    model = _looping_model(tmp_path / "model")
    suite = looping_suite(tmp_path / "suite", "tokens")
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(batch_size=4, search_k=(2, 4)))
    assert res["contrast"]["target"] == "tokens" and res["contrast"]["n_token_samples"] >= 1
    assert res["baseline"]["behaviour_rate"] > 0 and res["selection"]["rule"] == "validation"
    assert res["probe"]["behaviour"] == {"name": "looping continuations", "metric": "repetition ratio"}
    assert {row["method"] for row in res["tradeoff"]} == {"random", "lrp"}
    assert "looping continuations" in (tmp_path / "run" / "report.html").read_text()


def test_saved_model_hash_is_in_the_results(setup, tmp_path):
    from safety_prune.io import sha256_file

    _, model, suite = setup
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, batch_size=4, force=True,
                                                                         save_model=str(tmp_path / "saved")))
    assert res["pruned"]["saved_model_sha256"] == {"model.safetensors": sha256_file(tmp_path / "saved" /
                                                                                     "model.safetensors")}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["pruned"]["saved_model_sha256"]
    assert saved == res["pruned"]["saved_model_sha256"]
    assert res["pruned"]["saved_model_sha256"]["model.safetensors"] in (tmp_path / "run" / "report.html").read_text()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("opts", [dict(intervention="proportional", strength=(0.5,), threshold=(0.0,), reach=(1.0,)),
                                  dict(method="aura", pooling="mean")])
def test_saved_model_is_the_gains_applied(setup, tmp_path, opts):
    """Per-unit gains (proportional, AurA): masks.json records each unit's gain, and the saved plain HF folder
    gives the same logits, bit for bit, as the input model with those gains applied."""
    import torch

    from safety_prune.pruning import load_intervention, masked

    _, model, suite = setup
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(
        batch_size=4, stability=0, save_model=str(tmp_path / "saved"), force=True, **opts))
    units, gains = load_intervention(tmp_path / "run" / "masks.json")
    assert isinstance(gains, torch.Tensor) and len(units) == len(gains) == res["pruned"]["count"] > 0
    assert float(gains.min()) < 1 and float(gains.max()) < 1
    kind = opts.get("intervention", "aura")
    assert res["pruned"]["intervention"]["kind"] == kind == res["selection"]["intervention"]["kind"]
    assert res["selection"]["rule"] == ("given" if kind == "proportional" else "fixed")
    if kind == "proportional":
        assert float(gains.min()) == 0.5  # the most undesired unit gets 1 - strength
    original = AutoModelForCausalLM.from_pretrained(model).eval()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.tensor([[1, 5, 17, 40, 99, 120, 7, 64]])
    with masked(original, units, scale=gains):
        expected = _logits(original, ids)
    assert torch.equal(_logits(saved, ids), expected) and not torch.equal(_logits(original, ids), expected)
    rows = {row["method"]: row for row in res["comparison"]}
    assert rows["random"]["k"] == len(units) and "paired_vs_random" in rows[opts.get("method", "lrp")]
    assert "dampened" in (tmp_path / "saved" / "README.md").read_text()


def test_proportional_strength_is_chosen_on_validation(setup, tmp_path):
    """--intervention proportional searches the strengths (and thresholds) on validation data like k; every
    method in --method all gets proportional gains, except AurA (its own) and random (the primary's gains on
    random units)."""
    _, model, suite = setup
    opts = CorrectOptions(method="all", intervention="proportional", strength=(0.25, 1.0), threshold=(0.0,),
                          reach=(1.0,), batch_size=4, stability=0, ppl_budget=100.0, max_distinct2_drop=100.0,
                          max_continuation_ppl_rise=100.0, select_by="effect")
    res = correct(model, suite, tmp_path / "run", options=opts)
    sel = res["selection"]
    assert sel["rule"] == "validation" and [row.get("strength") for row in sel["search"]] == [None, 0.25, 1.0]
    assert all(row["generated"] for row in sel["search"])
    assert all(row["k"] > 0 and row["scale"] == 1 - row["strength"] for row in sel["search"][1:])
    chosen = max(sel["search"][1:], key=lambda row: row["reduction"])
    assert res["pruned"]["intervention"]["strength"] == chosen["strength"]
    kinds = {row["method"]: row["intervention"]["kind"] for row in res["comparison"]}
    assert kinds == {"random": "proportional", "lrp": "proportional", "gradient": "proportional",
                     "wanda": "proportional", "activation": "proportional", "aura": "aura",
                     "aura-topk": "proportional"}


@pytest.mark.parametrize("folds", [None, 3])
def test_budget_rule_takes_the_strongest_setting_within_the_limits(setup, tmp_path, folds):
    """--select-by budget (the default): generation from the strongest candidate within the limit only, whose
    perplexity is read after the median one's; the milder ones are recorded, not generated from (the mildest not
    even read), and the behaviour never chooses (with --folds every fold picks the same setting, so the estimate
    is its plain validation effect)."""
    _, model, suite = setup
    opts = CorrectOptions(method="lrp", intervention="proportional", strength=(0.25, 0.5, 1.0), threshold=(0.0,),
                          reach=(1.0,), batch_size=4, stability=0, ppl_budget=100.0, max_distinct2_drop=100.0,
                          max_continuation_ppl_rise=100.0, folds=folds)
    assert opts.select_by == "budget"
    res = correct(model, suite, tmp_path / "run", options=opts)
    sel = res["selection"]
    rows = sel["search"][1:]
    assert [row["strength"] for row in rows] == [0.25, 0.5, 1.0]
    assert [row["generated"] for row in rows] == [False, False, True]
    assert rows[0]["perplexity"] is None and rows[1]["perplexity"] is not None
    assert all(row["behaviour_mean"] is None for row in rows[:2])
    assert rows[0]["note"].startswith("not measured: strength 1,")
    assert rows[1]["note"].startswith("not generated from: strength 1,")
    assert all("dampens more" in row["note"] for row in rows[:2])
    assert rows[0]["dampening"] < rows[1]["dampening"] < rows[2]["dampening"]
    assert res["pruned"]["intervention"]["strength"] == 1.0
    assert "the behaviour scores do not choose" in sel["objective"]
    if folds:
        assert sel["cross_fit"]["choice_per_fold"] == [{"k": rows[2]["k"], "scale": 0.0, "strength": 1.0,
                                                        "threshold": 0.0, "reach": 1.0}] * folds
        assert sel["cross_fit"]["reduction"] == pytest.approx(rows[2]["reduction"])
    assert "not generated from: strength 1" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")


def test_budget_rule_steps_down_past_a_candidate_over_the_limit(setup, tmp_path):
    """A perplexity budget between the mildest and the strongest candidate's rise (all read first, by the cost rule):
    the budget rule generates only from the strongest candidate still within it, and chooses it."""
    _, model, suite = setup
    grid = {"method": "lrp", "intervention": "proportional", "strength": (0.25, 0.5, 1.0), "threshold": (0.0,),
            "reach": (0.01,), "unit": "head", "batch_size": 4, "stability": 0, "max_distinct2_drop": 100.0,
            "max_continuation_ppl_rise": 100.0, "max_capability_drop": 1.0, "force": True}
    free = correct(model, suite, tmp_path / "free", options=CorrectOptions(**grid, ppl_budget=100.0,
                                                                            select_by="cost"))  # reads them all
    base, *rows = free["selection"]["search"]
    rise = [row["perplexity"] / base["perplexity"] - 1 for row in rows]
    assert rise[0] < rise[-1]  # the tiny model: stronger heads' gains cost more perplexity
    budget = (rise[0] + rise[-1]) / 2
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(**grid, ppl_budget=budget))
    rows = res["selection"]["search"][1:]
    within = [i for i, r in enumerate(rise) if r <= budget]
    assert res["pruned"]["intervention"]["strength"] == rows[within[-1]]["strength"]
    assert [row["generated"] for row in rows] == [i == within[-1] for i in range(len(rows))]
    assert rows[-1]["violations"][0].startswith(("perplexity +", "not measured: it changes every unit"))


@pytest.mark.parametrize(("argv", "match"), [
    (["--select-by", "luck"], "invalid choice: 'luck'"),
    (["--intervention", "proportional", "--strength", "1.5"], r"--strength 1\.5 lies outside \[0, 1\]"),
    (["--intervention", "proportional", "--threshold", "1"], r"--threshold 1\.0 lies outside \[0, 1\)"),
    (["--intervention", "proportional", "--method", "random"], "--method random has none"),
    (["--intervention", "proportional", "--k", "3"], "--k chooses the top-k units"),
    (["--strength", "0.5"], "--strength applies to --intervention proportional"),
    (["--intervention", "proportional", "--reach", "0"], r"--reach 0\.0 lies outside \(0, 1\]"),
    (["--reach", "0.5"], "--reach applies to --intervention proportional"),
    (["--method", "aura", "--k", "3"], "nothing to choose: drop --k"),
    (["--pooling", "median"], "invalid choice: 'median'"),
    (["--folds", "1"], "--folds 1: cross-fitting needs at least 2 folds"),
    (["--folds", "999"], "--folds 999 exceeds the 5 validation prompts available"),
    (["--folds", "3", "--k", "2"], "--folds 3 cross-fits the validation search"),
])
def test_cli_bad_intervention_options_write_nothing(setup, tmp_path, capsys, argv, match):
    import re

    _, model, suite = setup
    try:
        code = main(["correct", "--model", model, "--probe", suite, "--out", str(tmp_path / "run"), *argv])
    except SystemExit as exc:  # argparse refuses a value outside its choices itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and re.search(match, err) and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_api_bad_pooling_is_a_config_error(setup, tmp_path):
    _, model, suite = setup
    with pytest.raises(ConfigError, match=r"--pooling median is unknown\. Choose one of: max, mean"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(method="aura", pooling="median"))
    assert not (tmp_path / "run").exists()


def test_release_refuses_a_correction_that_random_units_match(tmp_path):
    """Beating the baseline is not enough: a change that the same change on random units matches (paired interval
    against the random control not below 0) is no targeted correction, and the reason says so."""
    from safety_prune.jobs.correct import limits_of, release_verdict
    from safety_prune.render import render_report

    base = {"perplexity": {"value": 10.0}, "distinct2": {"value": 0.8}, "continuation_perplexity": {"value": 3.0}}
    corrected = {"perplexity": 10.0, "distinct2": 0.8, "continuation_perplexity": 3.0,
                 "paired_vs_baseline": {"delta": -0.05, "ci_low": -0.08, "ci_high": -0.02},
                 "paired_vs_random": {"delta": -0.02, "ci_low": -0.05, "ci_high": 0.001}}
    verdict = release_verdict(base, corrected, {"feasible": True}, limits_of(CorrectOptions()))
    assert not verdict["allowed"]
    assert "not a targeted correction" in verdict["reason"] and "+0.0010" in verdict["reason"]
    assert not release_verdict(base, {k: v for k, v in corrected.items() if k != "paired_vs_random"},
                               {"feasible": True}, limits_of(CorrectOptions()))["allowed"]
    corrected["paired_vs_random"] = {"delta": -0.04, "ci_low": -0.06, "ci_high": -0.01}
    assert release_verdict(base, corrected, {"feasible": True}, limits_of(CorrectOptions()))["allowed"]

    fixture = Path(__file__).parent.parent / "fixtures" / "correct_results.json"
    res = json.loads(fixture.read_text(encoding="utf-8"))
    corrected["paired_vs_random"]["ci_high"] = 0.001
    res["release"] = release_verdict(base, corrected, {"feasible": True}, limits_of(CorrectOptions()))
    render_report(res, fixture.parent / "correct_samples.jsonl", tmp_path / "report.html")
    assert "not a targeted correction" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_proportional_reach_is_searched_and_recorded(setup, tmp_path):
    """--reach values are candidates of the validation search like strengths; the chosen one is recorded with the
    gains, and a saturating reach changes how much, not which units."""
    _, model, suite = setup
    opts = CorrectOptions(method="lrp", intervention="proportional", strength=(1.0,), threshold=(0.0,),
                          reach=(1.0, 0.5), batch_size=4, stability=0, force=True)
    res = correct(model, suite, tmp_path / "run", options=opts)
    search = res["selection"]["search"]
    assert [row.get("reach") for row in search] == [None, 1.0, 0.5]
    assert search[1]["k"] == search[2]["k"]  # the same units get a gain below 1
    assert res["pruned"]["intervention"]["reach"] in (1.0, 0.5)


def test_a_stronger_candidate_than_one_over_the_limit_is_recorded_not_measured(setup, tmp_path):
    """With no perplexity rise allowed, strength 0.5 on the heads breaks the limit, so strength 1 (every gain lower)
    is never built: its search row says why, and the report and results.json carry it without a perplexity."""
    _, model, suite = setup
    opts = CorrectOptions(method="lrp", intervention="proportional", strength=(0.5, 1.0), threshold=(0.0,),
                          reach=(0.01,), unit="head", batch_size=4, stability=0, ppl_budget=1e-9, force=True)
    res = correct(model, suite, tmp_path / "run", options=opts)
    mild, strong = res["selection"]["search"][1:]
    assert mild["violations"][0].startswith("perplexity +") and mild["perplexity"] is not None
    assert strong["strength"] == 1.0 and strong["perplexity"] is None and strong["generated"] is False
    assert strong["violations"] == ["not measured: it changes every unit at least as much as strength 0.5, "
                                    "threshold 0, reach 0.01, which is over the perplexity limit"]
    assert "not measured, so it could not be chosen" in (tmp_path / "run" / "report.html").read_text()


def test_each_candidate_validation_perplexity_is_measured_once(setup, tmp_path, monkeypatch):
    """The search checks a candidate's validation perplexity before generating from it; measuring the candidate
    then reuses that number instead of computing it again: one pass per candidate, plus the unpruned model's."""
    from safety_prune.evaluation import behaviour

    _, model, suite = setup
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[2])
        return perplexity(*args, **kwargs)

    monkeypatch.setattr(correct_job, "perplexity", counted)
    monkeypatch.setattr(behaviour, "perplexity", counted)
    opts = CorrectOptions(method="lrp", intervention="proportional", strength=(0.5, 1.0), threshold=(0.0,),
                          reach=(1.0,), batch_size=4, stability=0, force=True, select_by="effect")
    res = correct(model, suite, tmp_path / "run", options=opts)
    search = res["selection"]["search"]
    assert all(row["generated"] for row in search) and len(search) == 3
    passes = sorted(Counter(json.dumps(text) for text in calls).values())
    assert passes == [3, 3]  # test text: baseline, method, random; validation text: unpruned, two candidates


def test_report_says_how_stable_the_correction_is(setup, tmp_path):
    """Issue 26: the cross-fitted folds' spread and the bootstrap overlap are in results.json and said in words."""
    _, model, suite = setup
    opts = CorrectOptions(method="lrp", intervention="proportional", strength=(0.5, 1.0), threshold=(0.0,),
                          folds=2, batch_size=4, stability=5, force=True)
    res = correct(model, suite, tmp_path / "run", options=opts)
    cf, stab = res["selection"]["cross_fit"], res["selection"]["stability"]
    low, high = min(cf["fold_reductions"]), max(cf["fold_reductions"])
    assert cf["fold_spread"]["range_pp"] == pytest.approx(100 * (high - low))
    assert stab["computed"] and stab["k"] == min(100, res["pruned"]["count"]) == min(100, stab["changed"])
    assert stab["reading"] in ("stable", "moderate", "unstable")
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    said = html[html.index('id="stability"'):].split("</p>")[0]
    assert f"How stable: {stab['reading']}." in said
    assert f"fold by fold it ranges from {round(100 * low, 1)}% to {round(100 * high, 1)}%" in said
    assert "benchmarks/stability.py" in said and "The strength, threshold and reach of the gains" in html


def test_proportional_without_flags_searches_the_measured_grid(setup, tmp_path):
    """The default grid: s from 0.25 to 1 in steps of 1/8 (the budget rule stops near the limit), threshold 0,
    reach in {1, 0.3, 0.1, 0.03}."""
    _, model, suite = setup
    opts = CorrectOptions(method="lrp", intervention="proportional", batch_size=4, stability=0, force=True,
                          ppl_budget=100.0, max_distinct2_drop=100.0, max_continuation_ppl_rise=100.0)
    res = correct(model, suite, tmp_path / "run", options=opts)
    grid = {(row["strength"], row["threshold"], row["reach"]) for row in res["selection"]["search"][1:]}
    assert grid == {(s / 8, 0.0, r) for s in range(2, 9) for r in (1.0, 0.3, 0.1, 0.03)}


def test_vocabulary_target_runs_and_says_what_it_explains(setup, tmp_path):
    """``reference.explain: vocabulary`` through the whole job: the undesired samples explain the class the scorer's
    words give, and results.json says which tokens."""
    _, model, suite = setup
    text = Path(suite).read_text()
    assert "target: continuation" in text
    vocab = Path(suite).parent / "vocab.yaml"
    vocab.write_text(text.replace("target: continuation", "target: tokens, explain: vocabulary"))
    correct(model, str(vocab), tmp_path / "run", options=CorrectOptions(k=2, batch_size=4, method="lrp"))
    info = json.loads((tmp_path / "run" / "results.json").read_text())["contrast"]
    assert info["target"] == "tokens" and "vocabulary tokens" in info["explain"]
    assert info["vocabulary"] and all(w.startswith(" ") for w in info["vocabulary"])


def test_cost_rule_takes_the_costliest_setting_within_the_limits(setup, tmp_path):
    """--select-by cost: every candidate's perplexity first, then generation from the one with the largest
    validation perplexity within the limit; the objective and the cheaper rows' notes say so."""
    _, model, suite = setup
    opts = CorrectOptions(method="lrp", intervention="proportional", strength=(0.25, 0.5, 1.0), threshold=(0.0,),
                          reach=(1.0, 0.3), batch_size=4, stability=0, ppl_budget=100.0, max_distinct2_drop=100.0,
                          max_continuation_ppl_rise=100.0, select_by="cost", search_tokens=10**6)
    res = correct(model, suite, tmp_path / "run", options=opts)
    sel = res["selection"]
    rows = sel["search"][1:]
    costliest = max(range(len(rows)), key=lambda i: (rows[i]["perplexity"], -i))
    assert [row["generated"] for row in rows] == [i == costliest for i in range(len(rows))]
    assert res["pruned"]["intervention"]["strength"] == rows[costliest]["strength"]
    assert res["pruned"]["intervention"]["reach"] == rows[costliest]["reach"]
    assert all("costs more perplexity" in row["note"] for i, row in enumerate(rows) if i != costliest)
    assert sel["objective"].startswith("the costliest setting")
    assert 0 < sel["split"]["n_tokens"] < 10**6  # all the validation text there is, counted as scored
