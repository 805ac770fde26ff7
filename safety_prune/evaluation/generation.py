"""Batched, deterministic continuation sampling; keeps token ids because attribution needs them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataSourceError


@dataclass
class Generation:
    """One continuation of one prompt. ``prompt_text`` is what the model saw (after any chat template)."""

    prompt_text: str
    prompt_ids: list[int]
    continuation_ids: list[int]
    continuation: str


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a continuation: the tokenizer's eos plus the model's (which may be a list)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    ids.discard(None)
    return ids


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool) -> tuple[list[str], list[list[int]]]:
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"chat_template=True but tokenizer {type(tokenizer).__name__} "
                f"({getattr(tokenizer, 'name_or_path', '')!r}) has no chat template. "
                "Set chat_template: false in the probe suite, or use a tokenizer that ships one."
            )
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True)
            for p in prompts
        ]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        texts = list(prompts)
        ids = [tokenizer(t)["input_ids"] for t in texts]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for i, row in enumerate(ids):
        if not row:  # an empty prompt still needs one token to condition on
            if start is None:
                raise DataSourceError(
                    f"Prompt {i} ({prompts[i]!r}) encodes to no tokens and the tokenizer has no bos/eos "
                    "token to start from. Remove empty prompts from the prompt set."
                )
            ids[i] = [start]
    return texts, ids


def generate_detailed(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 25,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    chat_template: bool = False,
    device: str | torch.device | None = None,
) -> list[list[Generation]]:
    """Return ``num_samples`` continuations per prompt, in input order.

    Prompts are sorted by length into batches (less padding) and left-padded by hand, so the
    caller's tokenizer is never modified. Each batch seeds its own RNG with ``seed + batch_index``
    inside ``fork_rng``: results depend only on the inputs and the seed, and the global RNG is untouched.
    """
    if max_new_tokens < 1 or batch_size < 1 or num_samples < 1:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens}, batch_size={batch_size}, num_samples={num_samples}: "
            "each must be at least 1."
        )
    if num_samples > 1 and not do_sample:
        raise ConfigError(
            f"num_samples={num_samples} with do_sample=False would repeat one greedy continuation. "
            "Set do_sample: true, or num_samples: 1."
        )
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise ConfigError(
            f"temperature={temperature}, top_p={top_p}: sampling needs temperature > 0 and 0 < top_p <= 1."
        )
    device = torch.device(device) if device is not None else model.device
    texts, ids = encode_prompts(tokenizer, prompts, chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first.")
    eos = _eos_ids(model, tokenizer)
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}

    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[list[Generation]] = [[] for _ in prompts]
    fork_devices = [device] if device.type == "cuda" else []
    for b, batch in enumerate(tqdm(batches, desc="generate", unit="batch", disable=len(batches) < 2)):
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(ids[i])) + ids[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch], device=device)
        with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
            torch.manual_seed(seed + b)
            seqs = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                num_return_sequences=num_samples, pad_token_id=pad_id, eos_token_id=sorted(eos) or None,
                **sampling,
            )
        new = seqs[:, width:].tolist()
        for row, cont in enumerate(new):
            i = batch[row // num_samples]
            cut = next((j for j, t in enumerate(cont) if t in eos), len(cont))
            cont = cont[:cut]
            text = tokenizer.decode(cont, skip_special_tokens=True)
            out[i].append(Generation(texts[i], list(ids[i]), cont, text))
    return out


def generate(model, tokenizer, prompts: list[str], **options) -> list[list[str]]:
    """The continuation strings of :func:`generate_detailed` (same options), ``num_samples`` per prompt."""
    gens = generate_detailed(model, tokenizer, prompts, **options)
    return [[g.continuation for g in row] for row in gens]
