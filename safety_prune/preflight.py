"""Pre-flight memory check: refuse an attribution run that cannot fit before any output is written.

Attribution (LRP, gradient) keeps every activation of a batch for the backward pass, so its peak memory
grows with batch size and sequence length and an out-of-memory kill would come minutes into a run. The
estimate below is deliberately simple and slightly generous; its job is to catch order-of-magnitude
mismatches (a 7B model with --batch-size 64 on a laptop), not to predict the peak to the megabyte.

For a batch of B sequences of T tokens, a model with L blocks, hidden size D, MLP width I, H attention
heads, vocabulary V and b bytes per parameter:

    weights      = bytes of all parameters
    accumulators = 4 * L * (I + H)                 float32 neuron and head relevance
                 + 2 * 4 * W  (weight units only)  a float32 score per block weight (W of them) plus the
                                                   per-batch product before it is summed in
    activations  = b * B * T * (L * (C_D*D + C_I*I + C_A*H*T) + C_V*V)
        C_D = 10  hidden-sized tensors a block keeps for backward (residual, norm inputs and outputs,
                  q, k, v, attention output, output projection) plus the relevance flowing back
        C_I = 4   MLP-width tensors (gate, up, activation, their product)
        C_A = 2   attention scores and probabilities (the maths kernel that LRP needs materialises them)
        C_V = 2   logits and their gradient
    estimate     = 1.2 * (weights + accumulators + activations)   (allocator slack and workspaces)

With ``--gradient-checkpointing`` a block keeps only its input and recomputes the rest during backward,
so the ``L * (...)`` term becomes ``L * D + (C_D*D + C_I*I + C_A*H*T)`` (every block input, plus one
block's activations). On CPU the estimate came within 15% of the measured peak of LRP on a 4-layer
llama (hidden 512, batch 4-8, 128-256 tokens, neuron/head and weight units).

``--max-memory`` bounds the whole estimate. Without it the part not yet resident (everything but the
weights, which are loaded by the time this runs) is compared with the memory the devices report free:
``psutil.virtual_memory().available`` for the CPU, ``torch.cuda.mem_get_info`` per GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import torch
from torch import nn

from .errors import ConfigError
from .families import blocks, geometry
from .sizes import human

log = logging.getLogger(__name__)

C_D, C_I, C_A, C_V = 10, 4, 2, 2
SLACK = 1.2


@dataclass(frozen=True)
class MemoryEstimate:
    """The terms of the estimate, in bytes, so the error can say which one dominates."""

    weights: int
    accumulators: int
    activations: int

    @property
    def total(self) -> int:
        return int(SLACK * (self.weights + self.accumulators + self.activations))

    @property
    def to_allocate(self) -> int:
        """What is still to be allocated once the weights are loaded."""
        return int(SLACK * (self.accumulators + self.activations))


def estimate_attribution_memory(model: nn.Module, batch_size: int, seq_len: int, units: Sequence[str], *,
                                gradient_checkpointing: bool = False) -> MemoryEstimate:
    """The module docstring's formula for one attribution batch of ``batch_size`` x ``seq_len`` tokens."""
    cfg = model.config
    geo = geometry(model)
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    vocab = model.get_output_embeddings().weight.shape[0]
    params = list(model.parameters())
    nbytes = params[0].element_size()
    weights = sum(p.numel() * p.element_size() for p in params)
    acc = 4 * geo.n_layers * (geo.n_neurons + geo.n_heads)
    if "weight" in units:
        acc += 2 * 4 * sum(p.numel() for p in blocks(model).parameters() if p.dim() == 2)
    block = C_D * hidden + C_I * geo.n_neurons + C_A * geo.n_heads * seq_len
    blocks_kept = geo.n_layers * hidden + block if gradient_checkpointing else geo.n_layers * block
    per_token = blocks_kept + C_V * vocab
    return MemoryEstimate(weights, acc, nbytes * batch_size * seq_len * per_token)


def available_memory(model: nn.Module) -> int:
    """Free memory on the devices holding ``model``: host RAM for CPU parameters, free memory per GPU."""
    devices = {p.device for p in model.parameters()}
    free = 0
    for dev in devices:
        if dev.type == "cuda":
            free += torch.cuda.mem_get_info(dev)[0]
        else:
            free += psutil.virtual_memory().available
    return free


def check_attribution_memory(model: nn.Module, batch_size: int, seq_len: int, units: Sequence[str],
                             limit_bytes: int | None, *, gradient_checkpointing: bool = False) -> MemoryEstimate:
    """Raise ConfigError when attribution would not fit in ``limit_bytes`` (else in the free memory)."""
    est = estimate_attribution_memory(model, batch_size, seq_len, units,
                                      gradient_checkpointing=gradient_checkpointing)
    parts = (f"weights {human(est.weights)} + relevance accumulators {human(est.accumulators)} + activations "
             f"for one batch of {batch_size} x {seq_len} tokens {human(est.activations)}, plus {SLACK - 1:.0%} "
             "slack")
    if limit_bytes is not None:
        need, have, what = est.total, limit_bytes, f"the --max-memory limit of {human(limit_bytes)}"
        fixed = est.weights + est.accumulators
    else:
        need, have, what = est.to_allocate, available_memory(model), "the memory free on this machine"
        fixed = est.accumulators
    log.info("attribution memory estimate: %s (%s); limit %s", human(need), parts, human(have))
    if need > have:
        fits = int((have / SLACK - fixed) // max(est.activations // batch_size, 1))
        batch = f"a smaller --batch-size (at most {fits} fits)" if fits >= 1 else "a smaller --batch-size"
        checkpointing = "" if gradient_checkpointing else "--gradient-checkpointing, "
        raise ConfigError(
            f"Attribution needs about {human(need)} ({parts}), more than {what} ({human(have)}). Use {batch}, "
            f"{checkpointing}--dtype bfloat16 to halve weights and activations, or spread the model over more or "
            "larger GPUs with --device-map auto" + ("." if limit_bytes is None else ", or raise --max-memory.")
        )
    return est


# --- the weights, from config.json alone (before anything is loaded) -----------------------------------------

def _first(cfg: dict, *keys: str) -> int | None:
    return next((cfg[k] for k in keys if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)), None)


def estimate_weight_params(cfg: dict) -> int | None:
    """A lower bound on the parameters a model config describes, or None when it lacks the sizes.

    Per block: q and o projections (``heads * head_dim`` wide), k and v (``kv_heads * head_dim``), and a
    two-matrix MLP (gated MLPs have three); plus one embedding matrix (an untied head doubles it). Norms and
    biases are left out, so a config is never refused for a size it does not have.
    """
    cfg = {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    vocab = _first(cfg, "vocab_size")
    if not layers or not hidden or not vocab or layers < 0 or hidden < 0 or vocab < 0:
        return None
    inter = _first(cfg, "intermediate_size", "ffn_dim", "n_inner") or 4 * hidden
    heads = _first(cfg, "num_attention_heads", "n_head") or 1
    kv = _first(cfg, "num_key_value_heads") or heads
    head_dim = _first(cfg, "head_dim") or max(hidden // max(heads, 1), 1)
    block = hidden * head_dim * 2 * (max(heads, 1) + max(kv, 1)) + 2 * hidden * max(inter, 0)
    return layers * block + vocab * hidden


def load_memory_available(device: torch.device, device_map: str | None) -> int:
    """Memory a model may be loaded into: host RAM (weights pass through it), plus every GPU with a device_map."""
    free = psutil.virtual_memory().available
    if device_map and torch.cuda.is_available():
        free += sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    elif device.type == "cuda":
        free = min(free, torch.cuda.mem_get_info(device)[0])
    return free
