"""An attribution checkpoint resumes only the attribution it was made for, and says what changed otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from safety_prune.checkpoint import Checkpoint, State, data_digest, model_digest, settings_digest
from safety_prune.errors import AttributionError

PRINT = {"model": "m", "data": "d", "settings": "s"}


def test_state_round_trips(tmp_path: Path) -> None:
    ck = Checkpoint(tmp_path / "attr.ckpt", PRINT)
    assert ck.load() is None  # nothing saved yet: start from batch 0
    ck.save(State(3, {"neuron": torch.arange(6.0).reshape(2, 3)}, {"tokens": 12.0}))
    got = ck.load()
    assert got is not None and got.next_batch == 3 and got.scalars == {"tokens": 12.0}
    assert torch.equal(got.tensors["neuron"], torch.arange(6.0).reshape(2, 3))
    ck.remove()
    assert ck.load() is None


def test_other_inputs_are_refused_naming_what_changed(tmp_path: Path) -> None:
    Checkpoint(tmp_path / "attr.ckpt", PRINT).save(State(1, {"x": torch.zeros(1)}, {}))
    with pytest.raises(AttributionError, match=r"different inputs: the samples .* changed since it was written"):
        Checkpoint(tmp_path / "attr.ckpt", PRINT | {"data": "other"}).load()
    (tmp_path / "attr.ckpt").write_bytes(b"not safetensors")
    with pytest.raises(AttributionError, match="unreadable"):
        Checkpoint(tmp_path / "attr.ckpt", PRINT).load()


def test_digests_follow_their_inputs() -> None:
    w = torch.ones(4, 4)
    assert model_digest("cfg", [("w", w)]) == model_digest("cfg", [("w", w.clone())])
    assert model_digest("cfg", [("w", w)]) != model_digest("cfg", [("w", w * 2)])
    assert model_digest("cfg", [("w", w)]) != model_digest("cfg2", [("w", w)])
    assert settings_digest({"a": 1, "b": 2}) == settings_digest({"b": 2, "a": 1})  # key order does not matter

    class _S:
        def __init__(self, ids: list[int], start: int) -> None:
            self.input_ids, self.target_start = ids, start

    assert data_digest([_S([1, 2], 1)]) != data_digest([_S([1, 2], 0)])
