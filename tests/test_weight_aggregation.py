"""Weight relevance for compression: aggregation over tokens and the explained target, against hand computations.

Per-token weight relevance is ``R_t = W * g_t x_t^T``. The aggregations are checked against an explicit loop over
tokens (no shortcut shared with the code), and on a hand-built case whose four rankings all differ.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import CORPUS, tiny_model, tiny_tokenizer
from torch import Tensor, nn

from safety_prune.attribution import Sample, _Recorder, attribute
from safety_prune.errors import ConfigError
from safety_prune.families import architecture, blocks
from safety_prune.lrp import lrp_composite

F64 = torch.float64
KEY = "weight.0.mlp.down_proj"


def rel_err(a: Tensor, b: Tensor) -> float:
    """Max-norm relative error of ``a`` against ``b`` (entries near 0 after cancellation make elementwise
    tolerances meaningless)."""
    return float((a - b).abs().max() / b.abs().max())


def _samples(lengths: tuple[int, ...] = (9, 14, 20, 6)) -> list[Sample]:
    """Samples of different lengths, so a batch of them is padded."""
    tok = tiny_tokenizer()
    return [Sample(tuple(tok(t)["input_ids"][:n]), 1) for t, n in zip(CORPUS, lengths, strict=False)]


# -- a hand-built case: per-token relevance chosen, so every aggregation has a known value ---------------------

# R[entry][sample][token] for four entries of row 0 (W = 1 * g * x arranged to give these).
HAND_R = [
    [[1.0, -1.0], [1.0, -0.9]],  # e0: cancels inside each sample, large per token
    [[1.0, 0.0], [-1.0, 0.0]],  # e1: cancels across samples
    [[0.7, 0.7], [0.7, 0.7]],  # e2: small, steady, one sign
    [[1.5, 0.0], [0.0, 0.0]],  # e3: one large token
]
# Closed forms (sums over the two samples, before the mean's division by 2):
EXPECTED = {
    "sample_abs": [0.1, 2.0, 2.8, 1.5],  # sum_s |sum_t R|
    "signed": [0.1, 0.0, 2.8, 1.5],  # |sum_s sum_t R|
    "token_l1": [3.9, 2.0, 2.8, 1.5],  # sum_s sum_t |R|
    "token_l2": [math.sqrt(3.81), math.sqrt(2), math.sqrt(1.96), 1.5],  # sqrt(sum_s sum_t R^2)
}
RANKING = {  # entries from most to least relevant: each aggregation orders them differently
    "sample_abs": [2, 1, 3, 0],
    "signed": [2, 3, 0, 1],
    "token_l1": [0, 2, 1, 3],
    "token_l2": [0, 3, 1, 2],
}
SETTINGS = {"sample_abs": ("sample", True), "signed": ("sample", False), "token_l1": ("token_l1", False),
            "token_l2": ("token_l2", False)}


def _hand_recorder(name: str) -> tuple[_Recorder, Tensor]:
    """A recorder fed the hand-built x and g for one weight whose row 0 is W0 (other rows 0); returns the weight."""
    model = tiny_model("llama", dtype=F64)
    module = blocks(model)[0].get_submodule("mlp.down_proj")
    w = torch.zeros_like(module.weight)
    w0 = torch.tensor([2.0, -1.0, 0.5, 4.0], dtype=F64)  # signs and sizes that the |W| factor must respect
    w[0, :4] = w0
    with torch.no_grad():
        module.weight.copy_(w)
    g = torch.zeros(2, 2, w.shape[0], dtype=F64)
    g[:, :, 0] = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # per sample and token
    r = torch.tensor(HAND_R, dtype=F64)  # [entry, sample, token]
    x = torch.zeros(2, 2, w.shape[1], dtype=F64)
    x[:, :, :4] = (r / (w0[:, None, None] * g[None, :, :, 0])).permute(1, 2, 0)  # R = W g x by construction
    aggregation, absolute = SETTINGS[name]
    rec = _Recorder(model, "gradient", ("weight",), absolute, aggregation=aggregation)
    rec.mask = torch.ones(2, 2, dtype=torch.long)
    rec._weight_value(KEY, module.weight.detach(), torch.device("cpu"), x, g)
    return rec, w


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_aggregation_gives_the_documented_value_and_ranking(name: str) -> None:
    rec, _ = _hand_recorder(name)
    score = rec.finish(2)[KEY][0, :4]
    if name == "signed":  # compress ranks by |signed mean|
        score = score.abs()
    torch.testing.assert_close(score, torch.tensor(EXPECTED[name], dtype=score.dtype) / 2)
    assert torch.argsort(score, descending=True).tolist() == RANKING[name]


def test_the_four_rankings_all_differ() -> None:
    assert len({tuple(r) for r in RANKING.values()}) == len(RANKING)


# -- the aggregations on a real model, against an explicit loop over tokens ----------------------------------------


class _LinearTaps:
    """Inputs and outputs of every block Linear, outputs with their grads, per forward."""

    def __init__(self, model: nn.Module):
        self.model, self.arch = model, architecture(model)
        self.x: dict[str, Tensor] = {}
        self.out: dict[str, Tensor] = {}

    def __enter__(self) -> _LinearTaps:
        self.handles = []
        for layer, blk in enumerate(blocks(self.model)):
            for name in self.arch.linear_names:
                def hook(_m, args, out, key=f"weight.{layer}.{name}"):
                    out.retain_grad()
                    self.x[key], self.out[key] = args[0].detach(), out
                self.handles.append(blk.get_submodule(name).register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def _explicit(model: nn.Module, samples: list[Sample], method: str, sink: int) -> dict[str, dict[str, Tensor]]:
    """Every aggregation of every block weight from per-token relevance ``W * outer(g_t, x_t)``, one token at a
    time, one sample at a time; sums over samples divided by their count."""
    arch = architecture(model)
    per_sample: dict[str, list[Tensor]] = {}
    sq: dict[str, Tensor] = {}
    l1: dict[str, Tensor] = {}
    for s in samples:
        ids = torch.tensor([s.input_ids])
        ctx = lrp_composite(model) if method == "lrp" else torch.enable_grad()
        with _LinearTaps(model) as taps, ctx:
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=ids, use_cache=False).logits
            logits[0, :-1].gather(-1, ids[0, 1:, None]).sum().backward()
        for key, x in taps.x.items():
            w = blocks(model)[int(key.split(".")[1])].get_submodule(key.split(".", 2)[2]).weight.detach()
            w = w.T if arch.conv1d else w  # GPT-2's Conv1D stores [in, out]
            g = taps.out[key].grad[0]
            tokens = [w * torch.outer(g[t], x[0, t]) for t in range(sink, len(s.input_ids))]
            per_sample.setdefault(key, []).append(sum(tokens))
            l1[key] = l1.get(key, 0) + sum(r.abs() for r in tokens)
            sq[key] = sq.get(key, 0) + sum(r.square() for r in tokens)
    n = len(samples)
    return {"sample_abs": {k: sum(r.abs() for r in v) / n for k, v in per_sample.items()},
            "signed": {k: sum(v).abs() / n for k, v in per_sample.items()},
            "token_l1": {k: v / n for k, v in l1.items()},
            "token_l2": {k: v.sqrt() / n for k, v in sq.items()}}


@pytest.mark.parametrize(("method", "family"), [("gradient", "llama"), ("lrp", "llama"), ("gradient", "gpt2")])
def test_aggregations_equal_an_explicit_per_token_loop(method: str, family: str) -> None:
    model = tiny_model(family, dtype=F64)
    samples, sink = _samples(), 1
    for p in model.parameters():
        p.requires_grad_(True)
    hand = _explicit(model, samples, method, sink)
    for name, (aggregation, absolute) in SETTINGS.items():
        got = attribute(model, samples, method=method, units=("weight",), batch_size=4, sink_positions=sink,
                        absolute=absolute, aggregation=aggregation).scores
        for key, value in hand[name].items():
            score = got[key].abs() if name == "signed" else got[key]
            assert rel_err(score, value) < 1e-6, f"{method} {name} {key}"  # sums are float32


def test_aggregation_is_recorded_only_when_not_the_default() -> None:
    model = tiny_model("llama", dtype=F64)
    plain = attribute(model, _samples(), method="gradient", units=("weight",))
    l2 = attribute(model, _samples(), method="gradient", units=("weight",), aggregation="token_l2")
    assert "aggregation" not in plain.info and "explain" not in plain.info
    assert l2.info["aggregation"] == "token_l2"


# -- what is explained ---------------------------------------------------------------------------------------------


def _autograd_weight_relevance(model: nn.Module, samples: list[Sample], explain: str) -> dict[str, Tensor]:
    """``W * dF/dW`` of every block weight with plain autograd, F the summed target over every next token."""
    arch = architecture(model)
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    for s in samples:
        ids = torch.tensor([s.input_ids])
        z = model(input_ids=ids, use_cache=False).logits[0, :-1]
        top, logp = z.max(-1).values, z.log_softmax(-1).gather(-1, ids[0, 1:, None])  # logp: of the actual token
        (top if explain == "predicted" else logp).sum().backward()
    return {f"weight.{layer}.{name}": (blk.get_submodule(name).weight * blk.get_submodule(name).weight.grad).detach()
           / len(samples) for layer, blk in enumerate(blocks(model)) for name in arch.linear_names}


@pytest.mark.parametrize("explain", ["predicted", "logprob"])
def test_gradient_target_equals_autograd_of_that_target(explain: str) -> None:
    """The gradient method explains the top token's logit, or the log-probability, exactly as autograd does."""
    model = tiny_model("llama", dtype=F64)
    samples = _samples()
    got = attribute(model, samples, method="gradient", units=("weight",), batch_size=4, sink_positions=0,
                    explain=explain)
    hand = _autograd_weight_relevance(model, samples, explain)
    for key, value in hand.items():
        assert rel_err(got.scores[key], value) < 1e-6, key
    assert got.info["explain"] == explain


@pytest.mark.parametrize("explain", ["actual", "predicted", "logprob"])
def test_lrp_conserves_every_target(explain: str) -> None:
    """CP-LRP on a bias-free float64 model: input relevance equals the explained sum, which for ``predicted`` is
    the summed top logits and for ``logprob`` the summed ``log p_y + H(p)`` (its gradient-carrying part)."""
    model = tiny_model("llama", dtype=F64, zero_bias=True)
    samples = _samples()
    rel = attribute(model, samples, method="lrp", variant="cp", units=("weight",), batch_size=4, sink_positions=0,
                    explain=explain)
    assert abs(rel.info["conservation_ratio"] - 1) < 1e-6
    want = 0.0
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s.input_ids])
            z = model(input_ids=ids, use_cache=False).logits[0, :-1]
            logp = z.log_softmax(-1)
            if explain == "predicted":
                want += float(z.max(-1).values.sum())
            elif explain == "logprob":
                entropy = -(logp.exp() * logp).sum(-1)
                want += float((logp.gather(-1, ids[0, 1:, None])[:, 0] + entropy).sum())
            else:
                want += float(z.gather(-1, ids[0, 1:, None]).sum())
    assert rel.info["explained_sum"] == pytest.approx(want, rel=1e-6, abs=1e-6)  # the composite's eps


@pytest.mark.parametrize(("kw", "match"), [(dict(explain="nope"), "Unknown explained target 'nope'"),
                                           (dict(aggregation="nope"), "Unknown weight aggregation 'nope'")])
def test_unknown_names_are_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        attribute(tiny_model("llama"), _samples(), method="gradient", units=("weight",), **kw)


def test_a_foil_needs_the_actual_target() -> None:
    with pytest.raises(ConfigError, match="needs explain='actual'"):
        attribute(tiny_model("llama"), [Sample((5, 6, 7, 8), 3, foil=9)], method="lrp", explain="logprob")
