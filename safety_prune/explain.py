"""What the removed units respond to: the tokens where each unit carried the most relevance, and how specific
its activation is to the behaviour.

A second, small LRP pass over a few samples of each set records per-position relevance for the chosen neurons
only, so a reviewer can read each unit as a short explanation ("fires on insults aimed at a person") rather
than a number. The same pass records each unit's activation at the positions each sample explains, for its
specificity: the AUROC of the unit's mean |activation| per sample, undesired against general samples (1: it
fires more on every undesired sample than on any general one; 0.5: no more than on general text). A unit whose
top tokens are newlines or sentence starts fires on structure and scores near 0.5.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import Sample, auroc, batches, collate, frozen
from .families import architecture, blocks
from .lrp import lrp_composite
from .results import unit_id

_Key = tuple[int, int]  # (layer, neuron)


def _top_positions(model: nn.Module, samples: Sequence[Sample], units: list[_Key], n_top: int, pad_id: int,
                   batch_size: int) -> tuple[dict[_Key, list[tuple[float, int, int]]], dict[_Key, Tensor]]:
    """Per unit, the ``n_top`` (relevance, sample, position) with the largest relevance, and each sample's mean
    |activation| over the positions it explains (the sink left out)."""
    arch = architecture(model)
    by_layer: dict[int, list[int]] = {}
    for layer, index in units:
        by_layer.setdefault(layer, []).append(index)
    best: dict[_Key, list[tuple[float, int, int]]] = {u: [] for u in units}
    acts: dict[int, list[Tensor]] = {layer: [] for layer in by_layer}
    state: dict[str, Any] = {"offset": 0, "mask": None, "explained": None}
    handles = []

    def tap(layer: int):
        idx = torch.tensor(by_layer[layer])

        def pre_hook(_m, args):
            a = args[0]
            if not a.requires_grad:
                return
            mask, explained = state["mask"], state["explained"]
            value = a.detach()  # a closure over ``a`` would keep each batch's graph alive (reference cycle)
            picked = value.reshape(*mask.shape, -1)[..., idx.to(a.device)].abs().float()
            acts[layer].append((torch.einsum("btu,bt->bu", picked, explained)
                                / explained.sum(1, keepdim=True).clamp_min(1)).cpu())

            def record(g):
                rel = (value * g).reshape(*mask.shape, -1)[..., idx.to(a.device)] * mask[..., None]
                for j, index in enumerate(by_layer[layer]):
                    flat = rel[..., j].flatten()
                    vals, pos = torch.topk(flat, min(n_top, flat.numel()))
                    for v, p in zip(vals.tolist(), pos.tolist(), strict=True):
                        if v == 0:  # no relevance there: padding past the sample's end (once shown as an empty
                            continue  # token), the sink, or a position where the unit is silent
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
                # position t explains token t + 1: the target mask shifted onto the positions, sink left out
                state["explained"] = torch.nn.functional.pad(b["target"].float(), (0, 1)) * state["mask"]
                logits = model(input_ids=b["ids"], attention_mask=b["attn"], use_cache=False).logits
                picked = logits[:, :-1].gather(-1, b["ids"][:, 1:, None])[..., 0]
                (picked * b["target"].to(picked.dtype)).sum().backward()
                state["offset"] += len(batch)
    finally:
        for h in handles:
            h.remove()
    per_unit = {}
    for layer, indices in by_layer.items():
        stacked = torch.cat(acts[layer]) if acts[layer] else torch.zeros(0, len(indices))
        per_unit |= {(layer, index): stacked[:, j] for j, index in enumerate(indices)}
    return {u: sorted(v, reverse=True) for u, v in best.items()}, per_unit


def specificity(pos: Tensor, neg: Tensor) -> float | None:
    """AUROC of ``pos`` against ``neg`` values (see ``attribution.auroc``); None without both."""
    return float(auroc(pos[:, None], neg[:, None])[0]) if len(pos) and len(neg) else None


def special_names(tokenizer) -> dict[int, str]:
    """Token id -> a name for each special token (BOS, EOS, PAD, UNK, else its own text), so the report can name
    it instead of printing a marker string that looks like text."""
    names: dict[int, list[str]] = {}
    for attr, name in (("bos_token_id", "BOS"), ("eos_token_id", "EOS"), ("pad_token_id", "PAD"),
                       ("unk_token_id", "UNK")):
        ident = getattr(tokenizer, attr, None)
        if ident is not None:
            names.setdefault(ident, []).append(name)
    for ident in getattr(tokenizer, "all_special_ids", []):
        names.setdefault(ident, [str(tokenizer.convert_ids_to_tokens(ident))])
    return {ident: "/".join(n) for ident, n in names.items()}


def unit_examples(model: nn.Module, tokenizer, units: list[tuple[int, int, float]],
                  sets: dict[str, Sequence[Sample]], *, n_top: int = 3, n_samples: int = 32,
                  batch_size: int = 8, context: int = 8) -> list[dict[str, Any]]:
    """For each (layer, neuron, r_diff), the top-relevance tokens with context in each sample set (a special
    token named under ``special``) and the unit's ``specificity`` (module docstring; None without both the
    undesired and the general set)."""
    keys = [(layer, index) for layer, index, _ in units]
    pad = tokenizer.pad_token_id or 0
    special = special_names(tokenizer)
    found = {name: (list(s[:n_samples]), *_top_positions(model, list(s[:n_samples]), keys, n_top, pad, batch_size))
             for name, s in sets.items()}
    out = []
    for layer, index, r_diff in units:
        both = "undesired" in found and "general" in found
        row: dict[str, Any] = {
            "unit": unit_id("neuron", layer, index), "layer": layer, "index": index, "r_diff": r_diff,
            "specificity": specificity(found["undesired"][2][layer, index], found["general"][2][layer, index])
            if both else None}
        for name, (samples, best, _) in found.items():
            row[name] = []
            for value, s, pos in best[layer, index]:
                ids = samples[s].input_ids
                item = {"left": tokenizer.decode(ids[max(0, pos - context):pos]),
                        "token": tokenizer.decode(ids[pos:pos + 1]),
                        "right": tokenizer.decode(ids[pos + 1:pos + 1 + context // 2]),
                        "relevance": value}
                if ids[pos] in special:
                    item["special"] = special[ids[pos]]
                row[name].append(item)
        out.append(row)
    return out


def heatmap(diff: torch.Tensor, bins: int = 64) -> list[list[float]]:
    """[layers][bins]: summed negative R_diff per layer and block of consecutive neurons."""
    neg = diff.clamp(max=0).abs()
    edges = torch.linspace(0, diff.shape[1], bins + 1).round().long()
    return [[float(neg[layer, edges[b]:edges[b + 1]].sum()) for b in range(bins)] for layer in range(diff.shape[0])]
