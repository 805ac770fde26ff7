"""Generation, perplexity and fluency on tiny models of every family."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny import CORPUS, FAMILIES, tiny_model, tiny_tokenizer

from safety_prune.errors import ConfigError, DataSourceError
from safety_prune.evaluation import (
    distinct_n,
    generate,
    generate_detailed,
    perplexity,
    sequence_perplexities,
    uniqueness_ratio,
)

PROMPTS = ["The quick brown fox", "A river", "You are a stupid idiot and I hate you, what the", "Birds"]


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_single_prompts(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    side = tok.padding_side
    batched = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=4)
    alone = [generate(model, tok, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(row) == 1 and row[0] for row in batched)
    assert tok.padding_side == side


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_seeded_and_shaped(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    kw = dict(max_new_tokens=6, do_sample=True, num_samples=3, batch_size=2)
    rng = torch.get_rng_state()
    first = generate_detailed(model, tok, PROMPTS, seed=1, **kw)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched
    torch.manual_seed(123)  # global state must not matter
    again = generate_detailed(model, tok, PROMPTS, seed=1, **kw)
    other = generate_detailed(model, tok, PROMPTS, seed=2, **kw)
    assert [len(row) for row in first] == [3] * len(PROMPTS)
    assert first == again
    assert first != other
    for prompt, row in zip(PROMPTS, first, strict=True):
        for g in row:
            assert g.prompt_text == prompt
            assert g.prompt_ids == tok(prompt)["input_ids"]
            assert g.continuation == tok.decode(g.continuation_ids, skip_special_tokens=True)
            assert 0 < len(g.continuation_ids) <= 6


def test_continuation_stops_at_first_eos():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    full = generate_detailed(model, tok, PROMPTS[:1], max_new_tokens=8)[0][0].continuation_ids
    stop = full[3]
    model.generation_config.eos_token_id = stop  # the model now "ends" where it emitted this token
    cut = generate_detailed(model, tok, PROMPTS[:1], max_new_tokens=8)[0][0].continuation_ids
    assert cut == full[:full.index(stop)]


def test_chat_template_wraps_prompt():
    tok = copy.deepcopy(tiny_tokenizer())
    tok.chat_template = (
        "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    model = tiny_model("qwen2")
    g = generate_detailed(model, tok, ["Birds sing"], max_new_tokens=4, chat_template=True)[0][0]
    assert g.prompt_text == "<s>user: Birds sing\nassistant:"
    assert g.prompt_ids == tok(g.prompt_text, add_special_tokens=False)["input_ids"]
    assert g.prompt_ids[0] == tok.bos_token_id


def test_generation_errors():
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    with pytest.raises(ConfigError, match="no chat template"):
        generate(model, tok, PROMPTS, chat_template=True)
    with pytest.raises(ConfigError, match="do_sample"):
        generate(model, tok, PROMPTS, num_samples=2)
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, tok, PROMPTS, do_sample=True, top_p=0.0)
    # an empty prompt starts from bos instead of crashing
    assert generate_detailed(model, tok, [""], max_new_tokens=2)[0][0].prompt_ids == [tok.bos_token_id]


def _reference_nll(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """Token-by-token loop: each token scored once, by the first window that holds it with context."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        for t in range(max(begin + 1, prev_end), end):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[begin:t]])).logits[0, -1]
            total -= torch.log_softmax(logits.double(), -1)[ids[t]].item()
            count += 1
        prev_end = end
        if end == len(ids):
            break
    return total, count


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("stride", [12, 5])
def test_perplexity_equals_exp_mean_token_nll(family, stride):
    model, tok = tiny_model(family), tiny_tokenizer()
    texts = CORPUS[:2]
    ids = tok("\n\n".join(texts))["input_ids"]
    res = perplexity(model, tok, texts, max_length=12, stride=stride, batch_size=3)
    total, count = _reference_nll(model, ids, 12, stride)
    n_windows = len(res.window_counts)
    assert n_windows > 3 and len(ids) % stride  # several batches, and a short last window
    assert res.n_tokens == count == (len(ids) - n_windows if stride == 12 else len(ids) - 1)
    assert res.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert res.nll == pytest.approx(total / count, rel=1e-5)
    assert sum(res.window_counts) == res.n_tokens and len(res.window_nll_sums) == n_windows


def test_single_window_perplexity_matches_model_loss():
    model, tok = tiny_model("opt"), tiny_tokenizer()
    text = CORPUS[0] + " " + CORPUS[1]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    res = perplexity(model, tok, [text], max_length=512, stride=512)
    assert res.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    lo, hi = res.ci(seed=0)
    assert lo == hi == pytest.approx(res.perplexity)  # one window: nothing to resample


def test_perplexity_clamps_to_model_positions_and_ci():
    model, tok = tiny_model("gpt2"), tiny_tokenizer()  # 256 positions; the text is longer
    texts = CORPUS * 2
    assert len(tok("\n\n".join(texts))["input_ids"]) > 256
    res = perplexity(model, tok, texts, max_length=4096, stride=128)
    assert math.isfinite(res.perplexity) and res.n_tokens == len(tok("\n\n".join(texts))["input_ids"]) - 1
    lo, hi = res.ci(seed=3)
    assert lo <= res.perplexity <= hi and (lo, hi) == res.ci(seed=3)


def test_perplexity_errors():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(DataSourceError, match="at least 2"):
        perplexity(model, tok, [""])
    with pytest.raises(ConfigError, match="stride"):
        perplexity(model, tok, CORPUS, stride=0)


def test_sequence_perplexities_match_hand_computation():
    model, tok = tiny_model("gemma3"), tiny_tokenizer()
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    conts = [tok(" jumps over the lazy dog")["input_ids"], [], tok(" hell")["input_ids"], [5]]
    got = sequence_perplexities(model, tok, prompts, conts, batch_size=3)
    assert math.isnan(got[1])
    for p, c, value in zip(prompts, conts, got, strict=True):
        if not c:
            continue
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].double(), -1)
        nll = -sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(c)) / len(c)
        assert value == pytest.approx(math.exp(nll), rel=1e-5)
    with pytest.raises(ConfigError, match="one prompt per continuation"):
        sequence_perplexities(model, tok, prompts, conts[:2])


def test_fluency_metrics():
    assert distinct_n(["a b a b", "a b c", "word", ""], n=2) == [2 / 3, 1.0, 0.0, 0.0]
    assert distinct_n(["x x x x"], n=1) == [0.25]
    assert uniqueness_ratio([1, 1, 1, 2]) == 0.5 and uniqueness_ratio([]) == 0.0
    with pytest.raises(ConfigError):
        distinct_n(["a"], n=0)
