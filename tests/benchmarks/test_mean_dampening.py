"""Dampening toward the mean: a changed neuron keeps (1 - g) of its general-text mean, by hand on a tiny Llama."""

from __future__ import annotations

import torch
from bench_script import load
from tiny import tiny_model, tiny_tokenizer

from safety_prune.interventions import Edit
from safety_prune.models import LoadedModel
from safety_prune.pruning import MaskSet, Unit


def _module():
    return load("mean_dampening")


def _down_input(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    seen = {}
    down = model.model.layers[layer].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0].detach()))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return seen["x"]


def test_toward_mean_by_hand():
    md = _module()
    model, tok = tiny_model("llama"), tiny_tokenizer()
    lm = LoadedModel(model, tok, None, "tiny", "tiny", None)
    texts = ["the cat sat on the mat", "a dog ran in the park today"]
    means = md.general_means(lm, texts)
    ids = [tok(t, return_tensors="pt")["input_ids"] for t in texts]
    by_hand = torch.cat([_down_input(model, i, 1)[0] for i in ids]).double().mean(0)
    assert torch.allclose(means[1], by_hand, atol=1e-6)

    units = MaskSet([Unit("neuron", 1, 3), Unit("neuron", 1, 7)])
    gains = torch.tensor([0.25, 0.0])
    edited = md.toward_mean(lm, Edit(units, gains), means)
    x = _down_input(model, ids[0], 1)  # the edit comes after layer 1's MLP input: unchanged up to there
    expected = x.clone()
    for (i, g) in ((3, 0.25), (7, 0.0)):
        expected[..., i] = g * x[..., i] + (1 - g) * means[1, i].float()
    down = edited.model.layers[1].mlp.down_proj
    with torch.no_grad():
        got = down(x)
        want = model.model.layers[1].mlp.down_proj(expected)
    assert torch.allclose(got, want, atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())  # the input model is untouched
