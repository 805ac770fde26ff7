"""The circuit job and the IOI task on tiny models."""

import json

import pytest
import torch
from results_schema import assert_valid_results
from tiny import tiny_config
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from safety_prune.attribution import attribute
from safety_prune.errors import ConfigError
from safety_prune.evaluation.ioi import ioi_prompts, ioi_samples, ioi_scores
from safety_prune.jobs.circuit import circuit
from safety_prune.jobs.options import CircuitOptions
from safety_prune.pruning import masked, select
from safety_prune.resources import resource_dir


def _word_tokenizer():
    """Word-level tokenizer covering the IOI vocabulary, so every name is a single token."""
    spec = json.loads((resource_dir("data") / "ioi.json").read_text())
    words = {w for t in spec["templates"] for w in t.replace(",", " , ").replace(".", " . ").split()}
    words |= set(spec["names"]) | set(spec["places"]) | set(spec["objects"])
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_ioi_llama(folder, seed: int):
    """A random tiny Llama over the IOI word vocabulary, saved with its tokenizer in ``folder``."""
    tok = _word_tokenizer()
    cfg = tiny_config("llama")
    cfg.vocab_size = len(tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


@pytest.fixture(scope="module")
def ioi_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ioi_model")
    _, tok = tiny_ioi_llama(folder, seed=0)
    return str(folder), tok


def test_ioi_prompts_are_seeded_and_single_token(ioi_model):
    _, tok = ioi_model
    a, b = ioi_prompts(tok, 20, seed=3), ioi_prompts(tok, 20, seed=3)
    assert a == b and a != ioi_prompts(tok, 20, seed=4)
    for p in a:
        assert p.io_id != p.s_id
        assert tok.decode([p.io_id]).strip() in p.text and tok.decode([p.s_id]).strip() in p.text


def test_ioi_scores_match_hand_computation(ioi_model):
    folder, tok = ioi_model
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = ioi_prompts(tok, 6, seed=0)
    got = ioi_scores(model, tok, prompts, batch_size=4)
    diffs = []
    for p in prompts:
        ids = tok(p.text, return_tensors="pt").input_ids
        with torch.no_grad():
            last = model(ids).logits[0, -1]
        diffs.append(float(last[p.io_id] - last[p.s_id]))
    assert got["logit_diff"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-5)
    assert got["accuracy"] == pytest.approx(sum(d > 0 for d in diffs) / len(diffs))


def test_circuit_job_writes_curves(ioi_model, tmp_path):
    """The circuit is what its curve says: every curve starts at the unpruned model's scores; the chosen share is
    the largest grid share whose accuracy keeps threshold x baseline; and zeroing the lowest k heads of the lrp
    ranking by hand (pruning.masked) gives that accuracy again on the same held-out prompts, at or above the bar,
    with the per-layer counts the results list."""
    _, tok = ioi_model
    model = AutoModelForCausalLM.from_pretrained(ioi_model[0]).eval()
    with torch.no_grad():  # louder heads: their removal moves the accuracy, so the curve has a shape to check
        for block in model.model.layers:
            block.self_attn.v_proj.weight.mul_(5)
            block.self_attn.o_proj.weight.mul_(5)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # abs: on this random model it gives a curve with a pruned share strictly between none and all, which this
    # bookkeeping check needs; the signed default's ranking is checked in test_circuit_knobs.py
    opt = CircuitOptions(n_reference=8, n_eval=32, batch_size=4, methods=["lrp", "random"], relevance="abs")
    res = circuit(str(folder), tmp_path / "run", options=opt)
    base, chosen = res["baseline"], res["circuit"]
    assert set(res["curves"]) == {"lrp", "random"}
    for curve in res["curves"].values():
        assert curve[0]["k"] == 0 and curve[0]["accuracy"] == base["accuracy"]
        assert curve[0]["logit_diff"] == pytest.approx(base["logit_diff"])
    bar = opt.threshold * base["accuracy"]
    passing = [p["fraction_pruned"] for p in res["curves"]["lrp"] if p["accuracy"] >= bar]
    assert chosen["fraction_pruned"] == max(passing)
    k = chosen["total"] - chosen["kept"]
    assert 0 < k < chosen["total"]  # some heads pruned, not all
    reference = ioi_prompts(tok, opt.n_reference, opt.seed)
    seen = {p.text for p in reference}
    held_out = [p for p in ioi_prompts(tok, opt.n_eval, opt.seed + 1) if p.text not in seen]
    assert res["settings"]["n_eval"] == len(held_out)
    relevance = attribute(model, ioi_samples(tok, reference, foil=True), method="lrp", units=("head",),
                          batch_size=opt.batch_size, absolute=opt.relevance == "abs", pad_token_id=tok.pad_token_id,
                          seed=opt.seed)
    units = select(relevance.scores, "head", k=k)  # the least relevant k heads under the default ranking
    with masked(model, units):
        again = ioi_scores(model, tok, held_out)
    assert again["accuracy"] == pytest.approx(chosen["accuracy"]) and again["accuracy"] >= bar
    n_layers, n_heads = relevance.scores["head"].shape
    assert [r["kept"] for r in chosen["per_layer"]] == [n_heads - sum(u.layer == layer for u in units)
                                                         for layer in range(n_layers)]
    assert (tmp_path / "run" / "report.html").is_file()
    assert_valid_results(tmp_path / "run" / "results.json")


def test_circuit_bad_task(ioi_model, tmp_path):
    with pytest.raises(ConfigError, match="Available tasks: ioi"):
        circuit(ioi_model[0], tmp_path / "run", options=CircuitOptions(task="nope"))
