"""Resumable attribution: partial sums on disk every N batches, refused when the inputs changed.

A checkpoint is one safetensors file (the partial accumulators) whose metadata
holds the index of the next batch, the scalar sums and a fingerprint of what
produced them: the model (config plus sampled bytes of every parameter), the
samples' token ids, and the settings that change the sums. Resuming replays
the same batches in the same order into the restored float32 sums, so the
result is bitwise that of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import AttributionError
from .io import atomic_path

log = logging.getLogger(__name__)

FORMAT = "safety_prune.attribution-checkpoint/1"
_SAMPLED = 1 << 16  # elements hashed per parameter: enough to tell models apart, cheap for 7B-sized ones


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    if flat.numel() > _SAMPLED:
        # integer spacing: float32 linspace rounds the last index of a large tensor past its end
        flat = flat[torch.arange(_SAMPLED, device=flat.device) * (flat.numel() - 1) // (_SAMPLED - 1)]
    return flat.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def model_digest(config: str, params: Iterable[tuple[str, Tensor]]) -> str:
    """Config plus name, shape, dtype and evenly spaced values of every parameter."""
    h = hashlib.sha256(config.encode())
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(_tensor_bytes(p))
    return h.hexdigest()


def data_digest(samples: Sequence[Any]) -> str:
    """Token ids, target starts, foils and token classes (when set), in order."""
    rows = [[list(s.input_ids), s.target_start, *([s.foil] if getattr(s, "foil", None) is not None else []),
             *([list(s.classes)] if getattr(s, "classes", ()) else [])] for s in samples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


_WHAT = {"model": "the model (weights, dtype or config)", "data": "the samples (prompts or generations)",
         "settings": "the attribution settings (method, units, variant, sink positions, absolute, batch size or "
                     "number of processes)"}


@dataclass
class State:
    """Everything an interrupted attribution needs to continue with batch ``next_batch``."""

    next_batch: int
    tensors: dict[str, Tensor]
    scalars: dict[str, float]


class Checkpoint:
    """One attribution's checkpoint file, bound to the fingerprint of its inputs."""

    def __init__(self, path: str | Path, fingerprint: dict[str, str]):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> State | None:
        """The saved state, or None when there is none; refuses a checkpoint made from other inputs."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), "pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(str(self.path))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            saved = json.loads(meta["fingerprint"])
            state = State(int(meta["next_batch"]), tensors, json.loads(meta["scalars"]))
        except (OSError, SafetensorError, ValueError, KeyError) as exc:
            raise AttributionError(
                f"The attribution checkpoint {self.path} is unreadable ({exc}). Delete it to start the "
                "attribution over."
            ) from exc
        differ = [_WHAT[k] for k in _WHAT if saved.get(k) != self.fingerprint[k]]
        if differ:
            raise AttributionError(
                f"The attribution checkpoint {self.path} was made from different inputs: {' and '.join(differ)} "
                "changed since it was written. Delete it to start this attribution over, or use another run "
                "directory (--out) for the new inputs."
            )
        log.info("Resuming attribution from %s at batch %d", self.path, state.next_batch)
        return state

    def save(self, state: State) -> None:
        meta = {"format": FORMAT, "fingerprint": json.dumps(self.fingerprint), "next_batch": str(state.next_batch),
                "scalars": json.dumps(state.scalars)}
        with atomic_path(self.path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.tensors.items()}, str(tmp), metadata=meta)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
