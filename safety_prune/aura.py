"""AurA (Suau et al. 2024, "Whispering Experts"): dampen every MLP neuron in proportion to how well it tells
flagged from unflagged text.

Per neuron, the AUROC of its activation pooled over each continuation (mean or max) separates the flagged
reference continuations from the unflagged ones; a neuron with AUROC > 0.5 gets gain
``1 - Gini = 1 - 2 (AUROC - 0.5)``, every other neuron keeps gain 1. The neuron's activation is the input of the
MLP down projection, the unit the rest of the tool prunes. Nothing is chosen on data: the gains follow from the
AUROCs alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attribution import Relevance, Sample, aura_auroc, batches, collate, frozen
from .errors import ConfigError, DataSourceError
from .families import architecture, blocks
from .methods import POOLINGS


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"--pooling {pooling} is unknown. Choose one of: {', '.join(POOLINGS)} (how a neuron's "
                          "activations over a continuation become one number per continuation).")


def pooled_activations(model: nn.Module, samples: Sequence[Sample], pooling: str, *, pad_token_id: int = 0,
                       batch_size: int = 8, desc: str = "aura activations") -> Tensor:
    """``[samples, layers, neurons]``: each MLP neuron's activation pooled over a sample's continuation.

    The positions pooled are those that produce the continuation's tokens (each predicts one of them: from the
    last prompt token up to the continuation's second-to-last token), the positions attribution explains.
    """
    check_pooling(pooling)
    if not samples:
        raise DataSourceError(f"No samples for {desc}: AurA needs flagged and unflagged continuations.")
    arch, layers = architecture(model), blocks(model)
    device = next(model.parameters()).device
    found: list[Tensor] = []
    current: dict[int, Tensor] = {}
    positions: dict[str, Tensor] = {}

    def hook(layer: int):
        def pre(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            m = positions["mask"]
            a = args[0].detach().reshape(*m.shape, -1)
            a = a if a.dtype == torch.float64 else a.float()  # bf16/fp16 pooled in float32
            if pooling == "mean":
                m = m.to(a.dtype)
                current[layer] = (a * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            else:
                current[layer] = a.masked_fill(~m[..., None].bool(), float("-inf")).amax(1)
        return pre

    handles = [block.get_submodule(arch.down).register_forward_pre_hook(hook(i)) for i, block in enumerate(layers)]
    try:
        with frozen(model), torch.no_grad():
            for batch in tqdm(list(batches(list(samples), batch_size)), desc=desc, leave=False):
                b = collate(batch, pad_token_id, 0, device)
                # target[t] marks position t as predicting an explained (continuation) token
                positions["mask"] = torch.cat([b["target"], torch.zeros_like(b["target"][:, :1])], 1).double()
                model(input_ids=b["ids"], attention_mask=b["attn"], use_cache=False)
                found.append(torch.stack([current[i] for i in range(len(layers))], 1).cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(found)


def auroc(flagged: Tensor, unflagged: Tensor) -> Tensor:
    """``[layers, neurons]`` AUROC of the pooled activations, flagged (positive) vs unflagged."""
    def per_sample(x: Tensor) -> Relevance:
        return Relevance("activation", {}, len(x), per_sample={"neuron": x})

    return aura_auroc(per_sample(unflagged), per_sample(flagged))


def gains(auc: Tensor) -> Tensor:
    """AurA's gain per neuron: ``1 - 2 (AUROC - 0.5)`` above 0.5, else 1."""
    auc = auc.double()
    return torch.where(auc > 0.5, 1 - 2 * (auc - 0.5), torch.ones_like(auc))
