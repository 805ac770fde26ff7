"""GPT-2: fused c_attn (q|k|v), Conv1D weights stored [in, out], GELU MLP, LayerNorm."""

from . import Architecture

ARCH = Architecture(
    family="gpt2", model_types=("gpt2",), blocks="transformer.h", attn="attn",
    q=None, k=None, v=None, qkv="c_attn", o="c_proj",
    up="mlp.c_fc", gate=None, down="mlp.c_proj", act="mlp.act", norm_kind="layer", conv1d=True,
)
