"""Relevance of MLP neurons, attention heads and weights, accumulated over a sample set.

One forward and one backward per batch. Hooks read ``a * grad_a`` at the input
of the MLP down projection (neurons) and of the attention output projection
(heads), and ``W * grad_W`` for every block weight, where ``grad_W`` is built
from the layer's input and output gradient with excluded positions masked. Weight
parameters never get ``.grad``: memory stays at one batch's activations plus
the accumulators, and nothing per sample is kept.

The explained output is, by default, the sum of the logits of the tokens actually present,
over each sample's target positions (continuation tokens, or every next token); ``explain`` picks the model's
own top token or the log-probability instead (see ``EXPLAIN``).

Scale: reduced-precision models (bf16/fp16) are summed in float32; layers may
live on different devices (accelerate ``device_map``, offloaded weights
included), with unit sums on one home device and weight sums beside their
weight (CPU for offloaded ones); under ``torch.distributed`` each rank takes a
contiguous shard of the samples and the sums are all-reduced (see
``distributed.py``); a checkpoint file makes a long attribution resumable (see
``checkpoint.py``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _recompute
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import Checkpoint, State, data_digest, model_digest, settings_digest
from .errors import AttributionError, ConfigError, DataSourceError
from .families import Architecture, architecture, blocks, geometry
from .lrp import lrp_composite
from .lrp.composite import replace_forward

log = logging.getLogger(__name__)

METHODS = ("lrp", "gradient", "wanda", "activation", "magnitude", "random")
UNITS = ("neuron", "head", "weight")
# What each target position explains: the actual next token's logit, the model's top token's logit, or the actual
# token's log-probability (to first order, see ``_explained``).
EXPLAIN = ("actual", "predicted", "logprob")
# How weight relevance R_t = W * (g_t x_t^T) is reduced over tokens: per sample (sum over its tokens, then
# ``absolute``), or per token, sum_t |R_t| (token_l1) or sqrt(sum_t R_t^2) (token_l2) over every counted token.
WEIGHT_AGGREGATIONS = ("sample", "token_l1", "token_l2")


@dataclass(frozen=True)
class Sample:
    """Token ids plus the first position whose token is explained (>= 1).

    ``foil``: a token whose logit is subtracted at every explained position, so the explained quantity is a
    logit difference (the actual token against an alternative, e.g. IO minus S in IOI). LRP is linear in what
    it explains, so this relevance equals the actual token's minus the foil's.
    ``classes``: explain a class of tokens instead of the actual one: at every explained position the sum of
    their logits weighted by their softmax within the class (held fixed), whose gradient is that of the
    class's log-sum-exp. The behaviour's vocabulary, not the one word a draw happened to sample.
    """

    input_ids: tuple[int, ...]
    target_start: int = 1
    foil: int | None = None
    classes: tuple[int, ...] = ()


@dataclass
class Relevance:
    """Mean relevance per unit over ``n_samples``; ``scores`` keys are readable unit names.

    ``neuron``: [layers, neurons]; ``head``: [layers, heads]; ``weight.<layer>.<module>``:
    the weight's shape in ``nn.Linear`` layout [out, in].
    """

    method: str
    scores: dict[str, Tensor]
    n_samples: int
    info: dict[str, float | str] = field(default_factory=dict)
    per_sample: dict[str, Tensor] = field(default_factory=dict, repr=False)  # "neuron": [S, L, N] when kept


def samples_from_texts(tokenizer, texts: Sequence[str], max_tokens: int = 128, min_tokens: int = 8
                       ) -> list[Sample]:
    """General text: every next token is explained; texts are cut to ``max_tokens``."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
        if len(ids) >= min_tokens:
            out.append(Sample(tuple(ids), 1))
    return out


def require_samples(samples: Sequence[Sample], n: int, what: str) -> list[Sample]:
    """The first ``n`` of ``samples``; a clear error if the set is smaller than requested."""
    if n < 1:
        raise ConfigError(f"The number of samples requested for {what} must be at least 1, got {n}.")
    if len(samples) < n:
        raise DataSourceError(
            f"{what} has only {len(samples)} samples but {n} were requested. Request at most "
            f"{len(samples)}, or point the prompt set at a larger source."
        )
    return list(samples[:n])


def batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(samples), batch_size):
        yield list(samples[i:i + batch_size])


def _up(t: Tensor) -> Tensor:
    """bf16/fp16 values are summed in float32; float32/64 pass through unchanged (their results stay bitwise)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _half_matmul(t: Tensor) -> bool:
    """Whether ``t`` (a bf16/fp16 factor of ``grad_W``) is multiplied in half precision with float32 output.

    Only on CUDA, where tensor cores do it at many times the float32 rate. The product of two half-precision
    numbers is exact in float32 and the output accumulates in float32, so this equals the float32 matmul of the
    upcast factors up to summation order. Elsewhere (CPU) the factors are upcast, as before.
    """
    return t.dtype in (torch.bfloat16, torch.float16) and t.device.type == "cuda"


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in float32: half-precision CUDA factors through ``out_dtype`` (see ``_half_matmul``)."""
    if _half_matmul(a):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without out_dtype for this pair
            return a.float() @ b.float()
    return a @ b


def _live(module: nn.Module, name: str = "weight") -> Tensor:
    """A parameter's value, also when accelerate offloaded it (the module then holds a meta tensor)."""
    t = getattr(module, name)
    hook = getattr(module, "_hf_hook", None)
    if t.device.type == "meta" and getattr(hook, "weights_map", None) is not None:
        t = hook.weights_map[name].to(hook.execution_device)
    return t.detach()


def _home(t: Tensor) -> torch.device:
    """Where a sum for ``t`` lives: beside it, or on the CPU when ``t`` was offloaded."""
    return torch.device("cpu") if t.device.type == "meta" else t.device


def _home_device(model: nn.Module) -> torch.device:
    """The first resident parameter's device: inputs and the neuron/head sums go there."""
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


def collate(batch: list[Sample], pad_id: int, sink_positions: int, device) -> dict[str, Tensor]:
    """Right-padded ids, the attention mask, the unit-position mask and the target mask."""
    T = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    target = torch.zeros((len(batch), T - 1), dtype=torch.bool)
    foil = torch.tensor([-1 if s.foil is None else s.foil for s in batch], dtype=torch.long)
    width = max(len(s.classes) for s in batch)
    classes = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: padding, or no class (the actual token)
    for i, s in enumerate(batch):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        attn[i, :n] = 1
        target[i, max(s.target_start, 1) - 1:n - 1] = True
        classes[i, :len(s.classes)] = torch.tensor(s.classes, dtype=torch.long)
    units = attn.clone()
    units[:, :sink_positions] = 0
    return {"ids": ids.to(device), "attn": attn.to(device), "units": units.to(device),
            "target": target.to(device), "foil": foil.to(device), "classes": classes.to(device)}


class _Recorder:
    """Forward/backward hooks that accumulate unit relevance for one model."""

    def __init__(self, model: nn.Module, method: str, units: Sequence[str], absolute: bool,
                 per_sample: bool = False, aggregation: str = "sample"):
        self.model, self.method, self.units, self.absolute = model, method, tuple(units), absolute
        self.aggregation = aggregation  # of weight relevance over tokens (WEIGHT_AGGREGATIONS)
        self.per_sample = per_sample  # keep each sample's neuron relevance (stability bootstrap)
        self.arch: Architecture = architecture(model)
        self.geo = geometry(model)
        L, g = self.geo.n_layers, self.geo
        self.sums: dict[str, Tensor] = {}
        self.device = dev = _home_device(model)
        if "neuron" in units:
            self.sums["neuron"] = torch.zeros(L, g.n_neurons, dtype=torch.float32, device=dev)
        if "head" in units:
            self.sums["head"] = torch.zeros(L, g.n_heads, dtype=torch.float32, device=dev)
        self.weight_keys = [f"weight.{layer}.{name}" for layer in range(L) for name in self.arch.linear_names] \
            if "weight" in units else []
        self.mask: Tensor | None = None  # [B, T] positions that count
        self.pad_mask: Tensor | None = None  # [B, T] real (non-pad) tokens
        self.offset = 0  # index of the batch's first sample, for error messages
        self.bad: str | None = None
        self.input_relevance = 0.0
        # Read once per batch by ``read_batch`` (a read syncs the device): each check's finiteness flag with
        # what locates a failure, and the input relevance of the batch.
        self.pending: list[tuple[Tensor, Callable[[], str]]] = []
        self.batch_input: list[Tensor] = []
        self.batch_means: dict[int, Tensor] = {}
        self.sample_means: list[Tensor] = []

    # -- helpers ---------------------------------------------------------------
    def _check(self, what: str, per_sample: Tensor) -> None:
        """Queue a [B, U] check; its flag stays on the device until ``read_batch``."""
        offset = self.offset

        def locate() -> str:
            sample, unit = (~torch.isfinite(per_sample)).nonzero()[0].tolist()
            return f"{what} unit {unit}, sample {offset + sample}"
        self.pending.append((torch.isfinite(per_sample).all(), locate))

    def read_batch(self, scalars: Sequence[Tensor] = ()) -> list[float]:
        """The one device read of a batch: every queued finiteness flag plus ``scalars`` (and the batch's input
        relevance, added to ``input_relevance``). Sets ``bad`` to the first failed check, in hook order."""
        wide = torch.float32 if self.device.type == "mps" else torch.float64  # exact for float32 values
        numbers, parts = [*scalars, *self.batch_input], []
        if self.pending:  # stacked as bools first: one conversion, not one per flag
            parts.append(torch.stack([flag.to(self.device) for flag, _ in self.pending]).to(wide))
        if numbers:
            parts.append(torch.stack([t.to(self.device, wide) for t in numbers]))
        values = torch.cat(parts).tolist() if parts else []
        flags, rest = values[:len(self.pending)], values[len(self.pending):]
        for value in rest[len(scalars):]:
            self.input_relevance += value
        failed = next((i for i, ok in enumerate(flags) if not ok), None)
        if failed is not None and self.bad is None:
            self.bad = self.pending[failed][1]()
        self.pending, self.batch_input = [], []
        return rest[:len(scalars)]

    def _reduce(self, x: Tensor, what: str, keep: int | None = None) -> Tensor:
        """[B, T, U] -> [U]: sum over counted positions, per-sample |.| if asked, sum over samples.

        ``keep``: the layer under which each sample's values are also kept (``per_sample``)."""
        x = x.reshape(*self.mask.shape, -1)  # OPT flattens [B, T] to [B * T]
        per_sample = torch.einsum("btu,bt->bu", x, self.mask.to(x.device, x.dtype))
        self._check(what, per_sample)
        if keep is not None:
            self.batch_means[keep] = per_sample.float()
        return (per_sample.abs() if self.absolute else per_sample).sum(0).float().to(self.device)

    def _neuron_value(self, a: Tensor, layer: int, grad: Tensor | None) -> None:
        if grad is None:  # activation baseline: also keep each sample's mean activation, for AurA's AUROC
            x = a.reshape(*self.mask.shape, -1).float()
            m = self.mask.to(x.device, x.dtype)
            self.batch_means[layer] = torch.einsum("btu,bt->bu", x, m) / m.sum(1, keepdim=True).clamp_min(1)
        value = _up(a) * _up(grad) if grad is not None else _up(a).abs()
        keep = layer if grad is not None and self.per_sample else None
        self.sums["neuron"][layer] += self._reduce(value, f"neuron layer {layer}", keep)

    def _head_value(self, o: Tensor, layer: int, grad: Tensor | None) -> None:
        value = _up(o) * _up(grad) if grad is not None else _up(o).abs()
        per_head = value.reshape(*self.mask.shape, self.geo.n_heads, -1).sum(-1)
        self.sums["head"][layer] += self._reduce(per_head, f"head layer {layer}")

    def _weight_value(self, key: str, weight: Tensor, home: torch.device, x: Tensor, g: Tensor) -> None:
        """Accumulate ``W * grad_W``, ``grad_W = sum_t g_t x_t^T`` over counted positions, as [out, in].

        Per-token aggregations need no per-token outer product: token t's relevance is ``W * g_t x_t^T``, so
        ``sum_t |R_t| = |W| * (|g|^T |x|)`` and ``sum_t R_t^2 = W^2 * ((g^2)^T x^2)``. Only the matmul is
        accumulated here; ``finish`` applies ``|W|`` (after the square root) once.
        """
        shape = (*self.mask.shape, -1)  # OPT flattens [B, T] to [B * T]
        x, g = x.reshape(shape), g.reshape(shape)
        if not (_half_matmul(x) and self.aggregation != "token_l2"):  # squares of half values would round
            x, g = _up(x), _up(g)
        if self.aggregation == "token_l1":
            x, g = x.abs(), g.abs()
        elif self.aggregation == "token_l2":
            x, g = x.square(), g.square()
        m = self.mask[..., None].to(g.device, g.dtype)
        if x.shape[-1] <= g.shape[-1]:  # mask the smaller factor
            x = x * m
        else:
            g = g * m
        w = _up(weight.T if self.arch.conv1d else weight) if self.aggregation == "sample" else None
        acc = self.sums.get(key)  # created by the first batch: no zero fill of every weight-sized sum
        if w is not None and acc is not None and not self.absolute and acc.device == w.device:
            acc.addcmul_(w, _mm(g.flatten(0, 1).T, x.flatten(0, 1)))  # fused, no weight-sized temporary
        else:
            if w is None:  # per token: |W| or W^2 comes in finish
                value = _mm(g.flatten(0, 1).T, x.flatten(0, 1))
            elif self.absolute:  # |.| per sample, so one sample's grad_W at a time
                value = sum((w * _mm(g[b].T, x[b])).abs() for b in range(len(x)))
            else:
                value = w * _mm(g.flatten(0, 1).T, x.flatten(0, 1))
            if acc is None:
                acc = self.sums[key] = value.float().to(home)
            else:
                acc += value.to(home)
        # Per sample, whether its factors are finite (a sum is not finite when an element is not), to name the
        # sample if the sum turns out not finite; both are read at the end of the batch.
        sample_ok = torch.isfinite(x.flatten(1).sum(1, dtype=torch.float32) + g.flatten(1).sum(1, dtype=torch.float32))
        offset, n = self.offset, len(x)

        def locate(acc: Tensor = acc) -> str:
            out, inp = (~torch.isfinite(acc)).nonzero()[0].tolist()
            bad = (~sample_ok).nonzero()
            where = f"sample {offset + int(bad[0])}" if len(bad) else f"samples {offset}-{offset + n - 1}"
            return f"{key} (layer {key.split('.')[1]}) entry [{out}, {inp}], {where}"
        self.pending.append((torch.isfinite(acc.sum()), locate))

    # -- hooks -----------------------------------------------------------------
    @contextmanager
    def hooks(self) -> Iterator[None]:
        backward = self.method in ("lrp", "gradient")
        with ExitStack() as stack:
            def add(handle):
                stack.callback(handle.remove)

            for layer, block in enumerate(blocks(self.model)):
                if "neuron" in self.units:
                    add(block.get_submodule(self.arch.down).register_forward_pre_hook(
                        self._tap(lambda a, g, i=layer: self._neuron_value(a, i, g), backward)))
                if "head" in self.units:
                    o = block.get_submodule(f"{self.arch.attn}.{self.arch.o}")
                    add(o.register_forward_pre_hook(
                        self._tap(lambda a, g, i=layer: self._head_value(a, i, g), backward)))
                if "weight" in self.units and backward:
                    for name in self.arch.linear_names:
                        mod = block.get_submodule(name)
                        add(mod.register_forward_hook(self._weight_tap(f"weight.{layer}.{name}", mod)))
            add(blocks(self.model)[0].register_forward_pre_hook(self._input_tap, with_kwargs=True))
            yield

    def _tap(self, fn: Callable[[Tensor, Tensor | None], None], backward: bool):
        def pre_hook(_module, args):
            a = args[0]
            if not backward:
                fn(a.detach(), None)
            elif a.requires_grad:  # the hook holds a detached view: a closure over ``a`` would form a
                value = a.detach()  # reference cycle through its graph and keep every batch's graph alive
                a.register_hook(lambda g: fn(value, g))
        return pre_hook

    def _weight_tap(self, key: str, module: nn.Module):
        home = _home(module.weight)

        def hook(_module, args, out):
            x = args[0].detach()
            if out.requires_grad:
                out.register_hook(lambda g: self._weight_value(key, _live(module), home, x, g))
        return hook

    def _input_tap(self, _module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        if self.method in ("lrp", "gradient"):
            h.requires_grad_(True)

            value = h.detach()  # not ``h``: see _tap

            def record(g: Tensor) -> None:
                pad = self.pad_mask[..., None].to(g.device, g.dtype)
                self.batch_input.append((_up(value) * _up(g) * pad).sum())
            h.register_hook(record)
        return None

    def _weight_module(self, key: str) -> nn.Module:
        return self.model.get_submodule(key.replace("weight.", f"{self.arch.blocks}.", 1))

    def finish(self, n_samples: int) -> dict[str, Tensor]:
        """Means over samples; divides the accumulators in place (no second copy of the weight sums).

        Weight scores stay where they were summed (the device): selection and masks work there, and a host copy
        of every weight-sized score would cost more than the attribution. Neuron and head tables are small and
        come to the CPU.

        Per-token aggregations get their ``|W|`` factor (and, for token_l2, the square root) here, so that
        batches, checkpoints and ranks only ever add matmuls; the result is divided by ``n_samples`` like every
        other score (a common scale that leaves rankings alone)."""
        for key in self.weight_keys:  # a weight no gradient reached (CP-LRP's q/k) has relevance 0
            if key not in self.sums:
                w = self._weight_module(key).weight
                self.sums[key] = torch.zeros(w.shape[::-1] if self.arch.conv1d else w.shape, device=_home(w))
            elif self.aggregation != "sample":
                acc, w = self.sums[key], _live(self._weight_module(key))
                w = _up(w.T if self.arch.conv1d else w).to(acc.device, acc.dtype)
                (acc.sqrt_() if self.aggregation == "token_l2" else acc).mul_(w.abs())
        out = {k: self.sums[k].div_(n_samples).cpu() for k in ("neuron", "head") if k in self.sums}
        return out | {k: self.sums[k].div_(n_samples) for k in self.weight_keys}


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients during attribution; restore the caller's flags afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def attribute(
    model: nn.Module,
    samples: Sequence[Sample],
    *,
    method: str = "lrp",
    units: Sequence[str] = ("neuron", "head"),
    batch_size: int = 8,
    sink_positions: int = 1,
    absolute: bool = False,
    variant: str = "attnlrp",
    pad_token_id: int = 0,
    seed: int = 0,
    desc: str = "attribution",
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    gradient_checkpointing: bool = False,
    per_sample: bool = False,
    explain: str = "actual",
    aggregation: str = "sample",
) -> Relevance:
    """Mean relevance per unit over ``samples`` (Eq. 1 of Hatefi et al. 2025).

    ``checkpoint``: a file that holds the partial sums every ``checkpoint_every`` batches, so that a killed run
    resumes where it stopped (bitwise the same result); it is deleted on success, and refused when it was made
    from another model, other samples or other settings. Under ``torch.distributed`` each rank writes its own
    (``<checkpoint>.rank<k>``). ``gradient_checkpointing`` recomputes each block in the backward pass instead
    of keeping its intermediates (long sequences); relevance is unchanged. ``per_sample``: also return each
    sample's neuron relevance (``Relevance.per_sample["neuron"]``, [S, L, N]) for lrp and gradient; the
    activation method always keeps each sample's mean activation (AurA). ``explain`` (lrp, gradient): what each
    target position explains, one of ``EXPLAIN``; a sample's foil needs ``actual``. ``aggregation`` (lrp,
    gradient; weight units only, neurons and heads follow ``absolute``): how a weight's relevance is reduced
    over tokens, one of ``WEIGHT_AGGREGATIONS``; ``sample`` is the per-sample sum with ``absolute`` applied.
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown attribution method '{method}'. Choose one of: {', '.join(METHODS)}.")
    unknown = set(units) - set(UNITS)
    if unknown:
        raise ConfigError(f"Unknown unit kind(s) {sorted(unknown)}. Choose from: {', '.join(UNITS)}.")
    if not samples:
        raise DataSourceError(f"No samples to attribute for '{desc}'. Check the prompt set is not empty.")
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be at least 1 batch, got {checkpoint_every}.")
    if explain not in EXPLAIN:
        raise ConfigError(f"Unknown explained target '{explain}'. Choose one of: {', '.join(EXPLAIN)}.")
    if aggregation not in WEIGHT_AGGREGATIONS:
        raise ConfigError(f"Unknown weight aggregation '{aggregation}'. Choose one of: "
                          f"{', '.join(WEIGHT_AGGREGATIONS)}.")
    if explain != "actual" and any(s.foil is not None for s in samples):
        raise ConfigError(f"Samples with a foil token explain a logit difference, which needs explain='actual', "
                          f"not '{explain}'.")
    if explain != "actual" and any(s.classes for s in samples):
        raise ConfigError(f"Samples with a token class explain that class in place of the actual token, which "
                          f"needs explain='actual', not '{explain}'.")
    if any(s.classes and s.foil is not None for s in samples):
        raise ConfigError("A sample explains either a token class or a logit difference against a foil, not both.")
    if method in ("magnitude", "random"):
        return _data_free(model, method, units, seed, len(samples))
    bounds = distributed.shard_bounds(len(samples), desc)
    if distributed.world_size() > 1:
        distributed.check_same_samples(data_digest(samples), desc)
    start, stop = bounds[distributed.rank()]
    todo = list(batches(samples[start:stop], batch_size))
    started = time.perf_counter()
    rec = _Recorder(model, method, units, absolute, per_sample and "neuron" in units, aggregation)
    wanda = _WandaNorms(model) if method == "wanda" else None
    ckpt = None
    if checkpoint is not None:
        settings = {"method": method, "units": list(units), "variant": variant, "sink_positions": sink_positions,
                    "absolute": absolute, "batch_size": batch_size, "pad_token_id": pad_token_id,
                    "per_sample": per_sample, "explain": explain, "aggregation": aggregation,
                    "world_size": distributed.world_size(), "rank": distributed.rank()}
        path = Path(checkpoint)
        if distributed.world_size() > 1:
            path = path.with_name(f"{path.name}.rank{distributed.rank()}")
        ckpt = Checkpoint(path, {"model": _model_digest(model), "data": data_digest(samples[start:stop]),
                                 "settings": settings_digest(settings)})
    explained, first = 0.0, 0
    state = ckpt.load() if ckpt else None
    if state is not None:
        explained, first = _restore(state, rec, wanda)
    rec.offset = start + sum(len(b) for b in todo[:first])
    device = rec.device
    backward = method in ("lrp", "gradient")
    rules = lrp_composite(model, variant) if method == "lrp" else nullcontext()
    with ExitStack() as stack:
        for ctx in (frozen(model), rec.hooks(), rules, _offload_aware(model),
                    _recomputed_blocks(model) if gradient_checkpointing and backward else nullcontext(),
                    wanda.hooks(rec) if wanda else nullcontext()):
            stack.enter_context(ctx)
        progress = tqdm(todo[first:], desc=desc, leave=False, initial=first, total=len(todo),
                        disable=not distributed.is_main_process())
        for i, batch in enumerate(progress, start=first):
            b = collate(batch, pad_token_id, sink_positions, device)
            rec.mask, rec.pad_mask = b["units"], b["attn"]
            if not backward:
                with torch.no_grad():
                    model(input_ids=b["ids"], attention_mask=b["attn"], use_cache=False)
            else:
                logits = model(input_ids=b["ids"], attention_mask=b["attn"], use_cache=False).logits
                picked = _explained(logits, b, explain)
                target = (picked * b["target"].to(picked.device, picked.dtype)).sum()
                target.backward()
            explained += sum(rec.read_batch([target.detach()] if backward else []))
            if rec.bad:
                raise AttributionError(
                    f"Non-finite relevance in {rec.bad} ({desc}). Check the model weights and the sample's "
                    "text; try --dtype float32 if running in reduced precision."
                )
            rec.offset += len(batch)
            if rec.batch_means:  # one copy per batch, to the CPU where the per-sample rows are kept
                rec.sample_means.append(torch.stack([rec.batch_means[k] for k in sorted(rec.batch_means)], 1).cpu())
            if ckpt and (i + 1) % checkpoint_every == 0 and i + 1 < len(todo):
                ckpt.save(_state(i + 1, explained, rec, wanda))
    explained = _all_reduce(rec, wanda, explained)
    per_sample = {"neuron": distributed.gather_rows(torch.cat(rec.sample_means), bounds)} if rec.sample_means else {}
    n = len(samples)
    scores = wanda.scores(rec, n) if wanda else rec.finish(n)
    if ckpt:
        ckpt.remove()
    info: dict[str, float | str] = {"sink_positions": sink_positions, "absolute": str(absolute)}
    if method == "lrp":
        info["variant"] = variant
    if backward and explain != "actual":  # recorded only when not the default: earlier results stay as they were
        info["explain"] = explain
    if backward and aggregation != "sample" and "weight" in units:
        info["aggregation"] = aggregation
    if backward:
        info["explained_sum"] = explained
        info["input_relevance_sum"] = rec.input_relevance
        info["conservation_ratio"] = rec.input_relevance / explained if explained else float("nan")
    log.info("%s: %s of %d samples (%s) in %d batches of up to %d: %.2f s", desc, method, n, "+".join(units),
             len(todo), batch_size, time.perf_counter() - started)  # the stage timeline of a -v run
    return Relevance(method=method, scores=scores, n_samples=n, info=info, per_sample=per_sample)


def _explained(logits: Tensor, b: dict[str, Tensor], explain: str = "actual") -> Tensor:
    """[B, T-1] what each position explains (``EXPLAIN``).

    ``actual``: the logit of the actual next token, minus the sample's foil token's logit where it has one;
    for a sample with ``classes``, the class logits weighted by their (fixed) softmax within the class.
    ``predicted``: the logit of the model's own top token there. ``logprob``: ``z_y - sum_k p_k z_k`` with the
    softmax ``p`` held fixed. Its gradient is exactly that of ``log p_y``, so the gradient method explains the
    log-probability; its value is ``log p_y + H(p)``, the part of ``log p_y`` that gradient x input at the logits
    distributes (the entropy term has no gradient share), so LRP conservation is checked against it.
    """
    z = logits[:, :-1]
    if explain == "logprob":
        z = _up(z)
        p = z.detach().softmax(-1)
        actual = z.gather(-1, b["ids"][:, 1:, None].to(z.device))[..., 0]
        return actual - torch.einsum("btv,btv->bt", p, z)
    index = z.detach().argmax(-1, keepdim=True) if explain == "predicted" else b["ids"][:, 1:, None].to(z.device)
    picked = _up(z.gather(-1, index)[..., 0])
    classes = b["classes"].to(z.device)
    if classes.numel():
        member = classes >= 0  # [B, C]
        zc = _up(z.gather(-1, classes.clamp_min(0)[:, None, :].expand(-1, z.shape[1], -1)))  # [B, T-1, C]
        zc = zc.masked_fill(~member[:, None, :], float("-inf"))
        weight = zc.detach().softmax(-1).nan_to_num(0.0)  # rows without a class: all -inf, weight 0
        in_class = (weight * zc.masked_fill(~member[:, None, :], 0.0)).sum(-1)
        picked = torch.where(member.any(-1)[:, None], in_class, picked)
    has = b["foil"].to(logits.device) >= 0
    if has.any():
        foil = b["foil"].to(logits.device).clamp_min(0)[:, None, None].expand(-1, picked.shape[1], 1)
        picked = picked - _up(logits[:, :-1].gather(-1, foil)[..., 0]) * has[:, None]
    return picked


def _model_digest(model: nn.Module) -> str:
    """Identity of a model for checkpoints: its config and sampled values of every parameter."""
    config = model.config.to_json_string() if hasattr(model, "config") else type(model).__name__
    params = ((f"{m}.{p}", _live(module, p)) for m, module in model.named_modules()
              for p, _ in module.named_parameters(recurse=False))
    return model_digest(config, params)


def _state(next_batch: int, explained: float, rec: _Recorder, wanda: _WandaNorms | None) -> State:
    tensors = {f"sums.{k}": v for k, v in rec.sums.items()}
    if wanda:
        tensors |= {f"wanda.{k}": v for k, v in wanda.sq.items()}
    if rec.sample_means:
        tensors["sample_means"] = torch.cat(rec.sample_means)
    return State(next_batch, tensors, {"explained": explained, "input_relevance": rec.input_relevance})


def _restore(state: State, rec: _Recorder, wanda: _WandaNorms | None) -> tuple[float, int]:
    """Put a checkpoint's sums back where the hooks accumulate; returns (explained sum, next batch)."""
    for name, t in state.tensors.items():
        kind, _, key = name.partition(".")
        if kind == "sums":
            home = rec.device if key in ("neuron", "head") else \
                _home(rec.model.get_submodule(key.replace("weight.", f"{rec.arch.blocks}.", 1)).weight)
            rec.sums[key] = t.to(home)
        elif kind == "wanda" and wanda is not None:
            wanda.sq[key] = t.to(rec.device)
        elif name == "sample_means":
            rec.sample_means = [t]
    rec.input_relevance = state.scalars["input_relevance"]
    return state.scalars["explained"], state.next_batch


def _all_reduce(rec: _Recorder, wanda: _WandaNorms | None, explained: float) -> float:
    """Sum every rank's accumulators so that each holds the whole set's; returns the summed explained output."""
    if distributed.world_size() == 1:
        return explained
    for key in sorted(rec.sums):
        distributed.all_reduce_sum_(rec.sums[key])
    for key in sorted(wanda.sq if wanda else ()):
        distributed.all_reduce_sum_(wanda.sq[key])
    explained, rec.input_relevance = distributed.all_reduce_floats([explained, rec.input_relevance])
    return explained


@contextmanager
def _offload_aware(model: nn.Module) -> Iterator[None]:
    """Re-wrap forwards the LRP composite replaced on accelerate-hooked modules (norms).

    accelerate moves inputs and loads offloaded weights in a wrapper it puts on ``module.forward``; the composite
    swaps that attribute for its own norm forward, so for the duration it is wrapped in the hook's
    ``pre_forward``/``post_forward`` again.
    """
    with ExitStack() as stack:
        for module in model.modules():
            hook, own = getattr(module, "_hf_hook", None), module.__dict__.get("forward")
            if hook is None or own is None or isinstance(own, functools.partial):  # accelerate's own wrapper
                continue

            def forward(*args, _fwd=own, _m=module, _hook=hook, **kwargs):
                args, kwargs = _hook.pre_forward(_m, *args, **kwargs)
                return _hook.post_forward(_m, _fwd(*args, **kwargs))

            replace_forward(stack, module, forward)
        yield


@contextmanager
def _recomputed_blocks(model: nn.Module) -> Iterator[None]:
    """Per-block activation checkpointing, scoped to this instance.

    HF's ``gradient_checkpointing_enable`` only acts in training mode, which would switch on dropout in
    families that apply it in the block itself (OPT, GPT-2) and change relevance. Wrapping each block's
    ``forward`` instead keeps eval mode, and module hooks (outside ``forward``) still fire once per forward.
    Hooks inside a block fire again on recomputation, but only on recomputed tensors, which the backward never
    reaches, so nothing is counted twice.
    """
    with ExitStack() as stack:
        for block in blocks(model):
            def forward(*args, _inner=block.forward, **kwargs):
                return _recompute(_inner, *args, use_reentrant=False, **kwargs)

            replace_forward(stack, block, forward)
        yield


def auroc(pos: Tensor, neg: Tensor) -> Tensor:
    """Per column of [samples, ...] values: P(a random ``pos`` value exceeds a random ``neg`` one), ties counting
    half (Mann-Whitney U from averaged ranks), so a constant column gives exactly 0.5."""
    from scipy.stats import rankdata

    values = torch.cat([pos, neg]).flatten(1).double().numpy()
    ranks = torch.from_numpy(rankdata(values, axis=0))
    u = ranks[: len(pos)].sum(0) - len(pos) * (len(pos) + 1) / 2
    return (u / (len(pos) * len(neg))).float().reshape(pos.shape[1:])


def aura_auroc(general: Relevance, undesired: Relevance) -> Tensor:
    """AurA (Suau et al. 2024): per-neuron AUROC of the per-sample mean activation, undesired vs general.

    0.5 means the neuron does not separate the sets (a constant, e.g. dead, neuron gives exactly 0.5); near 1
    it fires more on the undesired set. Needs ``activation`` relevance of both sets (the only method that keeps
    per-sample values).
    """
    if "neuron" not in general.per_sample or "neuron" not in undesired.per_sample:
        raise ConfigError("AurA AUROC needs per-sample activations: attribute both sets with method='activation'.")
    return auroc(undesired.per_sample["neuron"], general.per_sample["neuron"])


class _WandaNorms:
    """Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2 over all counted tokens of the set."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.arch = architecture(model)
        self.sq: dict[str, Tensor] = {}

    def names(self, units: Sequence[str]) -> list[str]:
        """The layers whose scores are asked for: every linear layer with weight units, else only those that
        neuron (down projection) and head (output projection) scores sum."""
        if "weight" in units:
            return list(self.arch.linear_names)
        wanted = {self.arch.down} if "neuron" in units else set()
        wanted |= {f"{self.arch.attn}.{self.arch.o}"} if "head" in units else set()
        return [name for name in self.arch.linear_names if name in wanted]

    @contextmanager
    def hooks(self, rec: _Recorder) -> Iterator[None]:
        # The last input reduced and its norms: q/k/v (and gate/up) are called one after another on the same
        # tensor, which is then reduced once. Only one input is held, so no activation outlives its layer.
        last: list = [None, None]
        with ExitStack() as stack:
            for layer, block in enumerate(blocks(self.model)):
                for name in self.names(rec.units):
                    key = f"{layer}.{name}"

                    def pre(_m, args, key=key):
                        if args[0] is not last[0]:
                            x = args[0].detach().float().reshape(*rec.mask.shape, -1)
                            x = x * rec.mask[..., None].to(x.device)
                            per_sample = x.pow(2).sum(1)
                            rec._check(f"input of weight {key}", per_sample)
                            last[:] = [args[0], per_sample.sum(0).to(rec.device)]
                        self.sq[key] = self.sq.get(key, 0) + last[1]

                    stack.callback(block.get_submodule(name).register_forward_pre_hook(pre).remove)
            stack.callback(last.clear)
            yield

    def scores(self, rec: _Recorder, n: int) -> dict[str, Tensor]:
        """Weight scores stay beside their weight (see ``_Recorder.finish``); neuron and head tables go to the
        CPU. Finiteness is read once for all weights, and located only when it fails."""
        geo = rec.geo
        out: dict[str, Tensor] = {}
        neuron, head, checks = [], [], []

        def score(layer: int, name: str) -> Tensor:
            w = _live(blocks(self.model)[layer].get_submodule(name))
            w = w.T if self.arch.conv1d else w
            return w.abs().float() * self.sq[f"{layer}.{name}"].to(w.device).sqrt()[None]  # |.| is exact in bf16

        for layer in range(geo.n_layers):
            for name in self.names(rec.units):
                s = score(layer, name)
                checks.append((layer, name, torch.isfinite(s.sum()).to(rec.device)))
                if "weight" in rec.units:
                    out[f"weight.{layer}.{name}"] = s
                if name == self.arch.down:
                    neuron.append(s.sum(0).to(rec.device))
                if name == f"{self.arch.attn}.{self.arch.o}":
                    head.append(s.sum(0).reshape(geo.n_heads, -1).sum(-1).to(rec.device))
        if not bool(torch.stack([ok for _, _, ok in checks]).all()):
            layer, name = next((layer, name) for layer, name, ok in checks if not ok)  # ok: a 1-element read
            row, col = (~torch.isfinite(score(layer, name))).nonzero()[0].tolist()
            raise AttributionError(f"Non-finite Wanda score of weight.{layer}.{name} entry [{row}, {col}]: "
                                   "the weight is not finite. Check the model's weights.")
        if "neuron" in rec.units:
            out["neuron"] = torch.stack(neuron).cpu()
        if "head" in rec.units:
            out["head"] = torch.stack(head).cpu()
        return out


def _data_free(model: nn.Module, method: str, units: Sequence[str], seed: int, n: int) -> Relevance:
    """``magnitude`` (|W|, summed per neuron/head) and seeded ``random`` scores."""
    arch, geo = architecture(model), geometry(model)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    neuron, head = [], []
    for layer, block in enumerate(blocks(model)):
        for name in arch.linear_names:
            w = _live(block.get_submodule(name)).float()
            w = w.T if arch.conv1d else w
            # |W| stays beside W (no weight-sized host copy); random draws come from the seeded CPU generator,
            # so they are the same on every device
            s = torch.rand(w.shape, generator=gen) if method == "random" else w.abs()
            if "weight" in units:
                out[f"weight.{layer}.{name}"] = s
            if name == arch.down:
                neuron.append(s.sum(0).cpu())
            if name == f"{arch.attn}.{arch.o}":
                head.append(s.sum(0).reshape(geo.n_heads, -1).sum(-1).cpu())
    if "neuron" in units:
        out["neuron"] = torch.rand(geo.n_layers, geo.n_neurons, generator=gen) if method == "random" \
            else torch.stack(neuron)
    if "head" in units:
        out["head"] = torch.rand(geo.n_layers, geo.n_heads, generator=gen) if method == "random" \
            else torch.stack(head)
    return Relevance(method=method, scores=out, n_samples=n, info={"seed": seed})


def differential(general: Relevance, undesired: Relevance) -> dict[str, Tensor]:
    """``R_diff = R_general / sum|R_general| - R_undesired / sum|R_undesired|`` per unit kind.

    Each set is normalised by its total absolute relevance over that unit kind, so
    that the number and length of samples in either set do not decide the
    ranking; only how relevance is *distributed* over units does. The most
    negative entries matter for the undesired set and little for general text.
    """
    out = {}
    for key, g in general.scores.items():
        u = undesired.scores[key]
        out[key] = g / g.abs().sum().clamp_min(1e-30) - u / u.abs().sum().clamp_min(1e-30)
    return out
