"""AttnLRP rules as autograd Functions (Achtibat et al., 2024).

Relevance of a tensor ``x`` is read off as ``x * grad`` (gradient x input). Each
rule below changes only the backward pass so that this product equals the LRP
relevance the rule prescribes; forward values are never changed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

EPS = 1e-12


def stabilized(x: Tensor, eps: float = EPS) -> Tensor:
    """Epsilon-stabilised denominator ``x + eps * sign(x)``; sign(+0) = +1, sign(-0) = -1, never zero."""
    return x + x.new_tensor(eps).copysign(x)


def stabilized_div(num: Tensor, den: Tensor, eps: float = EPS) -> Tensor:
    """The epsilon rule's division ``num / (den + eps * sign(den))``; never divides by zero."""
    return num / stabilized(den, eps)


class IdentityRule(Function):
    """Identity rule for an elementwise nonlinearity ``y = f(x)`` (SiLU, GELU, ReLU).

    Relevance passes through unchanged, ``R_x = R_y``. In gradient x input form
    the backward multiplies the incoming gradient by ``f(x) / x`` instead of ``f'(x)``.
    ``scale`` folds a following uniform rule into the same backward (``0.5`` for
    the activated factor of a gated MLP), saving one pass over the activations.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
        ctx.save_for_backward(x, y)
        ctx.scale = scale
        return y.view_as(y)  # a view, not a copy: y's storage is shared with what autograd saves anyway

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y = ctx.saved_tensors
        ratio = stabilized(x)  # fresh tensor, so the rest is in place (no further temporaries)
        torch.div(y, ratio, out=ratio)
        if ctx.scale != 1.0:
            ratio.mul_(ctx.scale)
        return ratio.mul_(grad).to(grad.dtype), None, None


class UniformRule(Function):
    """Uniform rule for an n-ary product (``a * b``, ``Q K^T``, ``A V``): each factor gets ``R / n``.

    For a product, ``x_i * dy/dx_i = y`` for every factor, so splitting relevance
    uniformly means scaling the gradient into each factor by ``1/n``. Applied to a
    factor's tensor before the product; ``scale`` may be a vector over the last
    dimension (GPT-2's fused q|k|v projection).
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor | float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scale = ctx.scale
        if isinstance(scale, Tensor):
            scale = scale.to(grad.dtype)
        return grad * scale, None


def identity_rule(x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    return IdentityRule.apply(x, y, scale)


def uniform_rule(x: Tensor, scale: Tensor | float) -> Tensor:
    return UniformRule.apply(x, scale)


def rms_norm(x: Tensor, weight: Tensor, eps: float, offset: float = 0.0, cast_before_weight: bool = True
             ) -> Tensor:
    """RMSNorm with the normaliser detached (identity rule): linear in ``x`` for the backward.

    ``offset=1`` gives Gemma's ``(1 + w)`` scaling; ``cast_before_weight`` follows
    Llama's order of casting back to the input dtype before the weight multiply.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
    if cast_before_weight:
        return weight * (xf * inv).to(x.dtype)
    return ((xf * inv) * (offset + weight.to(xf.dtype))).type_as(x)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm with the standard deviation detached; the centring stays linear."""
    centred = x - x.mean(-1, keepdim=True)
    inv = torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps).detach()
    out = centred * inv
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
