"""Scoped, reversible LRP patching of one model instance.

zennit-style: a composite attaches rules to the modules of *this* instance
(forward hooks, or an instance-level ``forward`` for norms) and removes every one
of them on exit. No library class is modified, so other models in the process
are untouched.

Attention needs no custom kernel. The uniform rule for ``Q K^T`` and ``A V``
only rescales gradients, and rescaling commutes with the linear steps between a
projection and the matmuls (RoPE, head split, GQA repetition, q/k norms with the
normaliser detached). So it is applied at the q/k/v projection outputs: the
gradient into q and k is scaled by 1/4 (1/2 for ``Q K^T`` times 1/2 for the
``A`` factor of ``A V``), into v by 1/2, and the softmax keeps its plain
gradient. Relevance is therefore the same whichever attention kernel (eager,
sdpa) runs; a test checks this. The ``cp`` variant detaches q and k instead, so
attention weights act as constants and relevance is conserved exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from ..families import Architecture, architecture, blocks, is_norm
from .rules import identity_rule, layer_norm, rms_norm, uniform_rule

VARIANTS = ("attnlrp", "cp")


def _hook_output(stack: ExitStack, module: nn.Module, fn: Callable) -> None:
    handle = module.register_forward_hook(lambda _m, args, out: fn(args[0], out))
    stack.callback(handle.remove)


def _norm_forward(module: nn.Module, kind: str) -> Callable:
    if isinstance(module, nn.LayerNorm):
        return lambda x: layer_norm(x, module.weight, module.bias, module.eps)
    eps = getattr(module, "variance_epsilon", None) or module.eps
    if kind == "rms_offset":
        return lambda x: rms_norm(x, module.weight, eps, offset=1.0, cast_before_weight=False)
    return lambda x: rms_norm(x, module.weight, eps)


def replace_forward(stack: ExitStack, module: nn.Module, forward: Callable) -> None:
    """Give this module instance its own ``forward`` until ``stack`` closes; then restore exactly what was there
    (an instance-level forward someone else set, e.g. accelerate's, or none)."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = forward

    def restore() -> None:
        if had_own:
            module.forward = previous
        else:
            del module.forward

    stack.callback(restore)


def _qkv_scales(variant: str) -> tuple[float, float]:
    """(scale for q and k gradients, scale for v gradients)."""
    return (0.25, 0.5) if variant == "attnlrp" else (0.0, 1.0)


def _patch_attention(stack: ExitStack, attn: nn.Module, arch: Architecture, variant: str) -> None:
    qk, v = _qkv_scales(variant)
    if arch.qkv:
        fused = attn.get_submodule(arch.qkv)

        def split(_x, out):
            third = out.shape[-1] // 3
            if variant == "cp":
                q, k, val = out.split(third, dim=-1)
                return torch.cat([q.detach(), k.detach(), val], dim=-1)
            scale = torch.full((out.shape[-1],), qk, device=out.device)
            scale[2 * third:] = v
            return uniform_rule(out, scale)

        _hook_output(stack, fused, split)
        return
    for name, scale in ((arch.q, qk), (arch.k, qk), (arch.v, v)):
        proj = attn.get_submodule(name)
        if scale == 0.0:
            _hook_output(stack, proj, lambda _x, out: out.detach())
        elif scale != 1.0:
            _hook_output(stack, proj, partial(lambda s, _x, out: uniform_rule(out, s), scale))


def _patch_mlp(stack: ExitStack, block: nn.Module, arch: Architecture, seen: set[int]) -> None:
    act = block.get_submodule(arch.act)
    if id(act) in seen:
        raise ConfigError("An activation module is shared between blocks; LRP hooks would apply twice.")
    seen.add(id(act))
    if arch.gate:
        _hook_output(stack, act, lambda x, y: identity_rule(x, y, 0.5))
        _hook_output(stack, block.get_submodule(arch.up), lambda _x, out: uniform_rule(out, 0.5))
    else:
        _hook_output(stack, act, identity_rule)


@contextmanager
def lrp_composite(model: nn.Module, variant: str = "attnlrp") -> Iterator[nn.Module]:
    """Attach AttnLRP (or CP-LRP) rules to ``model`` for the duration of the block."""
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown LRP variant '{variant}'. Choose one of: {', '.join(VARIANTS)}.")
    arch = architecture(model)
    with ExitStack() as stack:
        seen: set[int] = set()
        for block in blocks(model):
            _patch_attention(stack, block.get_submodule(arch.attn), arch, variant)
            _patch_mlp(stack, block, arch, seen)
        for module in model.modules():
            if is_norm(module):
                replace_forward(stack, module, _norm_forward(module, arch.norm_kind))
        yield model
