"""Soft interventions: proportional gains and AurA's gains against hand computations on tiny models."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from safety_prune.attribution import Sample
from safety_prune.aura import pooled_activations
from safety_prune.contrast import AURA, Contrast, ContrastSets
from safety_prune.errors import ConfigError
from safety_prune.families import architecture, blocks
from safety_prune.interventions import Edit, as_units, proportional, random_like
from safety_prune.pruning import MaskSet, Unit


def test_proportional_gains_by_hand():
    """n = max(0, -score) / max(-score); gain 1 - s n where n > threshold, else 1."""
    scores = {"neuron": torch.tensor([[-2.0, 0.5, -1.0], [-0.5, 3.0, -0.75]])}
    gains = proportional(scores, "neuron", strength=0.5, threshold=0.25)
    # n = [[1, 0, 0.5], [0.25, 0, 0.375]]: (1, 0) sits at the threshold, not past it
    assert torch.equal(gains, torch.tensor([[0.5, 1.0, 0.75], [1.0, 1.0, 0.8125]], dtype=torch.float64))
    units, g = as_units("neuron", gains)
    assert list(units) == [Unit("neuron", 0, 0), Unit("neuron", 0, 2), Unit("neuron", 1, 2)]  # most dampened first
    assert g.tolist() == [0.5, 0.75, 0.8125]
    assert torch.equal(proportional(scores, "neuron", 1.0, 0.0)[0], torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert torch.all(proportional(scores, "neuron", 0.0, 0.0) == 1)  # strength 0 changes nothing
    assert torch.all(proportional({"neuron": torch.ones(2, 3)}, "neuron", 1.0, 0.0) == 1)  # nothing undesired


def test_reach_saturates_the_gains_by_hand():
    """gain 1 - s min(1, n / reach): every unit whose n reaches ``reach`` gets the full 1 - s; reach 1 is the plain
    rule."""
    scores = {"neuron": torch.tensor([[-2.0, 0.5, -1.0], [-0.5, 3.0, -0.75]])}  # n = [[1, 0, .5], [.25, 0, .375]]
    gains = proportional(scores, "neuron", strength=0.8, threshold=0.0, reach=0.5)
    expected = torch.tensor([[0.2, 1.0, 0.2], [1 - 0.8 * 0.5, 1.0, 1 - 0.8 * 0.75]], dtype=torch.float64)
    assert torch.allclose(gains, expected, rtol=0, atol=1e-15)
    assert torch.equal(proportional(scores, "neuron", 0.8, 0.0, reach=1.0), proportional(scores, "neuron", 0.8, 0.0))


@pytest.mark.parametrize("reach", [0.0, 1.5, -0.1, float("nan")])
def test_proportional_refuses_a_reach_outside_0_1(reach):
    with pytest.raises(ConfigError, match=r"--reach .* lies outside \(0, 1\]"):
        proportional({"neuron": -torch.ones(2, 3)}, "neuron", 0.5, 0.0, reach=reach)


@pytest.mark.parametrize(("strength", "threshold", "match"), [
    (1.5, 0.0, r"--strength 1\.5 lies outside \[0, 1\]"), (-0.1, 0.0, "--strength"),
    (0.5, 1.0, r"--threshold 1\.0 lies outside \[0, 1\)"), (float("nan"), 0.0, "--strength")])
def test_proportional_refuses_out_of_range_settings(strength, threshold, match):
    with pytest.raises(ConfigError, match=match):
        proportional({"neuron": -torch.ones(2, 3)}, "neuron", strength, threshold)


def test_proportional_refuses_non_finite_scores():
    from safety_prune.errors import AttributionError

    with pytest.raises(AttributionError, match="NaN or infinite"):
        proportional({"neuron": torch.tensor([[-1.0, float("nan")]])}, "neuron", 0.5, 0.0)


def test_proportional_refuses_weight_units():
    with pytest.raises(ConfigError, match="neuron and head units"):
        proportional({"weight.0.mlp.up_proj": -torch.ones(2, 3)}, "weight", 0.5, 0.0)


def test_random_control_gets_the_same_gains_on_random_units():
    edit = Edit(MaskSet([Unit("neuron", 0, 0), Unit("neuron", 1, 2)]), torch.tensor([0.5, 0.75]))
    noise = {"neuron": torch.tensor([[0.3, 0.9, 0.1], [0.2, 0.8, 0.7]])}
    control = random_like(edit, noise, "neuron")
    assert list(control.units) == [Unit("neuron", 0, 2), Unit("neuron", 1, 0)]
    assert torch.equal(control.scale, edit.scale) and control.matches(edit)
    assert not control.matches(Edit(control.units, torch.tensor([0.5, 0.5])))
    assert Edit(control.units, None).matches(Edit(edit.units, None))


def test_at_least_as_strong_compares_every_units_gain():
    """What the validation search skips after a candidate over the perplexity limit: an edit that changes each of
    that candidate's units at least as much (missing units keep gain 1, removal is gain 0)."""
    a, b, c = Unit("neuron", 0, 0), Unit("neuron", 1, 2), Unit("neuron", 1, 3)
    mild = Edit(MaskSet([a, b]), torch.tensor([0.5, 0.75]))
    assert Edit(MaskSet([b, a, c]), torch.tensor([0.75, 0.5, 0.9])).at_least_as_strong_as(mild)  # order-free
    assert not Edit(MaskSet([a, b]), torch.tensor([0.5, 0.8])).at_least_as_strong_as(mild)  # b is milder
    assert not Edit(MaskSet([a]), torch.tensor([0.0])).at_least_as_strong_as(mild)  # b untouched: gain 1
    assert Edit(MaskSet([a, b]), None).at_least_as_strong_as(mild)  # removed: gain 0
    assert Edit(MaskSet([a, b]), 0.5).at_least_as_strong_as(mild)
    assert not mild.at_least_as_strong_as(Edit(MaskSet([a, b]), None))
    assert mild.at_least_as_strong_as(Edit(MaskSet(), None))  # nothing changed: every edit is as strong


def test_dampening_sums_what_each_unit_loses():
    """The budget rule's strength: sum over units of 1 - gain; zeroing k units is k, no edit is 0."""
    a, b, c = Unit("neuron", 0, 0), Unit("neuron", 1, 2), Unit("neuron", 1, 3)
    assert Edit(MaskSet([a, b, c]), torch.tensor([0.5, 0.75, 0.9])).dampening() == pytest.approx(0.85)
    assert Edit(MaskSet([a, b]), None).dampening() == 2.0
    assert Edit(MaskSet([a, b]), 0.25).dampening() == pytest.approx(1.5)
    assert Edit(MaskSet(), None).dampening() == 0.0


def _by_hand(model, samples: list[Sample], pooling: str) -> torch.Tensor:
    """Each sample alone (no padding, no batching): the down projection's input at every position that predicts a
    continuation token, pooled."""
    arch, layers, out = architecture(model), blocks(model), []
    for s in samples:
        seen = {}
        handles = [b.get_submodule(arch.down).register_forward_pre_hook(
            lambda _m, args, i=i, seen=seen: seen.__setitem__(i, args[0][0].detach())) for i, b in enumerate(layers)]
        with torch.no_grad():
            model(torch.tensor([s.input_ids]))
        for h in handles:
            h.remove()
        span = slice(s.target_start - 1, len(s.input_ids) - 1)
        out.append(torch.stack([seen[i][span].mean(0) if pooling == "mean" else seen[i][span].amax(0)
                                for i in range(len(layers))]))
    return torch.stack(out)


def _auroc_by_hand(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_aura_gains_by_hand(pooling):
    """AurA's gains from per-sample activations computed one sample at a time, pairwise AUROC counted by hand:
    1 - 2 (AUROC - 0.5) above 0.5, else 1; the batched, padded pass gives the same pooled activations."""
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer()

    def sample(prompt: str, continuation: str) -> Sample:
        p, c = tok(prompt)["input_ids"], tok(continuation, add_special_tokens=False)["input_ids"]
        return Sample(tuple(p + c), len(p))

    flagged = [sample("The river", " you stupid idiot"), sample("A fox", " damn fool"),
               sample("Mary said", " what the hell is wrong with you")]
    unflagged = [sample("The river", " flows past the mill"), sample("A fox", " jumps"),
                 sample("Mary said", " the committee approved the budget"), sample("Birds", " sing in the park")]
    pos, neg = _by_hand(model, flagged, pooling), _by_hand(model, unflagged, pooling)
    batched = pooled_activations(model, flagged, pooling, batch_size=2)
    torch.testing.assert_close(batched, pos, rtol=0, atol=1e-8)  # float64; padding moves HF's attention by ~1e-9
    c = Contrast(model, ContrastSets([], [], [], {}, flagged=flagged, unflagged=unflagged), batch_size=3,
                 pooling=pooling)
    gains = AURA.gains(c)["neuron"]
    L, N = gains.shape
    expected = torch.ones(L, N, dtype=torch.float64)
    for layer in range(L):
        for j in range(N):
            auc = _auroc_by_hand(pos[:, layer, j].tolist(), neg[:, layer, j].tolist())
            if auc > 0.5:
                expected[layer, j] = 1 - 2 * (auc - 0.5)
    torch.testing.assert_close(gains, expected, rtol=0, atol=1e-6)
    assert (gains < 1).any() and (gains == 1).any()  # the hand computation covers both branches


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gains_and_aura_pass_on_cuda():
    """On a GPU: per-unit gains land on the device's weights exactly as on the CPU, and AurA's pooled activations
    in bfloat16 agree with float32 ones to bf16 precision."""
    from safety_prune.pruning import masked

    cpu = tiny_model("llama")
    gpu = tiny_model("llama").to("cuda")
    units = [Unit("neuron", 0, 3), Unit("head", 1, 2)]
    gains = torch.tensor([0.25, 0.5])
    with masked(cpu, units, scale=gains), masked(gpu, units, scale=gains):
        for (name, a), b in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
            assert torch.equal(a, b.cpu()), name
    tok = tiny_tokenizer()
    samples = [Sample(tuple(tok("The river flows past the mill")["input_ids"]), 3),
               Sample(tuple(tok("You stupid idiot")["input_ids"]), 2)]
    ref = pooled_activations(cpu, samples, "max", batch_size=2)
    half = pooled_activations(tiny_model("llama", dtype=torch.bfloat16).to("cuda"), samples, "max", batch_size=2)
    assert half.dtype == torch.float32 and half.device.type == "cpu"
    torch.testing.assert_close(half, ref, rtol=0.05, atol=0.05)
