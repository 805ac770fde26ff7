"""OPT: fc1/fc2 MLP with ReLU on the block itself, LayerNorm, biases everywhere."""

from . import Architecture

ARCH = Architecture(
    family="opt", model_types=("opt",), blocks="model.decoder.layers", attn="self_attn",
    q="q_proj", k="k_proj", v="v_proj", qkv=None, o="out_proj",
    up="fc1", gate=None, down="fc2", act="activation_fn", norm_kind="layer",
)
