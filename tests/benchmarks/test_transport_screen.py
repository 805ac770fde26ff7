"""The transport screen: the affine map and its statistics by hand on a tiny Llama; both screens refuse a bad
--strengths."""

from __future__ import annotations

import pytest
import torch
from bench_script import load
from tiny import tiny_model, tiny_tokenizer

from safety_prune.models import LoadedModel


@pytest.fixture(scope="module")
def ts():
    return load("transport_screen")


def _down_inputs(model, ids: list[int]) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0][0].detach()))
               for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return seen


def test_statistics_and_map_by_hand(ts) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    lm = LoadedModel(model, tok, None, "tiny", "tiny", None)
    rows = [{"prompt": "the cat sat", "continuation": " on the mat"}, {"prompt": "a dog", "continuation": " ran far"}]
    mean, sd, n = ts.token_statistics(lm, rows)
    seen = []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["continuation"], add_special_tokens=False)["input_ids"]
        seen.append(_down_inputs(model, (p + c)[:-1])[1][len(p) - 1:].double())  # layer 1, producing positions
    x = torch.cat(seen)
    assert n == x.shape[0]
    assert torch.allclose(mean[1], x.mean(0), atol=1e-6)
    assert torch.allclose(sd[1], x.std(0, correction=0), atol=1e-5)

    layers, width = mean.shape
    share = torch.zeros(layers, width)
    share[1, 3], share[1, 7] = 1.0, 0.5
    omega, beta = torch.full((layers, width), 0.5), torch.full((layers, width), 0.2)
    edited = ts.Transport(share, omega, beta).apply(model)
    x = torch.randn(4, width)
    expected = x.clone()
    for i, t in ((3, 1.0), (7, 0.5)):
        expected[:, i] = x[:, i] + t * ((0.5 - 1) * x[:, i] + 0.2)
    with torch.no_grad():
        got = edited.model.layers[1].mlp.down_proj(x)
        want = model.model.layers[1].mlp.down_proj(expected)
        untouched = edited.model.layers[0].mlp.down_proj(x), model.model.layers[0].mlp.down_proj(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(*untouched)  # a layer with no share is left alone
    assert all(not m._forward_hooks for m in model.modules())  # the input model is untouched


@pytest.mark.parametrize("script", ["transport_screen", "selection_screen"])
def test_a_strength_outside_0_1_is_refused_before_the_run_is_opened(script, tmp_path, monkeypatch) -> None:
    """Both screens' --strengths (transport: the lambdas; selection: the gains' strengths)."""
    from safety_prune.errors import ConfigError

    out = tmp_path / "screen.json"
    monkeypatch.setattr("sys.argv", [script, str(tmp_path / "no-run"), "--strengths", "0.5,1.5", "--json", str(out)])
    with pytest.raises(ConfigError, match=r"--strengths 1\.5 lies outside"):
        load(script).main()
    assert not out.exists()
