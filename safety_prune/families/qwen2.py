"""Qwen2: Llama layout with biases on q/k/v."""

from . import Architecture

ARCH = Architecture(
    family="qwen2", model_types=("qwen2",), blocks="model.layers", attn="self_attn",
    q="q_proj", k="k_proj", v="v_proj", qkv=None, o="o_proj",
    up="mlp.up_proj", gate="mlp.gate_proj", down="mlp.down_proj", act="mlp.act_fn", norm_kind="rms",
)
