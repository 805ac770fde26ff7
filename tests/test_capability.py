"""Capability retention (evaluation/capability.py): each metric against a hand computation on a tiny model, the
item rules, the paired drop, the too-small error, and the data flow into correct and compress results.

The tiny Llama is trained for a few seconds on two-sentence documents of the test corpus, so that it completes some
of the test passages' final words and continuations (a random model gets every one wrong, and a test of all zeros
could not fail); which ones it gets right is decided here by plain ``model.generate`` greedy decoding.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import CORPUS, FAMILIES, tiny_model, tiny_tokenizer, write_tiny_suite

from safety_prune.errors import DataSourceError, ProbeSuiteError
from safety_prune.evaluation.capability import (
    CONTINUATION_TOKENS,
    MAX_CONTEXT_TOKENS,
    MIN_ITEMS,
    MIN_PASSAGE_WORDS,
    PROMPT_WORDS,
    Passage,
    capability_metrics,
    capability_set,
    continuation_f1s,
    last_word_hits,
    token_f1,
)
from safety_prune.evaluation.stats import paired_bootstrap_diff
from safety_prune.suite import load_suite

SENTENCES = sorted(set(CORPUS))


def _documents(n: int, seed: int = 0, sentences: int = 6) -> list[str]:
    """``n`` distinct documents of ``sentences`` corpus sentences each (56 to 66 words for 6)."""
    rng, docs = random.Random(seed), []
    while len(docs) < n:
        doc = " ".join(rng.choice(SENTENCES) for _ in range(sentences))
        if doc not in docs:
            docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A tiny Llama fitted to two-sentence documents of the corpus (about 5 s on one core)."""
    tok = tiny_tokenizer()
    rng = random.Random(0)
    enc = [tok(" ".join(rng.sample(SENTENCES, 2)))["input_ids"] for _ in range(32)]
    width = max(map(len, enc))
    ids = torch.tensor([e + [0] * (width - len(e)) for e in enc])
    mask = (torch.arange(width)[None] < torch.tensor([len(e) for e in enc])[:, None]).long()
    model = tiny_model("llama").train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _hand_hit(model: torch.nn.Module, doc: str) -> float:
    """The definition, step by step: context = every character before the final word; target = " word" as encoded
    after it; correct when greedy decoding gives exactly the target's tokens, then a token that does not start with
    a letter or digit (or a special token)."""
    tok = tiny_tokenizer()
    head, _, last = doc.rpartition(" ")
    word = last.rstrip(".")
    ctx = tok(head)["input_ids"]
    target = tok(head + " " + word)["input_ids"][len(ctx):]
    ctx = ctx[-MAX_CONTEXT_TOKENS:][-(256 - len(target)):]  # the tiny model has 256 positions
    out = _greedy(model, ctx, len(target) + 1)
    after = out[len(target)] if len(out) > len(target) else tok.eos_token_id
    text = tok.decode([after])
    ends = after in tok.all_special_ids or not text[:1].isalnum()
    return float(out[:len(target)] == target and ends)


def _hand_f1(model: torch.nn.Module, doc: str) -> float:
    tok = tiny_tokenizer()
    words = doc.split()
    prompt = tok(" ".join(words[:PROMPT_WORDS]))["input_ids"]
    reference = tok(doc)["input_ids"][len(prompt):][:CONTINUATION_TOKENS]
    out = _greedy(model, prompt, CONTINUATION_TOKENS)
    out = out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out
    overlap = sum(min(out.count(t), reference.count(t)) for t in set(out))
    if not overlap:
        return 0.0
    p, r = overlap / len(out), overlap / len(reference)
    return 2 * p * r / (p + r)


def test_token_f1_by_hand() -> None:
    # overlap {2, 2}: precision 2/4, recall 2/5, F1 = 2 * 0.5 * 0.4 / 0.9
    assert token_f1([1, 2, 2, 3], [2, 2, 4, 5, 6]) == pytest.approx(4 / 9)
    assert token_f1([2, 2, 2], [2, 5]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert token_f1([7, 8], [8, 7]) == 1.0
    assert token_f1([1, 2], [3, 4]) == 0.0
    assert token_f1([], [3, 4]) == 0.0


def test_which_documents_qualify() -> None:
    tok = tiny_tokenizer()
    good = _documents(MIN_ITEMS + 5)
    filler = " ".join(["the lake"] * 30)
    odd = [f"{filler} in 1991.", f"{filler} (482Uhq).", f"{filler} the U.S.",  # final word not letters
           " ".join(good[0].split()[:MIN_PASSAGE_WORDS - 1])]  # one word short (49 words)
    quoted = f'{filler} he said "Hello."'  # the opening quote stays in the context: target "Hello", no space
    hyphen = f"{filler} a rock-and-roll."
    items = capability_set(tok, [*good, *odd, quoted, hyphen], "general test")
    assert items.split == "general test" and items.n_documents == len(good) + 6
    assert [p.word for p in items.passages] == [d.split()[-1].rstrip(".") for d in good] + ["Hello", "rock-and-roll"]
    last = items.passages[-2]
    assert tok.decode(list(last.ids[last.start:])) == "Hello"
    assert tok.decode(list(last.ids[:last.start])).endswith('said "')
    first = items.passages[0]
    assert tok.decode(list(first.ids[first.start:])) == " " + good[0].split()[-1].rstrip(".")
    # continuation prompts: more than 32 words and >= 20 tokens after them (the 49-word document qualifies)
    assert len(items.continuations) == len(good) + 6
    c = items.continuations[0]
    assert c.prompt == " ".join(good[0].split()[:PROMPT_WORDS]) and len(c.reference) == CONTINUATION_TOKENS
    assert list(c.reference) == tok(good[0])["input_ids"][len(tok(c.prompt)["input_ids"]):][:CONTINUATION_TOKENS]


def test_metrics_match_the_hand_computation(trained: torch.nn.Module) -> None:
    tok = tiny_tokenizer()
    long_doc = _documents(1, seed=9, sentences=10)  # ~100 words: its context is cut to the model's positions
    docs = _documents(MIN_ITEMS) + long_doc
    items = capability_set(tok, docs, "general test")
    assert len(tok(docs[-1])["input_ids"]) > 256
    hits = last_word_hits(trained, tok, items.passages, batch_size=8)
    assert hits == [_hand_hit(trained, d) for d in docs]
    assert 0 < sum(hits) < len(hits)  # some right and some wrong, so the comparison can fail
    f1 = continuation_f1s(trained, tok, items.continuations, batch_size=8)
    assert f1 == pytest.approx([_hand_f1(trained, d) for d in docs], abs=1e-12)
    assert 0 < np.mean(f1) < 1

    metrics = capability_metrics(trained, trained, tok, items, seed=0, batch_size=8)
    assert metrics["last_word_accuracy"]["value"] == pytest.approx(np.mean(hits))
    assert metrics["continuation_f1"]["value"] == pytest.approx(np.mean(f1))
    assert metrics["last_word_accuracy"]["n"] == len(docs)
    assert metrics["last_word_accuracy"]["ci_low"] < np.mean(hits) < metrics["last_word_accuracy"]["ci_high"]
    for key in ("last_word_accuracy_drop", "continuation_f1_drop"):  # the unpruned model against itself
        assert metrics[key] | {"p_value": 0} == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 0,
                                                  "n": len(docs), "split": "general test", "documents": len(docs)}


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_check_equals_greedy_decoding_in_every_family(family: str) -> None:
    """A passage whose target is the model's own greedy token counts as hit exactly when the greedy token after it
    does not continue the word; a wrong target never does. Rows of different lengths share one batch, so the logits
    kept per row (``logits_to_keep``) must be that row's positions."""
    tok, model = tiny_tokenizer(), tiny_model(family)
    passages, expected = [], []
    for n, doc in enumerate(_documents(6, seed=4, sentences=2)):
        ctx = tok(" ".join(doc.split()[:8 + 3 * n]))["input_ids"]
        first, after = _greedy(model, ctx, 2)
        passages += [Passage((*ctx, first), len(ctx), "own"), Passage((*ctx, (first + 1) % 300), len(ctx), "wrong")]
        text = tok.decode([after])
        expected += [float(after in tok.all_special_ids or not text[:1].isalnum()), 0.0]
    assert last_word_hits(model, tok, passages, batch_size=4) == expected
    assert 1.0 in expected  # some own tokens end the word, so a wrong position would show


def test_paired_drop_against_the_unpruned_model(trained: torch.nn.Module) -> None:
    tok = tiny_tokenizer()
    items = capability_set(tok, _documents(MIN_ITEMS), "general test")
    damaged = tiny_model("llama")
    damaged.load_state_dict(trained.state_dict())
    with torch.no_grad():
        damaged.model.layers[1].mlp.down_proj.weight.mul_(0.3)
    base = capability_metrics(trained, trained, tok, items, seed=3, batch_size=8)
    ref = items.reference_scores(trained, tok)
    assert items.reference_scores(trained, tok) is ref  # measured once per unpruned model
    got = capability_metrics(damaged, trained, tok, items, seed=3, batch_size=8)
    mine = last_word_hits(damaged, tok, items.passages, batch_size=8)
    assert got["last_word_accuracy"]["value"] == pytest.approx(np.mean(mine))
    paired = paired_bootstrap_diff(mine, ref.last_word, seed=3)
    drop = got["last_word_accuracy_drop"]
    assert drop["value"] == pytest.approx(base["last_word_accuracy"]["value"] - np.mean(mine))
    assert [drop["ci_low"], drop["ci_high"], drop["p_value"]] == [paired["ci_low"], paired["ci_high"],
                                                                   paired["p_value"]]
    assert got["continuation_f1_drop"]["value"] == pytest.approx(
        base["continuation_f1"]["value"] - got["continuation_f1"]["value"])
    assert got["continuation_f1_drop"]["value"] != 0  # the damage changed some continuations


def test_too_few_documents_is_a_clear_error() -> None:
    docs = [*_documents(MIN_ITEMS - 1), " ".join(["short"] * 20)]
    with pytest.raises(DataSourceError) as info:
        capability_set(tiny_tokenizer(), docs, "general validation")
    msg = str(info.value)
    assert "general validation" in msg and f"{MIN_ITEMS - 1} last-word passages" in msg
    assert f"{MIN_ITEMS - 1} continuation prompts" in msg and str(MIN_ITEMS) in msg
    assert "capability: false" in msg and "general.test_words" in msg


def test_packaged_suites_have_enough_documents_in_both_splits() -> None:
    tok = tiny_tokenizer()  # byte-level BPE like the default model's; the counts do not depend on it here
    for name in ("toxicity", "repetition"):
        suite = load_suite(name)
        assert suite.capability
        for docs, split in ((suite.general_test(), "general test"), (suite.general_validation(), "validation")):
            items = capability_set(tok, docs, split)
            assert min(len(items.passages), len(items.continuations)) >= MIN_ITEMS, (name, split)


def test_suite_key_is_a_boolean(tmp_path: Path) -> None:
    path = Path(write_tiny_suite(tmp_path))
    assert load_suite(str(path)).capability is False
    path.write_text(path.read_text().replace("capability: false", "capability: sometimes"))
    with pytest.raises(ProbeSuiteError, match="capability"):
        load_suite(str(path))


# ------------------------------------------------------------------------------------------------ the jobs

def _capability_suite(root: Path, trained: torch.nn.Module, documents: int, seed: int, validation_words: int
                      ) -> tuple[str, str]:
    """(model folder, suite) under ``root``: the tiny suite measuring capability on ``documents`` 60-word general
    documents, 7,000 test words and ``validation_words``."""
    trained.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    suite = Path(write_tiny_suite(root / "suite"))
    (root / "suite" / "general.txt").write_text("\n".join(_documents(documents, seed=seed)) + "\n")
    text = suite.read_text().replace("validation_words: 300\n  test_words: 300",
                                     f"validation_words: {validation_words}\n  test_words: 7000")
    suite.write_text(text.replace("capability: false", "capability: true"))
    return str(root / "model"), str(suite)


@pytest.fixture(scope="module")
def capability_run(tmp_path_factory, trained: torch.nn.Module) -> tuple[str, str]:
    """Capability measured on the test documents only."""
    return _capability_suite(tmp_path_factory.mktemp("capability"), trained, 160, seed=1, validation_words=600)


def test_correct_reports_capability_from_the_test_documents(capability_run, tmp_path: Path) -> None:
    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.models import load_model

    model, suite = capability_run
    res = correct(model, suite, tmp_path / "run", options=CorrectOptions(k=2, batch_size=4, stability=0),
                  fail_on=["last_word_accuracy_drop>0.02"])
    s = load_suite(suite)
    lm = load_model(model)
    test_items = capability_set(lm.tokenizer, s.general_test(), "general test")
    hand = np.mean(last_word_hits(lm.model, lm.tokenizer, test_items.passages))
    base, corr = res["baseline"], res["corrected"]
    assert base["last_word_accuracy"] == pytest.approx(hand) and 0 < hand < 1
    assert base["details"]["last_word_accuracy"]["n"] == len(test_items.passages)
    assert base["details"]["continuation_f1"]["split"] == "general test"
    assert base["details"]["continuation_f1"]["documents"] == len(s.general_test())
    assert base["last_word_accuracy_drop"] == base["continuation_f1_drop"] == 0.0
    for row in (corr, *res["comparison"]):
        for key in ("last_word_accuracy", "continuation_f1"):
            assert row[f"{key}_drop"] == pytest.approx(base[key] - row[key])
            assert len(row[f"{key}_drop_ci"]) == 2
    check = res["gate"]["checks"][0]
    assert check["metric"] == "last_word_accuracy_drop" and check["value"] == corr["last_word_accuracy_drop"]
    assert res["gate"]["passed"] == (corr["last_word_accuracy_drop"] <= 0.02)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Last-word accuracy" in html and "Continuation token-F1 drop" in html
    assert '<th class="num">last word</th><th class="num">cont. F1</th>' in html  # the method comparison
    assert f'<td class="num">{res["comparison"][0]["last_word_accuracy"]:.3g}</td>' in html


def test_compress_reports_capability(capability_run, tmp_path: Path) -> None:
    from safety_prune.jobs.compress import compress
    from safety_prune.jobs.options import CompressOptions

    model, suite = capability_run
    res = compress(model, suite, tmp_path / "run", options=CompressOptions(methods=("magnitude",), sparsity=0.3))
    base, row = res["baseline"], res["comparison"][0]
    assert 0 < base["last_word_accuracy"] < 1 and base["last_word_accuracy_drop"] == 0.0
    assert row["last_word_accuracy_drop"] == pytest.approx(base["last_word_accuracy"] - row["last_word_accuracy"])
    assert row["continuation_f1_drop"] == pytest.approx(base["continuation_f1"] - row["continuation_f1"])
    assert "last word accuracy drop" in (tmp_path / "run" / "report.html").read_text()


def test_a_capability_suite_with_short_documents_fails_before_generating(tmp_path: Path) -> None:
    from tiny import save_tiny

    from safety_prune.jobs.audit import audit

    save_tiny("llama", tmp_path / "model")
    suite = Path(write_tiny_suite(tmp_path / "suite"))
    suite.write_text(suite.read_text().replace("capability: false", "capability: true"))
    with pytest.raises(DataSourceError, match="general test documents"):
        audit(str(tmp_path / "model"), str(suite), tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()


def test_counter_definition_is_the_multiset_overlap() -> None:
    """The hand F1 above counts overlap one way, token_f1 another (Counter intersection): they agree."""
    rng = random.Random(5)
    for _ in range(50):
        a = [rng.randrange(6) for _ in range(rng.randrange(1, 9))]
        b = [rng.randrange(6) for _ in range(rng.randrange(1, 9))]
        overlap = sum((Counter(a) & Counter(b)).values())
        expected = 0.0 if not overlap else 2 * overlap / (len(a) + len(b))
        assert token_f1(a, b) == pytest.approx(expected)


@pytest.fixture(scope="module")
def searching_run(tmp_path_factory, trained: torch.nn.Module) -> tuple[str, str]:
    """Enough general documents for capability on both validation and test."""
    return _capability_suite(tmp_path_factory.mktemp("capability-search"), trained, 260, seed=2,
                             validation_words=7000)


def test_the_search_keeps_last_word_accuracy_within_its_limit(searching_run, tmp_path: Path) -> None:
    """Each searched candidate's last-word accuracy is measured on the validation passages (never the test ones),
    and one that loses more than --max-capability-drop is not chosen; the limit is recorded."""
    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions
    from safety_prune.models import load_model

    model, suite = searching_run
    opts = CorrectOptions(search_k=(4, 64), batch_size=4, stability=0, ppl_budget=100.0, max_distinct2_drop=1.0,
                          max_continuation_ppl_rise=100.0, max_capability_drop=0.0)
    res = correct(model, suite, tmp_path / "run", options=opts)
    lm = load_model(model)
    items = capability_set(lm.tokenizer, load_suite(suite).general_validation(), "general validation")
    trail = res["selection"]["search"]
    assert trail[0]["last_word_accuracy"] == pytest.approx(np.mean(last_word_hits(lm.model, lm.tokenizer,
                                                                                  items.passages)))
    assert res["selection"]["limits"]["capability_drop"] == 0.0
    for row in trail[1:]:
        fell = trail[0]["last_word_accuracy"] - row["last_word_accuracy"] > 0.0
        assert fell == any(v.startswith("last-word accuracy") for v in row["violations"])
    assert any(any(v.startswith("last-word accuracy") for v in row["violations"]) for row in trail[1:])
    chosen = [row for row in trail[1:] if row["k"] == res["selection"]["k"]]
    assert res["selection"]["feasible"] is False or not chosen[0]["violations"]


def test_too_few_validation_passages_for_the_search_fail_before_any_work(capability_run, tmp_path: Path) -> None:
    from safety_prune.jobs.correct import correct
    from safety_prune.jobs.options import CorrectOptions

    model, suite = capability_run
    with pytest.raises(DataSourceError, match="general validation documents"):
        correct(model, suite, tmp_path / "run", options=CorrectOptions(search_k=(1, 2), batch_size=4))
    assert not (tmp_path / "run").exists()


def test_the_release_check_refuses_a_held_out_capability_loss() -> None:
    from safety_prune.jobs.correct import limits_of, release_verdict
    from safety_prune.jobs.options import CorrectOptions

    base = {"perplexity": {"value": 10.0}, "distinct2": {"value": 0.8}, "continuation_perplexity": {"value": 3.0}}
    corrected = {"perplexity": 10.0, "distinct2": 0.8, "continuation_perplexity": 3.0,
                 "paired_vs_baseline": {"delta": -0.05, "ci_low": -0.08, "ci_high": -0.02},
                 "paired_vs_random": {"delta": -0.04, "ci_low": -0.06, "ci_high": -0.01},
                 "last_word_accuracy_drop": 0.01, "continuation_f1_drop": 0.0}
    assert release_verdict(base, corrected, {"feasible": True}, limits_of(CorrectOptions()))["allowed"]
    corrected["continuation_f1_drop"] = 0.05
    verdict = release_verdict(base, corrected, {"feasible": True}, limits_of(CorrectOptions()))
    assert not verdict["allowed"] and "continuation token-F1 fell by 0.050" in verdict["reason"]
    assert verdict["limits"]["capability_drop"] == 0.02
    loose = limits_of(CorrectOptions(max_capability_drop=0.1))
    assert release_verdict(base, corrected, {"feasible": True}, loose)["allowed"]


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan")])
def test_a_capability_limit_outside_0_1_is_refused(bad: float) -> None:
    from safety_prune.errors import ConfigError
    from safety_prune.jobs.options import CorrectOptions

    with pytest.raises(ConfigError, match="--max-capability-drop must lie in"):
        CorrectOptions(max_capability_drop=bad).validate()
