"""What the removed units respond to: the tokens where each unit carried the most relevance.

A second, small LRP pass over a few samples of each set records per-position
relevance for the chosen neurons only, so a reviewer can read each unit as a
short explanation ("fires on insults aimed at a person") rather than a number.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .attribution import Sample, batches, collate, frozen
from .families import architecture, blocks
from .lrp import lrp_composite
from .results import unit_id


def _top_positions(model: nn.Module, samples: Sequence[Sample], units: list[tuple[int, int]], n_top: int,
                   pad_id: int, batch_size: int) -> dict[tuple[int, int], list[tuple[float, int, int]]]:
    """Per unit, the ``n_top`` (relevance, sample, position) with the largest relevance."""
    arch = architecture(model)
    by_layer: dict[int, list[int]] = {}
    for layer, index in units:
        by_layer.setdefault(layer, []).append(index)
    best: dict[tuple[int, int], list[tuple[float, int, int]]] = {u: [] for u in units}
    state = {"offset": 0, "mask": None}
    handles = []

    def tap(layer: int):
        idx = torch.tensor(by_layer[layer])

        def pre_hook(_m, args):
            a = args[0]
            if not a.requires_grad:
                return
            value = a.detach()  # a closure over ``a`` would keep each batch's graph alive (reference cycle)

            def record(g):
                mask = state["mask"]
                rel = (value * g).reshape(*mask.shape, -1)[..., idx.to(a.device)] * mask[..., None]
                for j, index in enumerate(by_layer[layer]):
                    flat = rel[..., j].flatten()
                    vals, pos = torch.topk(flat, min(n_top, flat.numel()))
                    for v, p in zip(vals.tolist(), pos.tolist(), strict=True):
                        item = (v, state["offset"] + p // mask.shape[1], p % mask.shape[1])
                        heap = best[layer, index]
                        (heapq.heappush if len(heap) < n_top else heapq.heappushpop)(heap, item)
            a.register_hook(record)
        return pre_hook

    def needs_grad(_m, args, kwargs):  # parameters are frozen, so the graph starts at the embeddings
        (args[0] if args else kwargs["hidden_states"]).requires_grad_(True)

    handles.append(blocks(model)[0].register_forward_pre_hook(needs_grad, with_kwargs=True))
    for layer in by_layer:
        handles.append(blocks(model)[layer].get_submodule(arch.down).register_forward_pre_hook(tap(layer)))
    device = next(model.parameters()).device
    try:
        with frozen(model), lrp_composite(model):
            for batch in batches(samples, batch_size):
                b = collate(batch, pad_id, 1, device)
                state["mask"] = b["units"].float()
                logits = model(input_ids=b["ids"], attention_mask=b["attn"], use_cache=False).logits
                picked = logits[:, :-1].gather(-1, b["ids"][:, 1:, None])[..., 0]
                (picked * b["target"].to(picked.dtype)).sum().backward()
                state["offset"] += len(batch)
    finally:
        for h in handles:
            h.remove()
    return {u: sorted(v, reverse=True) for u, v in best.items()}


def unit_examples(model: nn.Module, tokenizer, units: list[tuple[int, int, float]],
                  sets: dict[str, Sequence[Sample]], *, n_top: int = 3, n_samples: int = 32,
                  batch_size: int = 8, context: int = 8) -> list[dict[str, Any]]:
    """For each (layer, neuron, r_diff), the top-relevance tokens with context in each sample set."""
    keys = [(layer, index) for layer, index, _ in units]
    pad = tokenizer.pad_token_id or 0
    found = {name: (list(s[:n_samples]), _top_positions(model, list(s[:n_samples]), keys, n_top, pad, batch_size))
             for name, s in sets.items()}
    out = []
    for layer, index, r_diff in units:
        row: dict[str, Any] = {"unit": unit_id("neuron", layer, index), "layer": layer, "index": index,
                               "r_diff": r_diff}
        for name, (samples, best) in found.items():
            row[name] = []
            for value, s, pos in best[layer, index]:
                ids = samples[s].input_ids
                row[name].append({
                    "left": tokenizer.decode(ids[max(0, pos - context):pos]),
                    "token": tokenizer.decode(ids[pos:pos + 1]),
                    "right": tokenizer.decode(ids[pos + 1:pos + 1 + context // 2]),
                    "relevance": value,
                })
        out.append(row)
    return out


def heatmap(diff: torch.Tensor, bins: int = 64) -> list[list[float]]:
    """[layers][bins]: summed negative R_diff per layer and block of consecutive neurons."""
    neg = diff.clamp(max=0).abs()
    edges = torch.linspace(0, diff.shape[1], bins + 1).round().long()
    return [[float(neg[layer, edges[b]:edges[b + 1]].sum()) for b in range(bins)] for layer in range(diff.shape[0])]
