"""Detoxify (the field's standard toxicity classifier), loaded safely and fully offline when given files.

The ``detoxify`` package unpickles checkpoints (``weights_only=False``) and fetches config and tokenizer
from the hub. Here the checkpoint is loaded with ``weights_only=True`` and the model is built from a local
``config_dir`` when one is given, so the package itself is not needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..errors import AssetError, ConfigError
from .base import Scorer

log = logging.getLogger(__name__)

_URL = "https://github.com/unitaryai/detoxify/releases/download/"
MODEL_URLS = {  # as in detoxify 0.5.4
    "original": _URL + "v0.1-alpha/toxic_original-c1212f89.ckpt",
    "unbiased": _URL + "v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
    "multilingual": _URL + "v0.4-alpha/multilingual_debiased-0b549669.ckpt",
    "original-small": _URL + "v0.1.2/original-albert-0e1d6498.ckpt",
    "unbiased-small": _URL + "v0.1.2/unbiased-albert-c8519128.ckpt",
}
_RENAME = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


def _download(model_type: str) -> Path:
    """Fetch a released checkpoint into the torch hub cache (download only; loading stays weights-only)."""
    if model_type not in MODEL_URLS:
        raise ConfigError(f"Unknown detoxify model_type {model_type!r}. Available: {', '.join(MODEL_URLS)}.")
    url = MODEL_URLS[model_type]
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path))
        except Exception as exc:
            raise AssetError(
                f"Could not download the detoxify {model_type!r} checkpoint from {url} ({exc}). "
                "Offline, download it elsewhere and pass checkpoint=PATH and config_dir=FOLDER."
            ) from exc
    return path


def _load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise AssetError(f"Detoxify checkpoint {path} does not exist. Pass the path of a .ckpt file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # keep torch's reason, drop its advice to unpickle anyway
        reason = str(exc).split("WeightsUnpickler error: ")[-1].split(" was not an allowed")[0].split("\n")[0]
        raise AssetError(
            f"Detoxify checkpoint {path} cannot be loaded with weights_only=True ({reason}). Pickled objects "
            "are never unpickled here; re-save it as {'config': plain dicts, 'state_dict': tensors}."
        ) from exc
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise AssetError(f"Detoxify checkpoint {path} lacks 'config' and 'state_dict' entries.")
    return ckpt


class DetoxifyScorer(Scorer):
    name = "detoxify"
    description = "Detoxify: a BERT-family classifier fine-tuned on the Jigsaw toxic comment data."
    limits = (
        "A fine-tuned transformer trained on Wikipedia-talk / Civil Comments data, not a human judge. "
        "It over-scores identity mentions (the 'unbiased' model reduces but does not remove this), misses "
        "implicit or coded toxicity, is English-only unless the 'multilingual' model is used, and treats "
        "broken or looping text as clean, so read it next to the fluency metrics."
    )

    def __init__(self, model_type: str = "original", checkpoint: str | None = None,
                 config_dir: str | None = None, device: str = "cpu", attribute: str = "toxicity",
                 batch_size: int = 32) -> None:
        path = Path(checkpoint) if checkpoint is not None else _download(model_type)
        ckpt = _load_checkpoint(path)
        try:
            arch = ckpt["config"]["arch"]["args"]
            hub_id, num_classes = arch["model_type"], int(arch["num_classes"])
        except (KeyError, TypeError) as exc:
            raise AssetError(f"Detoxify checkpoint {path}: config lacks arch.args.{exc}.") from exc
        classes = ckpt["config"].get("dataset", {}).get("args", {}).get("classes")
        self.class_names = [_RENAME.get(c, c) for c in classes] if classes else ["toxicity"]
        if attribute not in self.class_names:
            raise ConfigError(
                f"Detoxify attribute {attribute!r} is not in checkpoint {path}. Available: "
                f"{', '.join(self.class_names)}."
            )
        self.column = self.class_names.index(attribute)
        source, local = (str(config_dir), True) if config_dir is not None else (hub_id, False)
        try:
            config = AutoConfig.from_pretrained(source, num_labels=num_classes, local_files_only=local)
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        except Exception as exc:
            where = (f"config_dir {config_dir} (needs config.json and tokenizer files)" if local else
                     f"hub model {hub_id!r} named by checkpoint {path}. Offline, pass config_dir=FOLDER "
                     f"holding {hub_id}'s config.json and tokenizer files")
            raise AssetError(f"Could not load the detoxify config/tokenizer from {where} ({exc}).") from exc
        self.model = AutoModelForSequenceClassification.from_config(config)
        missing, unexpected = self.model.load_state_dict(ckpt["state_dict"], strict=False)
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]  # buffer in old checkpoints
        if missing or unexpected:
            raise AssetError(
                f"Detoxify checkpoint {path} does not fit the {type(self.model).__name__} built from "
                f"{source}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                f"Check that config_dir matches {hub_id!r}."
            )
        self.model.to(device).eval()
        self.device = torch.device(device)
        positions = getattr(config, "max_position_embeddings", 512)
        self.max_length = min(self.tokenizer.model_max_length, positions)
        self.attribute, self.batch_size = attribute, batch_size
        log.info("detoxify: %s from %s, attribute %s (column %d)", path, source, attribute, self.column)

    def _score_batch(self, texts: list[str]) -> list[float]:
        enc = self.tokenizer(texts, return_tensors="pt", truncation=True, padding=True,
                             max_length=self.max_length)
        with torch.inference_mode():
            logits = self.model(**enc.to(self.device)).logits
        return torch.sigmoid(logits[:, self.column].float()).tolist()


SCORER = DetoxifyScorer  # what safety_prune.scorers registers under this file's name
