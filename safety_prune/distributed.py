"""Data-parallel attribution with ``torchrun``: one code path, sharded samples, summed accumulators.

Design: every rank runs the *whole* job deterministically (same seed, same
generations, same sample lists); only :func:`safety_prune.attribution.attribute`
is sharded. Each rank attributes a contiguous slice of the samples, the
accumulators are summed with ``all_reduce`` so that every rank holds the full
result, and only rank 0 writes files. Contiguous slices keep the activation
baseline's per-sample values in sample order when they are gathered, and the
result differs from a one-process run only by float rounding.

Without ``torch.distributed`` initialised, every helper here is the identity
(one rank of one), so single-process callers pay nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import AttributionError, ConfigError

log = logging.getLogger(__name__)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main_process() -> bool:
    """Only rank 0 writes run files; the other ranks compute the same results and discard their copies."""
    return rank() == 0


@contextmanager
def session(device: str | None, device_map: str | None = None) -> Iterator[None]:
    """Initialise a process group when launched by torchrun (``WORLD_SIZE`` > 1); tear it down afterwards.

    NCCL for CUDA devices (each rank takes GPU ``LOCAL_RANK``), gloo on CPU.
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1 or active():
        yield
        return
    if device_map:
        raise ConfigError(f"--device-map {device_map} spreads one model over all GPUs, so it cannot be combined "
                          f"with torchrun's {n} processes. Use one of them: torchrun when a model fits one GPU, "
                          "--device-map without torchrun when it does not.")
    if (device or "").startswith("cuda:"):
        raise ConfigError(f"--device {device} would put all {n} torchrun processes on one GPU. Use --device cuda: "
                          "each process then takes the GPU of its LOCAL_RANK.")
    cuda = (device or "cpu").startswith("cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda and torch.cuda.is_available() else "gloo")
    log.info("rank %d of %d (%s)", rank(), world_size(), dist.get_backend())
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_bounds(n: int, what: str) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` of every rank over ``n`` samples; sizes differ by at most one."""
    w = world_size()
    if w > n:
        raise ConfigError(f"--nproc_per_node {w} is larger than the {n} samples of {what}; use at most {n} "
                          "processes.")
    base, extra = divmod(n, w)
    bounds, start = [], 0
    for r in range(w):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (through the backend's device when ``t`` lives elsewhere)."""
    if not active():
        return t
    dev = _comm_device()
    if t.device == dev:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    else:
        moved = t.to(dev)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        t.copy_(moved)
    return t


def all_reduce_floats(values: list[float]) -> list[float]:
    """Python floats summed over ranks, in float64."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    return all_reduce_sum_(t).tolist()


def gather_rows(t: Tensor, bounds: list[tuple[int, int]]) -> Tensor:
    """Concatenate every rank's rows ``[stop - start, ...]`` in rank order (= sample order for contiguous shards)."""
    if not active():
        return t
    longest = max(stop - start for start, stop in bounds)
    dev = _comm_device()
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: len(t)] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in bounds]
    dist.all_gather(parts, padded)
    return torch.cat([p[: stop - start] for p, (start, stop) in zip(parts, bounds, strict=True)]).to(t.device)


def check_same_samples(digest: str, what: str) -> None:
    """Every rank must hold the same sample list, or the shards would not tile one set."""
    if not active():
        return
    word = int.from_bytes(hashlib.sha256(digest.encode()).digest()[:7], "big")
    t = torch.tensor([word, -word], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise AttributionError(
            f"The {world_size()} ranks hold different samples for {what}, so their shards do not tile one set. "
            "Generation must be deterministic across ranks: use the same --seed, the same model files and the "
            "same device type on every rank."
        )
