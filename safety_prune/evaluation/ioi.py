"""Indirect object identification (IOI): a seeded sentence generator and its logit-difference metric.

"When Mary and John went to the store, John gave a drink to" -> " Mary". A model
that does the task puts more logit on the indirect object (IO) than on the
repeated subject (S). Names are kept only if they are one token for the model's
tokenizer (with a leading space), so both answers are single next tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from ..attribution import Sample
from ..errors import DataSourceError
from ..resources import resource_dir


@dataclass(frozen=True)
class IOIPrompt:
    text: str
    io_id: int
    s_id: int


def _single_token(tokenizer, name: str) -> int | None:
    ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def ioi_prompts(tokenizer, n: int, seed: int) -> list[IOIPrompt]:
    """``n`` IOI prompts from the authored templates; ABBA and BABA orders alternate."""
    spec = json.loads((resource_dir("data") / "ioi.json").read_text(encoding="utf-8"))
    names = {name: tok for name in spec["names"] if (tok := _single_token(tokenizer, name)) is not None}
    if len(names) < 2:
        raise DataSourceError("Fewer than two IOI names are single tokens for this tokenizer; the IOI task needs "
                              "single-token names (data/ioi.json).")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(sorted(names), 2)
        template = rng.choice(spec["templates"])
        io, s = (a, b) if i % 2 == 0 else (b, a)
        text = template.format(A=a, B=b, S=s, PLACE=rng.choice(spec["places"]), OBJECT=rng.choice(spec["objects"]))
        out.append(IOIPrompt(text, names[io], names[s]))
    return out


def ioi_samples(tokenizer, prompts: list[IOIPrompt], foil: bool = True) -> list[Sample]:
    """Attribution samples that explain the answer: logit(IO) - logit(S) (``foil``), or logit(IO) alone."""
    out = []
    for p in prompts:
        ids = tokenizer(p.text, add_special_tokens=True)["input_ids"]
        out.append(Sample((*ids, p.io_id), len(ids), foil=p.s_id if foil else None))
    return out


@torch.inference_mode()
def ioi_scores(model, tokenizer, prompts: list[IOIPrompt], batch_size: int = 32) -> dict[str, float]:
    """Mean logit difference logit(IO) - logit(S) at the last token, and accuracy (share with difference > 0)."""
    diffs = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        ids = [tokenizer(p.text, add_special_tokens=True)["input_ids"] for p in chunk]
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id or 0
        x = torch.tensor([r + [pad] * (width - len(r)) for r in ids], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], device=device)
        logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits.float()
        last = logits[torch.arange(len(chunk)), torch.tensor([len(r) - 1 for r in ids], device=device)]
        io = torch.tensor([p.io_id for p in chunk], device=device)
        s = torch.tensor([p.s_id for p in chunk], device=device)
        diffs += (last.gather(1, io[:, None]) - last.gather(1, s[:, None]))[:, 0].tolist()
    t = torch.tensor(diffs)
    return {"logit_diff": float(t.mean()), "accuracy": float((t > 0).float().mean()), "n": len(diffs)}
