"""Tiny models of every supported family, built from configs, and a tokenizer trained in-process."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

FAMILIES = ("llama", "qwen2", "gemma3", "opt", "gpt2")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A river flows through the old town and past the mill.",
    "Scientists measured the temperature of the lake every morning.",
    "You are a stupid idiot and I hate you.",
    "The committee approved the new budget for the library.",
    "Birds sing in the trees while children play in the park.",
    "Mary gave the book to John because John asked for it.",
    "What the hell is wrong with you, damn fool.",
] * 4


@cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(family: str, hidden: int = 32, layers: int = 2, bias: bool = True):
    vocab = len(tiny_tokenizer())
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=False, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True, **common)
    if family == "gemma3":
        return Gemma3TextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                max_position_embeddings=256, sliding_window=8,
                                layer_types=["sliding_attention", "full_attention"][:layers] * max(1, layers // 2),
                                **common)
    if family == "opt":
        return OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=hidden,
                         enable_bias=bias, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **common)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, zero_bias: bool = False,
               attn: str = "eager", **kw):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw), attn_implementation=attn)
    model = model.to(dtype).eval()
    if zero_bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias") and "norm" not in name and "ln_" not in name:
                    p.zero_()
    return model


def save_tiny(family: str, path, seed: int = 0) -> None:
    """Write a tiny model plus tokenizer as a local HF folder."""
    tiny_model(family, seed=seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)


def write_tiny_suite(folder, *, n_prompts: int = 24, extra: str = "") -> str:
    """A small probe suite on local files, sized for tiny models; returns the YAML path."""
    import random
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = " ".join(CORPUS).replace(".", "").replace(",", "").split()
    prompts = [f"Prompt {i}: " + " ".join(rng.choice(words) for _ in range(6)) for i in range(n_prompts)]
    docs = [" ".join(rng.choice(CORPUS) for _ in range(3)) for _ in range(80)]
    (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (folder / "general.txt").write_text("\n".join(docs) + "\n")
    path = folder / "tiny_suite.yaml"
    path.write_text(f"""name: tiny
description: tiny test suite
undesired:
  source: {{path: prompts.txt}}
split: {{eval_fraction: 0.4, validation_fraction: 0.2, seed: 0}}
general:
  source: {{path: general.txt}}
  validation_words: 300
  test_words: 300
scorer: {{name: profanity, threshold: 0.1, validate: false}}
generation: {{max_new_tokens: 6, do_sample: false, num_samples: 1, batch_size: 8}}
perplexity: {{max_length: 64, stride: 64, min_tokens: 200}}
max_prompt_tokens: 32
capability: false  # 30-word documents give no last-word passages; tests/test_capability.py measures capability
reference: {{samples_per_prompt: 4, undesired_min: 1, undesired_max: 6, target: continuation, benign_n: 6,
            general_n: 8}}
{extra}""")
    return str(path)


def tree_hashes(*folders, mtimes: bool = False) -> dict[str, str]:
    """sha256 of every file below ``folders`` (a changed, added or removed file shows); with ``mtimes`` also
    each folder's modification time (a temp made and removed inside shows)."""
    import hashlib
    from pathlib import Path

    folders = [Path(f) for f in folders]
    files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
             for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}
    if not mtimes:
        return files
    return files | {f"mtime {p}": str(p.stat().st_mtime_ns)
                    for folder in folders for p in [folder, *sorted(folder.rglob("*"))] if p.is_dir()}


def tiny_variant(tiny_setup, tmp_path: Path, **config) -> Path:
    """A copy of the tiny model with ``config`` merged into its config.json."""
    dst = tmp_path / "variant"
    shutil.copytree(tiny_setup[1], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst
