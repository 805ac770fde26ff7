import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import FAMILIES, tiny_model

from safety_prune import pruning
from safety_prune.errors import AttributionError, ConfigError, ResultsError
from safety_prune.families import architecture, blocks, geometry
from safety_prune.pruning import (
    MaskSet,
    Unit,
    apply_masks,
    count_units,
    fraction,
    load_masks,
    masked,
    pruned_copy,
    save_masks,
    select,
)

IDS = torch.tensor([[5, 17, 40, 99, 120, 7, 64, 33, 250, 12], [9, 8, 7, 6, 5, 4, 3, 200, 150, 100]])


def bits(model) -> dict[str, torch.Tensor]:
    """Raw float bits: catches -0.0 vs 0.0 and NaN payloads that torch.equal would not."""
    return {n: p.detach().clone().view(torch.int32) for n, p in model.named_parameters()}


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weight_scores(model, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    arch, out = architecture(model), {}
    for layer, block in enumerate(blocks(model)):
        for name in arch.linear_names:
            shape = block.get_submodule(name).weight.shape
            out[f"weight.{layer}.{name}"] = torch.randn(shape[::-1] if arch.conv1d else shape, generator=gen)
    return out


def mixed_units(model) -> list[Unit]:
    arch = architecture(model)
    return [Unit("neuron", 0, 3), Unit("neuron", 1, 10), Unit("head", 1, 0), Unit("head", 0, 2),
            Unit("weight", 1, 5, arch.down), Unit("weight", 0, 33, arch.linear_names[0])]


def module(model, layer: int, name: str):
    return blocks(model)[layer].get_submodule(name)


def linear_weight(model, layer: int, name: str) -> torch.Tensor:
    """A block weight in [out, in] layout whatever the family stores."""
    w = module(model, layer, name).weight.detach()
    return w.T if architecture(model).conv1d else w


# -- apply / revert -------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_apply_and_undo_is_bit_identical(family):
    model = tiny_model(family)
    arch = architecture(model)
    with torch.no_grad():  # a -0.0 inside a masked entry must come back as -0.0
        module(model, 1, arch.down).weight.view(-1)[5] = -0.0
    before, logits = bits(model), model(IDS).logits
    undo = apply_masks(model, mixed_units(model))
    assert not same_bits(bits(model), before)
    undo.undo()
    assert same_bits(bits(model), before)
    assert torch.equal(model(IDS).logits, logits)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_composition_undone_in_reverse_order(family):
    model = tiny_model(family)
    original = bits(model)
    first = apply_masks(model, [Unit("neuron", 0, 3), Unit("head", 1, 1)])
    after_first = bits(model)
    second = apply_masks(model, [Unit("neuron", 0, 3), Unit("neuron", 0, 4), Unit("head", 1, 0)])
    second.undo()
    assert same_bits(bits(model), after_first)
    first.undo()
    assert same_bits(bits(model), original)


def test_context_managers_restore_also_after_errors():
    model = tiny_model("qwen2")
    before = bits(model)
    with pytest.raises(RuntimeError), masked(model, [Unit("head", 0, 1)]) as m:
        assert m is model and not same_bits(bits(model), before)
        raise RuntimeError
    assert same_bits(bits(model), before)
    with apply_masks(model, [Unit("neuron", 1, 2)]):
        assert not same_bits(bits(model), before)
    assert same_bits(bits(model), before)


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_pruned_copy_leaves_input_untouched(family):
    model = tiny_model(family)
    before = bits(model)
    pruned = pruned_copy(model, mixed_units(model))
    assert same_bits(bits(model), before)
    assert not same_bits(bits(pruned), before)
    assert not torch.equal(pruned(IDS).logits, model(IDS).logits)


# -- semantics -------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_mask_silences_the_neuron(family):
    model = tiny_model(family)
    down = module(model, 1, architecture(model).down)
    seen = []
    handle = down.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    with masked(model, [Unit("neuron", 1, 7)]):
        pruned = model(IDS).logits
    handle.remove()
    assert torch.all(seen[0][..., 7] == 0)
    assert seen[0][..., 8].abs().sum() > 0

    def zero_seven(_m, args):
        x = args[0].clone()
        x[..., 7] = 0
        return (x,)

    handle = down.register_forward_pre_hook(zero_seven)
    already_zero = model(IDS).logits
    handle.remove()
    assert torch.equal(pruned, already_zero)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_mask_equals_zeroing_its_output_slice(family):
    model = tiny_model(family)
    arch, hd = architecture(model), geometry(model).head_dim
    head = 2

    def zero_head(_m, args):
        x = args[0].clone()
        x[..., head * hd:(head + 1) * hd] = 0
        return (x,)

    handle = module(model, 0, f"{arch.attn}.{arch.o}").register_forward_pre_hook(zero_head)
    want = model(IDS).logits
    handle.remove()
    with masked(model, [Unit("head", 0, head)]):
        assert torch.equal(model(IDS).logits, want)


@pytest.mark.parametrize(("family", "group"), [("llama", 2), ("qwen2", 2), ("gemma3", 4)])
def test_gqa_kv_rows_zeroed_only_for_a_fully_pruned_group(family, group):
    model = tiny_model(family)
    arch, hd = architecture(model), geometry(model).head_dim
    k_name, v_name = f"{arch.attn}.{arch.k}", f"{arch.attn}.{arch.v}"
    kv_before = {n: linear_weight(model, 0, n).clone() for n in (k_name, v_name)}
    partial = [Unit("head", 0, h) for h in range(group - 1)]
    with masked(model, partial):
        for n in (k_name, v_name):
            assert torch.equal(linear_weight(model, 0, n), kv_before[n])
        q = linear_weight(model, 0, f"{arch.attn}.{arch.q}")
        assert torch.all(q[:(group - 1) * hd] == 0) and q[(group - 1) * hd:].abs().sum() > 0
    with masked(model, [*partial, Unit("head", 0, group - 1)]):
        for n in (k_name, v_name):
            w = linear_weight(model, 0, n)
            assert torch.all(w[:hd] == 0)
            assert torch.equal(w[hd:], kv_before[n][hd:])


def test_gpt2_fused_qkv_slices_and_biases():
    model = tiny_model("gpt2")
    hd, width = geometry(model).head_dim, 32
    c_attn = module(model, 0, "attn.c_attn")
    with masked(model, [Unit("head", 0, 1)]):
        w, b = c_attn.weight.detach(), c_attn.bias.detach()  # Conv1D: [in, 3 * hidden]
        zeroed = torch.zeros(3 * width, dtype=torch.bool)
        for part in range(3):
            zeroed[part * width + hd:part * width + 2 * hd] = True
        assert torch.all(w[:, zeroed] == 0) and torch.all(b[zeroed] == 0)
        assert torch.all(w[:, ~zeroed] != 0)
        o = module(model, 0, "attn.c_proj").weight.detach()  # [in, out]: head 1 is rows hd:2hd
        assert torch.all(o[hd:2 * hd] == 0) and torch.all(o[:hd] != 0)


def test_opt_head_zeroes_q_k_v_biases_but_not_out_bias():
    model = tiny_model("opt")
    hd = geometry(model).head_dim
    out_bias = module(model, 0, "self_attn.out_proj").bias.detach().clone()
    with masked(model, [Unit("head", 0, 3)]):
        for n in ("q_proj", "k_proj", "v_proj"):
            assert torch.all(module(model, 0, f"self_attn.{n}").bias[3 * hd:4 * hd] == 0)
        assert torch.equal(module(model, 0, "self_attn.out_proj").bias, out_bias)


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_mask_zeroes_exactly_one_entry(family):
    model = tiny_model(family)
    arch = architecture(model)
    name = arch.up
    cols = linear_weight(model, 1, name).shape[1]
    before = linear_weight(model, 1, name).clone()
    with masked(model, [Unit("weight", 1, 3 * cols + 5, name)]):
        after = linear_weight(model, 1, name)
        assert after[3, 5] == 0
        assert int((after != before).sum()) == 1


def test_masks_made_for_another_model_are_refused():
    model = tiny_model("llama")
    for unit, match in [(Unit("neuron", 9, 0), "outside this model"), (Unit("head", 0, 4), "outside"),
                        (Unit("weight", 0, 0, "mlp.c_fc"), "does not exist"),
                        (Unit("weight", 0, 10**6, "mlp.up_proj"), "outside")]:
        with pytest.raises(ConfigError, match=match):
            apply_masks(model, [unit])
    assert torch.equal(model(IDS).logits, tiny_model("llama")(IDS).logits)


# -- units, counts ----------------------------------------------------------------------

def test_unit_ids_are_readable():
    assert str(Unit("neuron", 3, 517)) == "L3.mlp.neuron[517]"
    assert str(Unit("head", 2, 5)) == "L2.attn.head[5]"
    assert str(Unit("weight", 1, 12 * 64 + 40, "mlp.down_proj", cols=64)) == "L1.mlp.down_proj.weight[12,40]"
    assert Unit("weight", 1, 808, "mlp.down_proj", cols=64) == Unit("weight", 1, 808, "mlp.down_proj")
    for bad in [dict(kind="layer", layer=0, index=0), dict(kind="weight", layer=0, index=0),
                dict(kind="head", layer=0, index=0, module="o_proj"), dict(kind="head", layer=-1, index=0)]:
        with pytest.raises(ConfigError):
            Unit(**bad)


def test_count_units_and_fraction():
    model = tiny_model("llama")
    assert count_units(model, "neuron") == 2 * 64 and count_units(model, "head") == 2 * 4
    total = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and "norm" not in n)
    assert count_units(model, "weight") == total
    assert fraction(model, [Unit("head", 0, 1), Unit("head", 0, 1), Unit("head", 1, 1)]) == 2 / 8
    assert fraction(model, []) == 0.0
    with pytest.raises(ConfigError, match="one kind"):
        fraction(model, [Unit("head", 0, 1), Unit("neuron", 0, 1)])
    with pytest.raises(ConfigError, match="Unknown unit kind"):
        count_units(model, "layer")


# -- selection -------------------------------------------------------------------------------

def test_select_global_k_order_prefix_and_largest():
    scores = {"neuron": torch.tensor([[0.5, -2.0, 3.0], [-1.0, 0.0, -3.0]])}
    got = select(scores, "neuron", k=3)
    assert list(got) == [Unit("neuron", 1, 2), Unit("neuron", 0, 1), Unit("neuron", 1, 0)]
    assert got[:2] == select(scores, "neuron", k=2)
    assert list(select(scores, "neuron", k=2, largest=True)) == [Unit("neuron", 0, 2), Unit("neuron", 0, 0)]
    assert len(select(scores, "neuron", sparsity=0.5)) == 3


def test_select_ties_are_broken_by_position_deterministically():
    scores = {"head": torch.zeros(3, 4)}
    first = [(u.layer, u.index) for u in select(scores, "head", k=5)]
    assert first == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert [(u.layer, u.index) for u in select(scores, "head", k=5, largest=True)][:2] == [(0, 0), (0, 1)]
    scores = {"neuron": torch.randint(0, 3, (4, 50)).float()}
    assert select(scores, "neuron", k=77) == select(scores, "neuron", k=77)
    ranked = select(scores, "neuron", k=200)
    keys = [(float(scores["neuron"][u.layer, u.index]), u.layer * 50 + u.index) for u in ranked]
    assert keys == sorted(keys)


def test_select_weights_global_maps_back_to_matrices():
    model = tiny_model("gpt2")
    scores = weight_scores(model)
    got = select(scores, "weight", sparsity=0.1)
    total = count_units(model, "weight")
    assert len(got) == round(0.1 * total)
    picked = torch.stack([scores[f"weight.{u.layer}.{u.module}"].flatten()[u.index] for u in got])
    assert torch.all(picked[1:] >= picked[:-1])
    everything = torch.cat([s.flatten() for s in scores.values()])
    assert picked.max() <= everything.sort().values[len(got)]
    assert str(got[0]).startswith(f"L{got[0].layer}.{got[0].module}.weight[")
    with masked(model, got):
        assert fraction(model, got) == pytest.approx(0.1, abs=1e-4)


def test_select_rowwise_takes_the_same_count_from_every_row():
    model = tiny_model("llama")
    scores = weight_scores(model)
    got = select(scores, "weight", sparsity=0.25, scope="rowwise")
    for (layer, name), m in pruning._weight_unit_masks(model, got).items():
        s = scores[f"weight.{layer}.{name}"]
        per_row = m.sum(1)
        assert torch.all(per_row == round(0.25 * s.shape[1]))
        kept_min = s.masked_fill(m, float("inf")).min(1).values
        chosen_max = s.masked_fill(~m, float("-inf")).max(1).values
        assert torch.all(chosen_max <= kept_min)
    assert select(scores, "weight", sparsity=0.25, scope="rowwise") == got


def test_select_exclude_skips_already_pruned_units():
    scores = {"neuron": torch.arange(12.0).reshape(2, 6)}
    first = select(scores, "neuron", k=3)
    second = select(scores, "neuron", k=3, exclude=set(first))
    assert list(second) == [Unit("neuron", 0, i) for i in (3, 4, 5)]
    with pytest.raises(ConfigError, match="only 9 of 12 remain"):
        select(scores, "neuron", k=10, exclude=first)
    model = tiny_model("opt")
    w = weight_scores(model)
    a = select(w, "weight", k=100)
    b = select(w, "weight", k=100, exclude=a)
    assert not set(a) & set(b) and select(w, "weight", k=200) == [*a, *b]
    rows = select(w, "weight", sparsity=0.25, scope="rowwise", exclude=a)
    assert not set(a) & set(rows)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(kind="neuron", k=5000), ConfigError, "--k 5000 exceeds the 128 neuron units of this model"),
    (dict(kind="neuron", k=0), ConfigError, "--k 0 must be"),
    (dict(kind="neuron", k=-3), ConfigError, "--k -3 must be"),
    (dict(kind="neuron", sparsity=1.0), ConfigError, r"--sparsity 1.0 is outside \(0, 1\)"),
    (dict(kind="neuron", sparsity=0.0), ConfigError, r"--sparsity 0.0 is outside \(0, 1\)"),
    (dict(kind="neuron", sparsity=0.001), ConfigError, "selects no units"),
    (dict(kind="neuron", k=3, sparsity=0.1), ConfigError, "exactly one of --k"),
    (dict(kind="neuron"), ConfigError, "exactly one of --k"),
    (dict(kind="layer", k=1), ConfigError, "Unknown unit kind 'layer'"),
    (dict(kind="head", sparsity=0.5, scope="rowwise"), ConfigError, "rowwise applies only to weight"),
    (dict(kind="weight", k=3, scope="rowwise"), ConfigError, "not --k"),
    (dict(kind="weight", sparsity=0.5, scope="column"), ConfigError, "Unknown --scope"),
])
def test_select_errors_name_the_option(kwargs, error, match):
    model = tiny_model("llama")
    scores = {"neuron": torch.randn(2, 64), "head": torch.randn(2, 4), **weight_scores(model)}
    with pytest.raises(error, match=match):
        select(scores, **kwargs)


def test_select_refuses_missing_or_non_finite_scores():
    with pytest.raises(ConfigError, match="no head entries"):
        select({"neuron": torch.randn(2, 3)}, "head", k=1)
    with pytest.raises(ConfigError, match="no weight entries"):
        select({"neuron": torch.randn(2, 3)}, "weight", k=1)
    with pytest.raises(AttributionError, match="NaN"):
        select({"neuron": torch.tensor([[0.0, float("nan")]])}, "neuron", k=1)


# -- serialisation ----------------------------------------------------------------------------

def test_masks_json_is_byte_identical_and_roundtrips(tmp_path):
    model = tiny_model("llama")
    units = mixed_units(model)
    meta = {"method": "lrp", "k": 4, "seed": 0}
    for d in ("a", "b"):
        save_masks(units, tmp_path / d / "masks.json", tmp_path / d / "masks.safetensors", meta, model=model)
    save_masks(list(reversed(units)), tmp_path / "c" / "masks.json", tmp_path / "c" / "masks.safetensors",
               meta, model=model)
    text = (tmp_path / "a" / "masks.json").read_bytes()
    assert text == (tmp_path / "b" / "masks.json").read_bytes()
    assert text == (tmp_path / "c" / "masks.json").read_bytes()
    doc = json.loads(text)
    assert doc["counts"] == {"head": 2, "neuron": 2, "weight": 2} and doc["meta"] == meta
    assert [u["id"] for u in doc["units"]][:2] == ["L0.mlp.neuron[3]", "L1.mlp.neuron[10]"]
    assert "L1.mlp.down_proj.weight[0,5]" in [u["id"] for u in doc["units"]]
    loaded = load_masks(tmp_path / "a" / "masks.json")
    assert set(loaded) == set(units) and len(loaded) == len(units)
    tensors = load_file(str(tmp_path / "a" / "masks.safetensors"))
    assert tensors["layers.1.mlp.down_proj.weight"][:, 10].all()
    assert tensors["layers.1.self_attn.q_proj.weight"][:8].all()
    with masked(model, loaded):
        for key, mask in tensors.items():
            layer, name = int(key.split(".")[1]), ".".join(key.split(".")[2:-1])
            param = getattr(module(model, layer, name), key.rsplit(".", 1)[1])
            assert torch.all(param[mask] == 0)


def test_many_weights_go_to_safetensors(tmp_path, monkeypatch):
    monkeypatch.setattr(pruning, "WEIGHT_LIST_LIMIT", 10)
    model = tiny_model("gpt2")
    units = [*select(weight_scores(model), "weight", k=50), Unit("head", 1, 2)]
    save_masks(units, tmp_path / "masks.json", tmp_path / "m.safetensors", {}, model=model)
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert not doc["weights_listed"] and doc["counts"]["weight"] == 50 and len(doc["units"]) == 1
    loaded = load_masks(tmp_path / "masks.json")
    assert set(loaded) == set(units)
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(ResultsError, match="cannot be read"):
        load_masks(tmp_path / "masks.json")


def test_load_masks_errors_are_clear(tmp_path):
    path = tmp_path / "masks.json"
    with pytest.raises(ResultsError, match="does not exist"):
        load_masks(path)
    path.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_masks(path)
    path.write_text(json.dumps({"units": []}))
    with pytest.raises(ResultsError, match="not a safety_prune masks file"):
        load_masks(path)
    model = tiny_model("qwen2")
    save_masks([Unit("head", 0, 1)], path, tmp_path / "m.safetensors", {}, model=model)
    good = json.loads(path.read_text())
    for corrupt in [{**good, "units": [{"kind": "head", "layer": "x", "index": 1, "module": None}]},
                    {**good, "units": [{"kind": "gizmo", "layer": 0, "index": 1, "module": None}]},
                    {**good, "units": [{"kind": "head"}]},
                    {**good, "counts": {"head": 3}}]:
        path.write_text(json.dumps(corrupt))
        with pytest.raises(ResultsError, match="corrupt"):
            load_masks(path)


def test_maskset_behaves_like_a_list():
    units = [Unit("neuron", 0, 1), Unit("weight", 1, 70, "mlp.up_proj", cols=32), Unit("head", 1, 3)]
    ms = MaskSet(units)
    assert len(ms) == 3 and ms[1] == units[1] and str(ms[1]) == "L1.mlp.up_proj.weight[2,6]"
    assert ms == units and list(ms[1:]) == units[1:] and units[2] in ms
    assert ms.counts() == {"neuron": 1, "head": 1, "weight": 1}
    assert list(ms.of_kind("head")) == [units[2]]
    with pytest.raises(ConfigError, match="Expected Unit"):
        MaskSet(["L0.mlp.neuron[1]"])


def test_units_with_and_without_cols_mask_the_same_matrix():
    model = tiny_model("llama")
    cols = linear_weight(model, 0, "mlp.up_proj").shape[1]
    units = [Unit("weight", 0, 1, "mlp.up_proj"), Unit("weight", 0, 2, "mlp.up_proj", cols=cols)]
    with masked(model, units):
        assert torch.all(linear_weight(model, 0, "mlp.up_proj")[0, 1:3] == 0)
    assert fraction(model, units) == 2 / count_units(model, "weight")


@pytest.mark.parametrize("family", FAMILIES)
def test_dampen_zero_equals_zeroing_and_one_changes_nothing(family):
    """Dampening scales only what a unit writes; at 0 the outputs equal removing the unit, at 1 nothing moves."""
    model = tiny_model(family)
    units = [Unit("neuron", 0, 3), Unit("neuron", 1, 10), Unit("head", 1, 0), Unit("head", 0, 2)]
    with torch.no_grad():
        plain = model(IDS).logits
        with masked(model, units):
            zeroed = model(IDS).logits
        with masked(model, units, scale=0.0):
            damp0 = model(IDS).logits
        with masked(model, units, scale=1.0):
            damp1 = model(IDS).logits
        with masked(model, units, scale=0.5):
            half = model(IDS).logits
    torch.testing.assert_close(damp0, zeroed, rtol=0, atol=1e-5)
    assert torch.equal(damp1, plain)
    assert not torch.allclose(half, plain) and not torch.allclose(half, zeroed)


def test_dampen_touches_only_output_entries_and_undoes():
    model, original = tiny_model("llama"), tiny_model("llama")
    arch = architecture(model)
    before = bits(model)
    with masked(model, [Unit("neuron", 0, 3)], scale=0.25):
        assert torch.equal(linear_weight(model, 0, arch.up), linear_weight(original, 0, arch.up))
        down, ref = linear_weight(model, 0, arch.down), linear_weight(original, 0, arch.down)
        torch.testing.assert_close(down[:, 3], 0.25 * ref[:, 3])
        assert torch.equal(down[:, :3], ref[:, :3]) and torch.equal(down[:, 4:], ref[:, 4:])
    assert same_bits(bits(model), before)


@pytest.mark.parametrize("scale", [-0.1, 1.5, float("nan")])
def test_dampen_factor_out_of_range_is_refused(scale):
    with pytest.raises(ConfigError, match="dampening factor"):
        apply_masks(tiny_model("llama"), [Unit("neuron", 0, 1)], scale=scale)


def test_masks_json_records_the_intervention(tmp_path):
    model = tiny_model("llama")
    save_masks([Unit("neuron", 0, 1)], tmp_path / "m.json", tmp_path / "m.safetensors", {}, model=model, scale=0.3)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["intervention"] == {"kind": "dampen", "scale": 0.3}
    assert set(load_file(tmp_path / "m.safetensors")) == {f"layers.0.{architecture(model).down}.weight"}


@pytest.mark.parametrize("family", FAMILIES)
def test_per_unit_gains_zero_and_one_equal_zeroing_and_no_change(family):
    """Per-unit gains: all 0 gives the removed units' logits bit for bit, all 1 changes no bit of anything."""
    model = tiny_model(family)
    units = MaskSet([Unit("neuron", 0, 3), Unit("neuron", 1, 10), Unit("head", 1, 0), Unit("head", 0, 2)])
    before = bits(model)
    with torch.no_grad():
        plain = model(IDS).logits
        with masked(model, units):
            zeroed = model(IDS).logits
        with masked(model, units, scale=torch.zeros(len(units))):
            gain0 = model(IDS).logits
        with masked(model, units, scale=torch.ones(len(units))):
            assert same_bits(bits(model), before)
            gain1 = model(IDS).logits
    assert torch.equal(gain0, zeroed) and torch.equal(gain1, plain)
    assert same_bits(bits(model), before)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_per_unit_gains_scale_each_unit_by_its_own_gain(family):
    """Each unit's output entries are multiplied by its own gain: the same weights as dampening each unit alone
    by its factor, and untouched entries keep their bits."""
    model = tiny_model(family)
    units = [Unit("neuron", 0, 3), Unit("head", 1, 2), Unit("neuron", 1, 5), Unit("weight", 0, 7, "mlp.down_proj"
                                                                                  if family == "llama" else "mlp.c_fc")]
    gains = torch.tensor([0.25, 0.5, 0.75, 0.1])
    before = bits(model)
    with masked(model, units, scale=gains):
        together = bits(model)
    one_by_one = [masked(model, [u], scale=float(g)) for u, g in zip(units, gains, strict=True)]
    for ctx in one_by_one:
        ctx.__enter__()
    alone = bits(model)
    for ctx in reversed(one_by_one):
        ctx.__exit__(None, None, None)
    assert same_bits(together, alone) and not same_bits(together, before)
    assert same_bits(bits(model), before)


def test_per_unit_gains_are_checked():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="gain"):
        apply_masks(model, [Unit("neuron", 0, 1), Unit("neuron", 0, 2)], scale=torch.tensor([0.5, 1.5]))
    with pytest.raises(ConfigError, match="one number per unit"):
        apply_masks(model, [Unit("neuron", 0, 1)], scale=torch.tensor([0.5, 0.5]))


def test_masks_json_records_per_unit_gains_and_reloads(tmp_path):
    """masks.json lists each unit's gain, the safetensors hold the factor to multiply each weight by, and
    load_intervention gives back what apply_masks took (same weights, bit for bit)."""
    from safety_prune.pruning import load_intervention

    model = tiny_model("llama")
    arch = architecture(model)
    units = MaskSet([Unit("neuron", 1, 4), Unit("neuron", 0, 2), Unit("head", 0, 1)])
    gains = torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64)
    save_masks(units, tmp_path / "m.json", tmp_path / "m.safetensors", {}, model=model, scale=gains)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["intervention"] == {"kind": "gains", "n_units": 3, "min_gain": 0.25, "mean_gain": 0.5}
    assert {u["id"]: u["gain"] for u in doc["units"]} == {str(u): float(g) for u, g in zip(units, gains, strict=True)}
    factors = load_file(tmp_path / "m.safetensors")
    down = factors[f"layers.0.{arch.down}.weight"]
    assert down.dtype == torch.float32 and torch.all(down[:, 2] == 0.25)
    assert torch.all(down[:, :2] == 1) and torch.all(down[:, 3:] == 1)
    loaded_units, loaded_gains = load_intervention(tmp_path / "m.json")
    with masked(model, units, scale=gains):
        direct = bits(model)
    with masked(model, loaded_units, scale=loaded_gains):
        assert same_bits(bits(model), direct)
