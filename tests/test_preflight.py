"""The pre-flight size checks: a lower bound on the parameters a config describes, computed without loading it."""

from __future__ import annotations

from safety_prune.preflight import estimate_weight_params

CFG = {"num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 10, "intermediate_size": 16,
       "num_attention_heads": 2, "num_key_value_heads": 1}


def test_weight_params_by_hand() -> None:
    # per block: q, o (2 heads x 4) and k, v (1 kv head x 4), each 8 wide: 8*4*2*(2+1) = 192; MLP 2*8*16 = 256
    assert estimate_weight_params(CFG) == 2 * (192 + 256) + 10 * 8
    assert estimate_weight_params({"text_config": CFG}) == estimate_weight_params(CFG)  # multimodal configs


def test_missing_or_negative_sizes_give_no_estimate() -> None:
    assert estimate_weight_params({"hidden_size": 8}) is None
    assert estimate_weight_params(CFG | {"vocab_size": -1}) is None
    assert estimate_weight_params(CFG | {"num_hidden_layers": True}) is None  # a bool is not a size
