"""The circuit job and the IOI task on tiny models."""

import json

import pytest
import torch
from tiny import tiny_config
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from safety_prune.errors import ConfigError
from safety_prune.evaluation.ioi import ioi_prompts, ioi_scores
from safety_prune.jobs.circuit import circuit
from safety_prune.jobs.options import CircuitOptions
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


@pytest.fixture(scope="module")
def ioi_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ioi_model")
    tok = _word_tokenizer()
    cfg = tiny_config("llama")
    cfg.vocab_size = len(tok)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
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
    folder, _ = ioi_model
    res = circuit(folder, tmp_path / "run", options=CircuitOptions(n_reference=8, n_eval=16, batch_size=4,
                                                                   methods=["lrp", "random"]))
    assert set(res["curves"]) == {"lrp", "random"}
    assert res["curves"]["lrp"][0]["k"] == 0
    assert res["curves"]["lrp"][0]["accuracy"] == pytest.approx(res["baseline"]["accuracy"])
    assert sum(r["kept"] for r in res["circuit"]["per_layer"]) == res["circuit"]["kept"]
    assert (tmp_path / "run" / "report.html").is_file()


def test_circuit_bad_task(ioi_model, tmp_path):
    with pytest.raises(ConfigError, match="Available tasks: ioi"):
        circuit(ioi_model[0], tmp_path / "run", options=CircuitOptions(task="nope"))
