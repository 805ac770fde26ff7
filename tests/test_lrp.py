"""AttnLRP rules against closed forms, conservation per family, and transparency of the composite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from tiny import CORPUS, FAMILIES, tiny_model, tiny_tokenizer
from torch import Tensor, nn

from safety_prune.attribution import Sample, attribute, samples_from_texts
from safety_prune.families import architecture, blocks, is_norm
from safety_prune.lrp import VARIANTS, lrp_composite
from safety_prune.lrp.rules import (
    identity_rule,
    layer_norm,
    rms_norm,
    stabilized,
    stabilized_div,
    uniform_rule,
)

F64 = torch.float64


def rel_err(a: Tensor | float, b: Tensor | float) -> float:
    """|a - b| / |b| (max-norm for tensors)."""
    a, b = torch.as_tensor(a, dtype=F64).detach(), torch.as_tensor(b, dtype=F64).detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


# -- 1. rules against closed forms ------------------------------------------------------------------


@pytest.mark.parametrize("f", [F.silu, F.gelu, F.relu, lambda x: F.gelu(x, approximate="tanh")])
def test_identity_rule_passes_relevance_unchanged(f) -> None:
    x = torch.randn(64, 16, dtype=F64)
    x[0, :4] = 0.0  # f(x)/x at x = 0 must stay finite
    x.requires_grad_(True)
    y = f(x)
    out = identity_rule(x, y)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(out, y)
    assert torch.isfinite(x.grad).all()
    # exact up to the stabiliser: relative error eps / |x| with eps = 1e-12
    torch.testing.assert_close(x * x.grad, y.detach() * g, rtol=1e-9, atol=1e-12)
    x.grad = None
    identity_rule(x, f(x), 0.5).backward(g)  # with the gated MLP's uniform split folded in
    torch.testing.assert_close(x * x.grad, 0.5 * y.detach() * g, rtol=1e-9, atol=1e-12)


def test_uniform_rule_splits_a_product_in_half() -> None:
    a = torch.randn(8, 32, dtype=F64, requires_grad=True)
    b = torch.randn(8, 32, dtype=F64, requires_grad=True)
    y = uniform_rule(a, 0.5) * uniform_rule(b, 0.5)
    g = torch.randn_like(y)
    y.backward(g)
    half = 0.5 * (a * b * g).detach()
    torch.testing.assert_close(a * a.grad, half, rtol=1e-12, atol=0)
    torch.testing.assert_close(b * b.grad, half, rtol=1e-12, atol=0)


def test_uniform_rule_for_attention_matmuls() -> None:
    """``S = Q K^T``: R_Q = 0.5 Q (g_S K), R_K = 0.5 K (g_S^T Q); ``O = A V``: R_A + R_V = sum O g_O."""
    T, d = 7, 5
    q = torch.randn(T, d, dtype=F64, requires_grad=True)
    k = torch.randn(T, d, dtype=F64, requires_grad=True)
    s = uniform_rule(q, 0.5) @ uniform_rule(k, 0.5).T
    g_s = torch.randn_like(s)
    s.backward(g_s)
    torch.testing.assert_close(q * q.grad, 0.5 * q.detach() * (g_s @ k.detach()), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k * k.grad, 0.5 * k.detach() * (g_s.T @ q.detach()), rtol=1e-12, atol=1e-14)
    assert rel_err((q * q.grad).sum() + (k * k.grad).sum(), (s * g_s).sum()) < 1e-12

    a = torch.softmax(torch.randn(T, T, dtype=F64), -1).requires_grad_(True)
    v = torch.randn(T, d, dtype=F64, requires_grad=True)
    o = uniform_rule(a, 0.5) @ uniform_rule(v, 0.5)
    g_o = torch.randn_like(o)
    o.backward(g_o)
    assert rel_err((a * a.grad).sum(), 0.5 * (o * g_o).sum()) < 1e-12
    assert rel_err((v * v.grad).sum(), 0.5 * (o * g_o).sum()) < 1e-12


def test_uniform_rule_with_a_per_channel_scale() -> None:
    """GPT-2's fused q|k|v: one scale per output channel."""
    x = torch.randn(4, 9, dtype=F64, requires_grad=True)
    scale = torch.tensor([0.25] * 6 + [0.5] * 3, dtype=F64)
    g = torch.randn(4, 9, dtype=F64)
    uniform_rule(x, scale).backward(g)
    torch.testing.assert_close(x.grad, g * scale, rtol=0, atol=0)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_matches_and_conserves(offset: float) -> None:
    x = torch.randn(3, 6, 16, dtype=F64, requires_grad=True)
    w = torch.randn(16, dtype=F64)
    y = rms_norm(x, w, 1e-6, offset=offset, cast_before_weight=offset == 0.0)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (offset + w)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    assert rel_err((x * x.grad).sum(), (y * g).sum()) < 1e-10
    inv = torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(x.grad, g * inv * (offset + w), rtol=1e-12, atol=1e-12)  # normaliser detached


def test_layer_norm_matches_and_conserves() -> None:
    x = torch.randn(3, 6, 16, dtype=F64, requires_grad=True)
    w, b = torch.randn(16, dtype=F64), torch.randn(16, dtype=F64)
    torch.testing.assert_close(layer_norm(x, w, b, 1e-5), F.layer_norm(x, (16,), w, b, 1e-5))
    y = layer_norm(x, w, None, 1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    assert rel_err((x * x.grad).sum(), (y * g).sum()) < 1e-10
    x.grad = None
    y = layer_norm(x, w, b, 1e-5)  # with a bias, the bias keeps its share
    y.backward(g)
    assert rel_err((x * x.grad).sum(), ((y - b) * g).sum()) < 1e-10


def test_stabilized_div_never_divides_by_zero() -> None:
    den = torch.tensor([0.0, -0.0, 1e-300, -1e-300, 2.0, -2.0], dtype=F64)
    out = stabilized_div(torch.ones_like(den), den)
    assert torch.isfinite(out).all()
    assert (stabilized(den) != 0).all()
    torch.testing.assert_close(out[4:], torch.tensor([0.5, -0.5], dtype=F64), rtol=1e-12, atol=0)
    assert torch.equal(stabilized_div(torch.zeros(3), torch.zeros(3)), torch.zeros(3))


# -- 2. conservation ------------------------------------------------------------------------------


def _samples(n: int = 3, target_start: int = 1) -> list[Sample]:
    out = samples_from_texts(tiny_tokenizer(), CORPUS[:n], min_tokens=4)
    return [Sample(s.input_ids, target_start) for s in out]


@pytest.mark.parametrize("family", FAMILIES)
def test_cp_lrp_conserves_the_explained_logits(family: str) -> None:
    model = tiny_model(family, dtype=F64, zero_bias=True)
    rel = attribute(model, _samples(), method="lrp", variant="cp", batch_size=1, sink_positions=0)
    ratio = rel.info["conservation_ratio"]
    print(f"\n{family}: cp conservation ratio {ratio:.12f}")
    assert abs(ratio - 1) < 1e-6


class _Taps:
    """Forward hooks (registered before the composite, so they see raw module outputs) that keep
    selected tensors for reading ``x * x.grad`` after the backward."""

    def __init__(self, model: nn.Module):
        self.model, self.arch = model, architecture(model)
        self.kept: dict[str, Tensor] = {}
        self.probs: dict[int, Tensor] = {}
        self.handles: list = []

    def keep(self, key: str, t: Tensor) -> None:
        t.retain_grad()
        self.kept[key] = t

    def rel(self, key: str) -> float:
        t = self.kept[key]
        return float((t.detach() * t.grad).sum())

    def _alias_input(self, key: str):
        """Give a module its own copy of its input, so the input's grad is this module's share only."""
        def pre(_m, args):
            x = args[0].view_as(args[0])
            self.keep(key, x)
            return (x, *args[1:])
        return pre

    def _out(self, key: str):
        def hook(_m, _args, out):
            self.keep(key, out[0] if isinstance(out, tuple) else out)
        return hook

    @contextmanager
    def attached(self) -> Iterator[_Taps]:
        a = self.arch
        for norm_i, (name, mod) in enumerate(m for m in self.model.named_modules() if is_norm(m[1])):
            self.handles += [mod.register_forward_pre_hook(self._alias_input(f"norm{norm_i}.in:{name}")),
                             mod.register_forward_hook(self._out(f"norm{norm_i}.out:{name}"))]
        for i, blk in enumerate(blocks(self.model)):
            # MLP input: the norm output, read by the up (and gate) projection only
            up = blk.get_submodule(a.up)
            self.handles.append(up.register_forward_pre_hook(
                lambda _m, args, i=i: self.keep(f"{i}.mlp.in", args[0])))
            self.handles.append(blk.get_submodule(a.down).register_forward_hook(self._out(f"{i}.mlp.out")))
            for name in a.linear_names:
                lin = blk.get_submodule(name)
                self.handles += [lin.register_forward_pre_hook(self._alias_input(f"{i}.{name}.in")),
                                 lin.register_forward_hook(self._out(f"{i}.{name}.out"))]
            attn = blk.get_submodule(a.attn)
            self.handles.append(attn.register_forward_hook(
                lambda _m, _args, out, i=i: self.probs.__setitem__(i, out[1].detach())))
        try:
            yield self
        finally:
            for h in self.handles:
                h.remove()

    def qkv(self, layer: int) -> list[tuple[Tensor, Tensor]]:
        """(value, grad) of the raw q, k, v projection outputs of one layer (GPT-2: slices of c_attn)."""
        a = self.arch
        if a.qkv:
            fused = self.kept[f"{layer}.{a.attn}.{a.qkv}.out"]
            width = self.model.config.n_embd
            return list(zip(fused.detach().split(width, -1), fused.grad.split(width, -1), strict=True))
        return [(t.detach(), t.grad) for t in (self.kept[f"{layer}.{a.attn}.{n}.out"] for n in (a.q, a.k, a.v))]


def _attnlrp_pass(family: str) -> tuple[_Taps, nn.Module, float]:
    model = tiny_model(family, dtype=F64, zero_bias=True)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.tensor([_samples(1)[0].input_ids])
    taps = _Taps(model)
    with taps.attached(), lrp_composite(model, "attnlrp"):
        h0: dict[str, Tensor] = {}

        def track_input(_m, args, kwargs) -> None:
            h0["h"] = (args[0] if args else kwargs["hidden_states"]).requires_grad_()

        pre = blocks(model)[0].register_forward_pre_hook(track_input, with_kwargs=True)
        logits = model(input_ids=ids, output_attentions=True, use_cache=False).logits
        pre.remove()
        target = logits[0, :-1].gather(-1, ids[0, 1:, None]).sum()
        target.backward()
    return taps, model, float((h0["h"].detach() * h0["h"].grad).sum()) / float(target.detach())


def _rel(pair: tuple[Tensor, Tensor]) -> float:
    return float((pair[0] * pair[1]).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_attnlrp_conserves_block_by_block(family: str) -> None:
    taps, model, ratio = _attnlrp_pass(family)
    a = taps.arch
    n_heads = model.config.num_attention_heads
    lines = [f"\n{family}: attnlrp whole-model ratio (input relevance / explained logits) {ratio:.6f}"]
    norm_keys = [k for k in taps.kept if k.startswith("norm") and ".in:" in k]
    assert len(norm_keys) >= 2 * len(blocks(model)) + 1
    for key in norm_keys:
        out = key.replace(".in:", ".out:")
        assert rel_err(taps.rel(key), taps.rel(out)) < 1e-6, key
    for i in range(len(blocks(model))):
        assert rel_err(taps.rel(f"{i}.mlp.in"), taps.rel(f"{i}.mlp.out")) < 1e-6, f"MLP of layer {i}"
        for name in a.linear_names:
            assert rel_err(taps.rel(f"{i}.{name}.in"), taps.rel(f"{i}.{name}.out")) < 1e-6, f"{i}.{name}"
        # value path: O = A V with the uniform rule gives v exactly half of R_O (GQA repeats v per group,
        # the gradient sums over the group, so the relation is unchanged)
        q, k, v = taps.qkv(i)
        o = taps.kept[f"{i}.{a.attn}.{a.o}.in"]
        r_o, r_q, r_k, r_v = (_rel(t) for t in ((o.detach(), o.grad), q, k, v))
        assert rel_err(r_v, 0.5 * r_o) < 1e-6, f"value path of layer {i}"
        # q/k path: S = Q K^T splits uniformly, so R_q == R_k == 1/4 sum(S * dS) with dS the plain
        # softmax backward of g_A = g_O V^T; sum(S * dS) = sum(log A * dS) because dS sums to 0 per row.
        assert rel_err(r_q, r_k) < 1e-6, f"q vs k of layer {i}"
        probs = taps.probs[i][0]  # [heads, T, T]
        T = probs.shape[-1]
        head_dim = o.shape[-1] // n_heads
        v_heads = v[0][0].reshape(T, -1, head_dim).transpose(0, 1)
        v_heads = v_heads.repeat_interleave(n_heads // v_heads.shape[0], dim=0)  # GQA
        g_o = o.grad.reshape(T, n_heads, head_dim).transpose(0, 1)
        g_a = g_o @ v_heads.transpose(-1, -2)
        d_s = probs * (g_a - (probs * g_a).sum(-1, keepdim=True))
        live = probs > 0
        terms = probs[live].log() * d_s[live]
        expected = 0.25 * float(terms.sum())
        lines.append(f"  layer {i}: R_O {r_o:+.6f}  R_v {r_v:+.6f} (= R_O/2)  R_q {r_q:+.6f}  R_k {r_k:+.6f}"
                     f"  (closed form {expected:+.6f})  attention in/out {(r_q + r_k + r_v) / r_o:.4f}")
        # eager attention takes the softmax in float32 even for float64 models (llama, qwen2, opt,
        # gemma3), so A and thus the closed form carry float32 rounding: bound the error by the terms
        assert abs(r_q - expected) <= 1e-6 * 0.25 * float(terms.abs().sum()), f"q closed form of layer {i}"
    print("\n".join(lines))


# -- 3. transparency ------------------------------------------------------------------------------


def _batch() -> dict[str, Tensor]:
    s = _samples(2)
    n = max(len(x.input_ids) for x in s)
    ids = torch.tensor([list(x.input_ids) + [0] * (n - len(x.input_ids)) for x in s])
    return {"input_ids": ids, "attention_mask": (torch.arange(n)[None] < torch.tensor(
        [[len(x.input_ids)] for x in s])).long()}


def _logits_and_grads(model: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(**_batch(), use_cache=False).logits
    logits[..., :5].sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_bit_identical(got: tuple[Tensor, dict[str, Tensor]], ref: tuple[Tensor, dict[str, Tensor]]) -> None:
    assert torch.equal(got[0], ref[0])
    assert got[1].keys() == ref[1].keys() and len(ref[1]) > 0
    for name, g in ref[1].items():
        assert torch.equal(got[1][name], g), name


def _assert_clean(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, name
        assert not mod._backward_hooks and not mod._backward_pre_hooks, name
        assert "forward" not in mod.__dict__, name


@pytest.mark.parametrize("family", FAMILIES)
def test_composite_is_scoped_and_reversible(family: str) -> None:
    reference = tiny_model(family, seed=3)  # never patched
    patched, other = tiny_model(family, seed=3), tiny_model(family, seed=3)
    ref = _logits_and_grads(reference)
    for variant in VARIANTS:
        with lrp_composite(patched, variant):
            inside = patched(**_batch(), use_cache=False).logits.detach()
            assert rel_err(inside, ref[0]) < 1e-6
            _logits_and_grads(patched)  # exercise the patched backward
            _assert_bit_identical(_logits_and_grads(other), ref)  # a second instance is unaffected
        _assert_clean(patched)
        _assert_bit_identical(_logits_and_grads(patched), ref)
    flags = [p.requires_grad for p in patched.parameters()]
    attribute(patched, _samples(2), units=("neuron", "head", "weight"))
    _assert_clean(patched)
    assert [p.requires_grad for p in patched.parameters()] == flags and not patched.training
    _assert_bit_identical(_logits_and_grads(patched), ref)


# -- 4. attention implementation ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_gives_the_same_relevance_as_eager(family: str) -> None:
    try:
        sdpa = tiny_model(family, dtype=F64, attn="sdpa")
    except (ValueError, ImportError) as exc:  # the family has no sdpa kernel in this transformers
        pytest.skip(f"{family} does not support sdpa: {exc}")
    eager = tiny_model(family, dtype=F64, attn="eager")
    assert sdpa.config._attn_implementation == "sdpa"
    samples = _samples(3)
    for variant in VARIANTS:
        r_e = attribute(eager, samples, units=("neuron", "head"), variant=variant, batch_size=1)
        r_s = attribute(sdpa, samples, units=("neuron", "head"), variant=variant, batch_size=1)
        for unit in ("neuron", "head"):
            assert rel_err(r_s.scores[unit], r_e.scores[unit]) < 1e-6, (variant, unit)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_gated_product_splits_relevance_half_and_half(family):
    """Uniform rule for the gated product: each factor (act(gate), up) gets exactly half of the product's
    relevance, position by position. Conservation alone holds for any split summing to 1; this pins 0.5/0.5."""
    model = tiny_model(family, dtype=torch.float64)
    arch = architecture(model)
    mlp_block = blocks(model)[1]
    act, up, down = (mlp_block.get_submodule(n) for n in (arch.act, arch.up, arch.down))
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, args, out=None):
            t = out if out is not None else args[0]
            t.register_hook(lambda g: seen.__setitem__(name, (t.detach() * g).sum((0, 1))))
        return hook

    ids = torch.tensor([[5, 17, 40, 99, 120, 7, 64, 33]])
    # registered before the rules, so they see the raw factors: act's input (the gate) and up's output
    handles = [act.register_forward_pre_hook(keep("a")), up.register_forward_hook(keep("b")),
               down.register_forward_pre_hook(keep("p"))]
    try:
        with lrp_composite(model):
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            model(inputs_embeds=emb).logits[0, -1, 3].backward()
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(seen["a"], 0.5 * seen["p"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(seen["b"], 0.5 * seen["p"], rtol=1e-6, atol=1e-9)
    assert seen["p"].abs().sum() > 0
