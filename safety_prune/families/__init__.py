"""Where neurons, heads and norms live in each supported model family.

Each family is one file in this package defining ``ARCH``, a declarative
:class:`Architecture`, registered under the file's name and imported on first use.
The LRP composite, the attribution hooks and the pruning masks all read module
locations from it, so supporting a new family means adding one file here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UnsupportedArchitectureError
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    family: str
    model_types: tuple[str, ...]
    blocks: str  # CausalLM -> ModuleList of decoder blocks
    attn: str  # block -> attention module
    q: str | None  # attention -> projections; None where fused into ``qkv``
    k: str | None
    v: str | None
    qkv: str | None  # fused q|k|v projection (GPT-2's c_attn)
    o: str  # attention -> output projection (its input holds the per-head outputs)
    up: str  # block -> projection into the MLP hidden layer (ungated branch)
    gate: str | None  # block -> gate projection of a gated MLP (the activated branch)
    down: str  # block -> MLP down projection (its input is the neuron activation)
    act: str  # block -> elementwise nonlinearity module
    norm_kind: str  # "rms", "rms_offset" (Gemma: scale by 1 + w) or "layer"
    conv1d: bool = False  # GPT-2 stores projection weights as [in, out]

    @property
    def linear_names(self) -> tuple[str, ...]:
        """Every weight matrix inside a block, block-relative, in a fixed order."""
        attn = [f"{self.attn}.{n}" for n in (self.q, self.k, self.v, self.qkv) if n]
        gate = [self.gate] if self.gate else []
        return (*attn, f"{self.attn}.{self.o}", *gate, self.up, self.down)


FAMILIES: Registry[Architecture] = Registry.discover("model family", __name__, "ARCH")
SUPPORTED = ", ".join(FAMILIES)


def family_of(model_type: str) -> Architecture:
    """The family whose ``model_types`` include ``model_type`` (this imports every family file: each is a table)."""
    for name in FAMILIES:
        if model_type in FAMILIES.get(name).model_types:
            return FAMILIES.get(name)
    raise UnsupportedArchitectureError(
        f"Model type '{model_type}' is not supported. Supported families: {SUPPORTED}. "
        "To add one, add a file to safety_prune/families/ defining ARCH (see llama.py)."
    )


def architecture(model: nn.Module) -> Architecture:
    return family_of(model.config.model_type)


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(architecture(model).blocks)


@dataclass(frozen=True)
class Geometry:
    """Unit counts of a loaded model: what neuron and head indices mean."""

    n_layers: int
    n_neurons: int
    n_heads: int
    n_kv_heads: int
    head_dim: int


def geometry(model: nn.Module) -> Geometry:
    cfg = model.config
    arch = architecture(model)
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    down = blocks(model)[0].get_submodule(arch.down)
    return Geometry(
        n_layers=len(blocks(model)),
        n_neurons=down.weight.shape[0] if arch.conv1d else down.weight.shape[1],
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        head_dim=getattr(cfg, "head_dim", None) or hidden // n_heads,
    )


def is_norm(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
