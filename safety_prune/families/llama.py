"""Llama (SmolLM2, TinyLlama, Llama-2/3): gated SiLU MLP, RMSNorm, grouped-query attention."""

from . import Architecture

ARCH = Architecture(
    family="llama", model_types=("llama",), blocks="model.layers", attn="self_attn",
    q="q_proj", k="k_proj", v="v_proj", qkv=None, o="o_proj",
    up="mlp.up_proj", gate="mlp.gate_proj", down="mlp.down_proj", act="mlp.act_fn", norm_kind="rms",
)
