"""Attribution: batching, baselines against hand computations, differential relevance, clear errors."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score
from tiny import CORPUS, tiny_model, tiny_tokenizer
from torch import Tensor, nn
from transformers import BertConfig, BertLMHeadModel

from safety_prune.attribution import (
    METHODS,
    UNITS,
    Relevance,
    Sample,
    attribute,
    differential,
    require_samples,
    samples_from_texts,
)
from safety_prune.errors import (
    AttributionError,
    ConfigError,
    DataSourceError,
    SafetyPruneError,
    UnsupportedArchitectureError,
)
from safety_prune.families import architecture, blocks, geometry
from safety_prune.lrp import lrp_composite

F64 = torch.float64


def rel_err(a: Tensor, b: Tensor) -> float:
    """Max-norm relative error of ``a`` against ``b``."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _samples(lengths: tuple[int, ...] = (9, 14, 20, 6), target_start: int = 1) -> list[Sample]:
    """Samples of different lengths (so a batch of them is padded)."""
    tok = tiny_tokenizer()
    ids = [tok(text)["input_ids"] for text in CORPUS[:len(lengths)]]
    return [Sample(tuple(i[:n]), target_start) for i, n in zip(ids, lengths, strict=True)]


def _linear_weight(model: nn.Module, layer: int, name: str) -> Tensor:
    """A block weight in ``nn.Linear`` layout [out, in]."""
    w = blocks(model)[layer].get_submodule(name).weight.detach()
    return w.T if architecture(model).conv1d else w


# -- 5. batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt2"])
@pytest.mark.parametrize(("sink", "target_start", "absolute"), [(0, 1, False), (1, 3, False), (1, 3, True)])
def test_padded_batch_equals_single_samples(family: str, sink: int, target_start: int, absolute: bool) -> None:
    model = tiny_model(family, dtype=F64)  # biases kept: batching must not depend on them
    samples = _samples(target_start=target_start)
    kw = dict(units=UNITS, sink_positions=sink, absolute=absolute)
    batched = attribute(model, samples, batch_size=4, **kw)
    singles = [attribute(model, [s], batch_size=1, **kw) for s in samples]
    assert batched.n_samples == len(samples)
    assert len(batched.scores) == 2 + len(blocks(model)) * len(architecture(model).linear_names)
    for key, value in batched.scores.items():
        mean = sum(r.scores[key] for r in singles) / len(singles)
        assert rel_err(value, mean) < 1e-5, key
    if absolute:
        assert all((v >= 0).all() for v in batched.scores.values())


# -- 6. baselines ---------------------------------------------------------------------------------


class _Inputs:
    """Keeps the inputs of the down and output projections of every block, with their grads."""

    def __init__(self, model: nn.Module):
        self.model, self.arch = model, architecture(model)
        self.down: list[Tensor] = []
        self.o: list[Tensor] = []

    def __enter__(self) -> _Inputs:
        def keep(store: list[Tensor]):
            def pre(_m, args):
                if args[0].requires_grad:
                    args[0].retain_grad()
                store.append(args[0])
            return pre
        self.handles = []
        for blk in blocks(self.model):
            self.handles.append(blk.get_submodule(self.arch.down).register_forward_pre_hook(keep(self.down)))
            o = blk.get_submodule(f"{self.arch.attn}.{self.arch.o}")
            self.handles.append(o.register_forward_pre_hook(keep(self.o)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def _positions(sample: Sample, sink: int) -> slice:
    return slice(sink, len(sample.input_ids))


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_gradient_baseline_equals_plain_autograd(family: str) -> None:
    model = tiny_model(family, dtype=F64)
    samples, sink = _samples(target_start=2), 1
    geo = geometry(model)
    got = attribute(model, samples, method="gradient", units=UNITS, batch_size=4, sink_positions=sink)
    got0 = attribute(model, samples, method="gradient", units=("weight",), batch_size=4, sink_positions=0)

    model.zero_grad(set_to_none=True)
    neuron = torch.zeros(geo.n_layers, geo.n_neurons, dtype=F64)
    head = torch.zeros(geo.n_layers, geo.n_heads, dtype=F64)
    for s in samples:
        ids = torch.tensor([s.input_ids])
        with _Inputs(model) as taps:
            logits = model(input_ids=ids, use_cache=False).logits
            picked = logits[0, :-1].gather(-1, ids[0, 1:, None])[s.target_start - 1:]
            picked.sum().backward()
        pos = _positions(s, sink)
        for layer in range(geo.n_layers):
            a, o = ((t.detach() * t.grad).reshape(len(s.input_ids), -1)  # OPT: [B * T, D]
                    for t in (taps.down[layer], taps.o[layer]))
            neuron[layer] += a[pos].sum(0)
            head[layer] += o[pos].sum(0).reshape(geo.n_heads, -1).sum(-1)
    n = len(samples)
    assert rel_err(got.scores["neuron"], neuron / n) < 1e-6
    assert rel_err(got.scores["head"], head / n) < 1e-6
    for layer, blk in enumerate(blocks(model)):
        for name in architecture(model).linear_names:
            p = blk.get_submodule(name).weight
            hand = (p * p.grad).detach() / n
            hand = hand.T if architecture(model).conv1d else hand
            assert rel_err(got0.scores[f"weight.{layer}.{name}"], hand) < 1e-6, name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_wanda_equals_hand_computation(family: str) -> None:
    model = tiny_model(family, dtype=F64)
    samples, sink = _samples(), 1
    arch = architecture(model)
    got = attribute(model, samples, method="wanda", units=UNITS, batch_size=4, sink_positions=sink)
    rows = []
    with torch.no_grad(), _Inputs(model) as taps:
        for s in samples:
            model(input_ids=torch.tensor([s.input_ids]), use_cache=False)
            rows.append(taps.down[-1].reshape(len(s.input_ids), -1)[_positions(s, sink)])
    x = torch.cat(rows)  # every counted token of layer L-1's down projection input
    last = len(blocks(model)) - 1
    hand = _linear_weight(model, last, arch.down).abs() * x.norm(dim=0)[None]
    assert rel_err(got.scores[f"weight.{last}.{arch.down}"], hand) < 1e-6
    assert rel_err(got.scores["neuron"][last], hand.sum(0)) < 1e-6
    assert got.scores["head"].shape == (len(blocks(model)), geometry(model).n_heads)


def test_magnitude_and_random() -> None:
    model = tiny_model("gpt2", dtype=F64)
    arch, geo = architecture(model), geometry(model)
    mag = attribute(model, _samples(), method="magnitude", units=UNITS)
    o = _linear_weight(model, 1, f"{arch.attn}.{arch.o}").abs()
    assert torch.allclose(mag.scores[f"weight.1.{arch.attn}.{arch.o}"].double(), o, rtol=1e-6)
    assert torch.allclose(mag.scores["head"][1].double(), o.sum(0).reshape(geo.n_heads, -1).sum(-1), rtol=1e-6)
    assert torch.allclose(mag.scores["neuron"][0].double(), _linear_weight(model, 0, arch.down).abs().sum(0),
                          rtol=1e-6)
    a, b = (attribute(model, _samples(), method="random", units=UNITS, seed=s) for s in (5, 5))
    c = attribute(model, _samples(), method="random", units=UNITS, seed=6)
    assert a.scores.keys() == mag.scores.keys() == c.scores.keys()
    for key in a.scores:
        assert a.scores[key].shape == mag.scores[key].shape
        assert torch.equal(a.scores[key], b.scores[key])
        assert not torch.equal(a.scores[key], c.scores[key])


@pytest.mark.parametrize("family", ["qwen2", "opt"])
def test_activation_is_mean_over_samples_of_summed_abs_activation(family: str) -> None:
    model = tiny_model(family, dtype=F64)
    samples, sink = _samples(), 1
    got = attribute(model, samples, method="activation", units=("neuron", "head"), batch_size=4,
                    sink_positions=sink)
    geo = geometry(model)
    neuron = torch.zeros(geo.n_layers, geo.n_neurons, dtype=F64)
    with torch.no_grad(), _Inputs(model) as taps:
        for s in samples:
            model(input_ids=torch.tensor([s.input_ids]), use_cache=False)
            for layer in range(geo.n_layers):
                a = taps.down[-geo.n_layers + layer].reshape(len(s.input_ids), -1)
                neuron[layer] += a[_positions(s, sink)].abs().sum(0)
    assert rel_err(got.scores["neuron"], neuron / len(samples)) < 1e-6
    assert (got.scores["head"] > 0).all()


def test_every_method_gives_the_same_keys_and_shapes() -> None:
    model = tiny_model("llama", dtype=F64)
    geo = geometry(model)
    ref = attribute(model, _samples(), method="magnitude", units=UNITS)
    assert ref.scores["neuron"].shape == (geo.n_layers, geo.n_neurons)
    assert ref.scores["head"].shape == (geo.n_layers, geo.n_heads)
    for method in METHODS:
        rel = attribute(model, _samples(), method=method, units=UNITS)
        assert rel.method == method and rel.n_samples == 4
        assert rel.scores.keys() == ref.scores.keys(), method
        for key, value in rel.scores.items():
            assert value.shape == ref.scores[key].shape, (method, key)
            assert torch.isfinite(value).all(), (method, key)


def test_lrp_units_are_consistent_with_each_other() -> None:
    """A neuron's relevance is its down-projection column's weight relevance summed (no bias)."""
    model = tiny_model("llama", dtype=F64)
    arch = architecture(model)
    rel = attribute(model, _samples(), units=UNITS, sink_positions=0, batch_size=4)
    for layer in range(len(blocks(model))):
        assert rel_err(rel.scores[f"weight.{layer}.{arch.down}"].sum(0), rel.scores["neuron"][layer]) < 1e-5
        o = rel.scores[f"weight.{layer}.{arch.attn}.{arch.o}"].sum(0).reshape(geometry(model).n_heads, -1)
        assert rel_err(o.sum(-1), rel.scores["head"][layer]) < 1e-5


# -- 7. differential ------------------------------------------------------------------------------


def _rel(scores: dict[str, Tensor]) -> Relevance:
    return Relevance("lrp", scores, 10)


def test_differential_is_invariant_to_scaling_either_set() -> None:
    gen = torch.Generator().manual_seed(0)
    g = {"neuron": torch.randn(3, 8, generator=gen), "head": torch.randn(3, 4, generator=gen)}
    u = {"neuron": torch.randn(3, 8, generator=gen), "head": torch.randn(3, 4, generator=gen)}
    base = differential(_rel(g), _rel(u))
    scaled = differential(_rel({k: 7 * v for k, v in g.items()}), _rel({k: 0.01 * v for k, v in u.items()}))
    for key in base:
        torch.testing.assert_close(scaled[key], base[key], rtol=1e-5, atol=1e-7)


def test_differential_ranks_undesired_only_units_most_negative() -> None:
    general = torch.full((2, 10), 1.0)
    undesired = torch.full((2, 10), 1.0)
    general[1, 3] = 0.0  # unit (1, 3): irrelevant for general text, highly relevant for undesired
    undesired[1, 3] = 50.0
    undesired[0, 7] = 10.0  # relevant for both
    general[0, 7] = 10.0
    diff = differential(_rel({"neuron": 1000 * general}), _rel({"neuron": undesired}))["neuron"]
    assert divmod(int(diff.argmin()), 10) == (1, 3)
    assert diff[0, 7] > diff[1, 3]


# -- 8. bad input, clear errors -------------------------------------------------------------------


def _tiny_bert() -> nn.Module:
    cfg = BertConfig(vocab_size=len(tiny_tokenizer()), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, is_decoder=True)
    return BertLMHeadModel(cfg).eval()


def test_unsupported_family_names_supported_ones_and_where_to_add() -> None:
    bert = _tiny_bert()
    for call in (lambda: lrp_composite(bert).__enter__(), lambda: attribute(bert, _samples())):
        with pytest.raises(UnsupportedArchitectureError) as err:
            call()
        msg = str(err.value)
        assert "'bert'" in msg and "safety_prune/families/" in msg
        assert all(f in msg for f in ("llama", "qwen2", "gemma3", "opt", "gpt2"))
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(UnsupportedArchitectureError, match="mystery"):
        attribute(model, _samples())


@pytest.mark.parametrize("units", [("neuron", "head"), ("weight",)])
def test_non_finite_relevance_names_the_unit_and_sample(units: tuple[str, ...]) -> None:
    model = tiny_model("llama", dtype=F64)
    samples = _samples()
    only_third = set(samples[2].input_ids) - {t for s in samples[:2] for t in s.input_ids}
    only_third -= {t for s in samples[3:] for t in s.input_ids}
    token = min(only_third)
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    for batch_size in (1, 4):
        with pytest.raises(AttributionError) as err:
            attribute(model, samples, units=units, batch_size=batch_size)
        msg = str(err.value)
        assert "sample 2" in msg and "layer" in msg, msg
        assert ("unit" in msg) if "neuron" in units else ("entry [" in msg), msg


def test_inf_weight_is_reported() -> None:
    model = tiny_model("opt", dtype=F64)
    with torch.no_grad():
        blocks(model)[1].fc2.weight[3, 5] = float("inf")
    with pytest.raises(AttributionError, match=r"layer 1 .*sample 0"):
        attribute(model, _samples(), units=("neuron",), batch_size=1)
    with pytest.raises(AttributionError, match=r"weight\.1\.fc2.*sample 0"):
        attribute(model, _samples(), units=("weight",), batch_size=1)
    with pytest.raises(AttributionError, match=r"Wanda score of weight\.1\.fc2 entry \[3, 5\]"):
        attribute(model, _samples(), method="wanda", units=("neuron",), batch_size=1)


def test_config_errors() -> None:
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match=r"'shapley'.*lrp"):
        attribute(model, _samples(), method="shapley")
    with pytest.raises(ConfigError, match=r"layer.*neuron"):
        attribute(model, _samples(), units=("neuron", "layer"))
    with pytest.raises(ConfigError, match="variant 'zplus'"):
        attribute(model, _samples(), variant="zplus")
    with pytest.raises(DataSourceError, match=r"No samples.*'toxic prompts'"):
        attribute(model, [], desc="toxic prompts")
    assert issubclass(DataSourceError, SafetyPruneError) and issubclass(ConfigError, SafetyPruneError)


def test_require_samples() -> None:
    samples = samples_from_texts(tiny_tokenizer(), CORPUS[:5], min_tokens=2)
    assert require_samples(samples, 3, "general") == samples[:3]
    assert require_samples(samples, 5, "general") == samples
    with pytest.raises(DataSourceError, match=r"'undesired' prompt set has only 5 samples but 8 were requested"):
        require_samples(samples, 8, "'undesired' prompt set")
    with pytest.raises(ConfigError, match="at least 1"):
        require_samples(samples, 0, "general")


def test_aura_auroc_separates_sets():
    """A neuron that fires only on the undesired samples gets AUROC 1; its mirror gets 0."""
    from safety_prune.attribution import Relevance, aura_auroc

    gen = torch.zeros(6, 2, 3)
    und = torch.zeros(4, 2, 3)
    und[:, 1, 2] = 5.0  # fires on undesired only
    gen[:, 0, 1] = 5.0  # fires on general only
    gen[:, 0, 0] = torch.arange(6.0)  # overlapping: 0..5 vs 2..5
    und[:, 0, 0] = torch.arange(2.0, 6.0)
    g = Relevance("activation", {}, 6, per_sample={"neuron": gen})
    u = Relevance("activation", {}, 4, per_sample={"neuron": und})
    auc = aura_auroc(g, u)
    assert auc[1, 2] == 1.0 and auc[0, 1] == 0.0
    labels = [0] * 6 + [1] * 4
    for layer, unit in [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2), (0, 1)]:  # tied, constant and separated
        want = roc_auc_score(labels, torch.cat([gen[:, layer, unit], und[:, layer, unit]]).numpy())
        assert float(auc[layer, unit]) == pytest.approx(want, abs=1e-7)
    assert float(auc[0, 0]) == pytest.approx(2 / 3)  # 0..5 vs 2..5: ties count half
    assert float(auc[1, 0]) == 0.5  # a constant (dead) neuron does not separate the sets


def test_activation_keeps_per_sample_means():
    from safety_prune.attribution import attribute, samples_from_texts

    model = tiny_model("llama")
    samples = samples_from_texts(tiny_tokenizer(), ["the quick brown fox jumps", "a river flows through town"],
                                 min_tokens=2)
    rel = attribute(model, samples, method="activation", units=("neuron",), batch_size=1)
    assert rel.per_sample["neuron"].shape == (2, 2, 64)
    lrp = attribute(model, samples, method="lrp", units=("neuron",))
    assert lrp.per_sample == {}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_foil_target_is_the_difference_of_the_two_targets(family: str) -> None:
    """Linearity: explaining logit(IO) - logit(S) gives R(IO) - R(S) for every unit (the IOI logit difference)."""
    model = tiny_model(family, dtype=torch.float64)
    prefix, io, s = (5, 17, 40, 99, 120, 7), 64, 33
    kw = dict(method="lrp", units=("neuron", "head", "weight"))
    r_io = attribute(model, [Sample((*prefix, io), len(prefix))], **kw)
    r_s = attribute(model, [Sample((*prefix, s), len(prefix))], **kw)
    r_diff = attribute(model, [Sample((*prefix, io), len(prefix), foil=s)], **kw)
    for key in r_io.scores:
        torch.testing.assert_close(r_diff.scores[key], r_io.scores[key] - r_s.scores[key], rtol=1e-5, atol=1e-8)
    assert r_diff.info["explained_sum"] == pytest.approx(r_io.info["explained_sum"] - r_s.info["explained_sum"])


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_a_token_class_explains_its_softmax_weighted_logits(family: str) -> None:
    """A class of one token is that token's logit; a larger class explains sum_c softmax_C(z)_c z_c, a hand
    computation from the logits. Padding a smaller class in a batch changes nothing."""
    model = tiny_model(family, dtype=torch.float64)
    prefix, token, cls = (5, 17, 40, 99, 120, 7), 64, (64, 33, 90)
    kw = dict(method="lrp", units=("neuron", "head"))
    plain = attribute(model, [Sample((*prefix, token), len(prefix))], **kw)
    single = attribute(model, [Sample((*prefix, token), len(prefix), classes=(token,))], **kw)
    for key in plain.scores:
        torch.testing.assert_close(single.scores[key], plain.scores[key], rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        z = model(torch.tensor([prefix])).logits[0, -1, list(cls)]
    want = float((z.softmax(-1) * z).sum())
    rel = attribute(model, [Sample((*prefix, token), len(prefix), classes=cls)], **kw)
    assert rel.info["explained_sum"] == pytest.approx(want, rel=1e-6)
    both = attribute(model, [Sample((*prefix, token), len(prefix), classes=cls),
                             Sample((*prefix, token), len(prefix), classes=(token,))], batch_size=2, **kw)
    for key in plain.scores:
        torch.testing.assert_close(both.scores[key], (rel.scores[key] + plain.scores[key]) / 2, rtol=1e-5,
                                   atol=1e-8)


def test_a_token_class_needs_the_actual_target_and_no_foil() -> None:
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="token class"):
        attribute(model, [Sample((5, 17, 40), 2, classes=(3, 4))], method="lrp", units=("neuron",),
                  explain="logprob")
    with pytest.raises(ConfigError, match="not both"):
        attribute(model, [Sample((5, 17, 40), 2, foil=3, classes=(3, 4))], method="lrp", units=("neuron",))
