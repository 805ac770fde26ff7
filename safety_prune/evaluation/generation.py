"""Batched, deterministic continuation sampling; keeps token ids because attribution needs them.

Also the batch policy shared with perplexity: on a GPU the rows per batch come from its free memory (a fixed 16
left an H200 idle), or from an explicit ``--generation-batch``; on CPU the caller's own batch is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataSourceError

# Rows per generation/perplexity batch: "auto" (sized by the device) or a number the user gave.
_BATCH: ContextVar[int | str] = ContextVar("generation_batch", default="auto")
MAX_AUTO_BATCH = 1024  # beyond this a batch only adds padding, and rows of one length are few
FREE_SHARE = 0.5  # of the device's free memory that an automatic batch may plan to use


def check_batch(value: int | str) -> int | str:
    """``auto`` or a whole number of rows >= 1 (a string from the command line is converted)."""
    if value == "auto":
        return value
    try:
        rows = int(value)
    except (TypeError, ValueError):
        rows = 0
    if rows < 1 or str(rows) != str(value).strip():
        raise ConfigError(f"--generation-batch {value!r} must be auto or a whole number of rows >= 1, e.g. 64.")
    return rows


@contextmanager
def generation_batch(value: int | str) -> Iterator[None]:
    """Within the block, generation and perplexity batches follow ``value`` (``auto`` or a row count)."""
    token = _BATCH.set(check_batch(value))
    try:
        yield
    finally:
        _BATCH.reset(token)


def bytes_per_row(model, tokens: int, logit_positions: int) -> int:
    """A generous estimate of one row's memory at inference: key/value cache and one layer's activations per
    token, eager attention scores, and float32 logits (three copies: logits, their float cast, log-softmax)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1)
    vocab = getattr(cfg, "vocab_size", 0)
    elem = next(model.parameters()).element_size()
    per_token = 2 * layers * kv_heads * head_dim * elem + 2 * (4 * hidden + 3 * inner) * elem
    return tokens * per_token + heads * tokens * tokens * elem + 3 * 4 * vocab * logit_positions


def rows_per_batch(model, device: torch.device, requested: int, rows: int, tokens: int, logit_positions: int,
                   free_bytes: int | None = None) -> int:
    """The batch to run: the explicit ``generation_batch`` if one is set; on CUDA, as many of the ``rows`` as
    ``FREE_SHARE`` of the free memory holds (never fewer than ``requested``, at most ``MAX_AUTO_BATCH``);
    elsewhere ``requested``. ``free_bytes`` stands in for the device's free memory (tests)."""
    policy = _BATCH.get()
    if policy != "auto":
        return int(policy)
    if free_bytes is None:
        if device.type != "cuda":
            return requested
        free_bytes = torch.cuda.mem_get_info(device)[0]
    fit = int(FREE_SHARE * free_bytes) // max(1, bytes_per_row(model, tokens, logit_positions))
    return max(requested, min(fit, rows, MAX_AUTO_BATCH))


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
    ``batch_size`` is the batch on CPU; on a GPU ``rows_per_batch`` sizes it (greedy continuations are the same
    at any batch size; sampled ones depend on it through the per-batch seed).
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
    longest = max(map(len, ids), default=0) + max_new_tokens
    rows = rows_per_batch(model, device, batch_size * num_samples, len(prompts) * num_samples, longest, longest)
    batch_size = max(1, rows // num_samples)  # each prompt is num_samples rows
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
