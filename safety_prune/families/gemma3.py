"""Gemma 3 (text): gated GELU MLP, RMSNorm scaled by (1 + w), q/k norms, sliding-window layers."""

from . import Architecture

ARCH = Architecture(
    family="gemma3", model_types=("gemma3_text", "gemma3"), blocks="model.layers", attn="self_attn",
    q="q_proj", k="k_proj", v="v_proj", qkv=None, o="o_proj",
    up="mlp.up_proj", gate="mlp.gate_proj", down="mlp.down_proj", act="mlp.act_fn",
    norm_kind="rms_offset",
)
