"""Select units from relevance scores, mask them reversibly, and save the masks.

A *unit* is an MLP neuron, an attention head or one weight entry of a decoder
block. Selection ranks units by a score dict (the ``scores`` of a
:class:`~safety_prune.attribution.Relevance`, or ``differential()``), masking
zeroes exactly the parameter entries that make up the units, and an
:class:`Undo` restores them bit for bit. Masks only ever touch block weights, in
place on the model they are given: :func:`pruned_copy` is how the pipeline keeps
the input model untouched.

Unit sets are held by :class:`MaskSet`, a read-only ``Sequence[Unit]`` stored as
index tensors: a 50 % weight sparsity of a 135M model is ~50M units, far too
many for a Python list of objects.

All matrix coordinates use the ``nn.Linear`` layout ``[out, in]`` of the
attribution scores, also for GPT-2's ``Conv1D`` (stored ``[in, out]``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import AttributionError, ConfigError, ResultsError
from .families import Architecture, architecture, blocks, geometry
from .io import atomic_path, write_text
from .results import unit_id

KINDS = ("neuron", "head", "weight")
SCOPES = ("global", "rowwise")
FORMAT = "safety_prune.masks/1"
# Above this many weight units masks.json gives per-matrix counts only; the units
# themselves are then stored as boolean masks ("units.<key>") in the safetensors.
WEIGHT_LIST_LIMIT = 10_000


@dataclass(frozen=True)
class Unit:
    """One prunable unit.

    ``index`` is the neuron or head number within ``layer``, or for a weight the
    flat index into the ``[out, in]`` matrix of the block-relative module
    ``module``. ``cols`` (the matrix's ``in`` size) only makes ``str()`` print
    ``[row,col]``; it takes no part in equality or hashing.
    """

    kind: str
    layer: int
    index: int
    module: str | None = None
    cols: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Unknown unit kind '{self.kind}'. Choose one of: {', '.join(KINDS)}.")
        if (self.kind == "weight") != (self.module is not None):
            raise ConfigError(f"A {self.kind} unit {'needs' if self.kind == 'weight' else 'takes no'} "
                              "module name (the block-relative Linear, e.g. 'mlp.down_proj').")
        if self.layer < 0 or self.index < 0:
            raise ConfigError(f"Unit layer and index must be >= 0, got layer {self.layer}, "
                              f"index {self.index}.")

    def __str__(self) -> str:
        where = f"{self.index // self.cols},{self.index % self.cols}" if self.cols else self.index
        return unit_id(self.kind, self.layer, where, self.module)


def _sort_key(u: Unit) -> tuple[int, int, str, int]:
    return KINDS.index(u.kind), u.layer, u.module or "", u.index


class MaskSet(Sequence[Unit]):
    """An ordered, read-only collection of units backed by index tensors.

    Behaves like a ``list[Unit]`` for reading (``len``, indexing, slicing,
    iteration, ``==`` with any sequence of units) while staying cheap for
    millions of weight units. :func:`select` returns units in rank order, so
    ``select(..., k=m)[:j]`` equals ``select(..., k=j)``.
    """

    # Columns: kind (int8, into KINDS), layer (int32), module (int16, into the
    # ``_modules`` table of (name, cols)), index (int64).
    __slots__ = ("_index", "_kind", "_layer", "_module", "_modules")

    def __init__(self, units: Iterable[Unit] = ()):
        if isinstance(units, MaskSet):
            self._set(units._kind, units._layer, units._module, units._index, units._modules)
            return
        units = list(units)
        for u in units:
            if not isinstance(u, Unit):
                raise ConfigError(f"Expected Unit objects, got {type(u).__name__}: {u!r}.")
        modules = list(dict.fromkeys((u.module, u.cols) for u in units))
        ids = {m: i for i, m in enumerate(modules)}
        self._set(torch.tensor([KINDS.index(u.kind) for u in units], dtype=torch.int8),
                  torch.tensor([u.layer for u in units], dtype=torch.int32),
                  torch.tensor([ids[u.module, u.cols] for u in units], dtype=torch.int16),
                  torch.tensor([u.index for u in units], dtype=torch.int64), tuple(modules))

    def _set(self, kind: Tensor, layer: Tensor, module: Tensor, index: Tensor,
             modules: tuple[tuple[str | None, int | None], ...]) -> None:
        self._kind, self._layer, self._module, self._index = kind, layer, module, index
        self._modules = modules

    @classmethod
    def _of(cls, kind: str, layer: Tensor, index: Tensor, module: Tensor | None = None,
            modules: tuple[tuple[str | None, int | None], ...] = ((None, None),)) -> MaskSet:
        """Build from columns of a single kind (``module`` indexes ``modules``)."""
        out = cls.__new__(cls)
        n = index.numel()
        out._set(torch.full((n,), KINDS.index(kind), dtype=torch.int8), layer.to("cpu", torch.int32),
                 torch.zeros(n, dtype=torch.int16) if module is None else module.to("cpu", torch.int16),
                 index.to("cpu", torch.int64), modules)
        return out

    def __len__(self) -> int:
        return self._index.numel()

    @overload
    def __getitem__(self, i: int) -> Unit: ...

    @overload
    def __getitem__(self, i: slice) -> MaskSet: ...

    def __getitem__(self, i: int | slice) -> Unit | MaskSet:
        if isinstance(i, slice):
            out = MaskSet.__new__(MaskSet)
            out._set(self._kind[i], self._layer[i], self._module[i], self._index[i], self._modules)
            return out
        module, cols = self._modules[int(self._module[i])]
        return Unit(KINDS[int(self._kind[i])], int(self._layer[i]), int(self._index[i]), module, cols)

    def __iter__(self) -> Iterator[Unit]:
        for k, layer, m, idx in zip(self._kind.tolist(), self._layer.tolist(), self._module.tolist(),
                                    self._index.tolist(), strict=True):
            module, cols = self._modules[m]
            yield Unit(KINDS[k], layer, idx, module, cols)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(self) != len(other):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics: compare, don't hash

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={n}" for k, n in self.counts().items())
        return f"MaskSet({counts or 'empty'})"

    def counts(self) -> dict[str, int]:
        """Number of entries per kind present (duplicates included)."""
        return {KINDS[k]: int(n) for k, n in zip(*torch.unique(self._kind, return_counts=True), strict=True)}

    def of_kind(self, kind: str) -> MaskSet:
        keep = self._kind == KINDS.index(kind)
        out = MaskSet.__new__(MaskSet)
        out._set(self._kind[keep], self._layer[keep], self._module[keep], self._index[keep], self._modules)
        return out

    def _groups(self) -> Iterator[tuple[int, str | None, Tensor]]:
        """(layer, module name, indices) for each distinct layer/module, in a fixed order."""
        for layer, name, (chunk,) in self._split():
            yield layer, name, chunk

    def _split(self, *columns: Tensor) -> Iterator[tuple[int, str | None, list[Tensor]]]:
        """Like ``_groups``, with the indices and each of ``columns`` (one value per unit) cut the same way."""
        if not len(self):
            return
        names = sorted({name or "" for name, _ in self._modules})
        name_of = torch.tensor([names.index(name or "") for name, _ in self._modules])
        key = self._layer.long() * len(names) + name_of[self._module.long()]
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        parts = [torch.split(c[order], counts.tolist()) for c in (self._index, *columns)]
        for i, k in enumerate(keys.tolist()):
            yield k // len(names), names[k % len(names)] or None, [p[i] for p in parts]


def _concat(sets: Sequence[MaskSet]) -> MaskSet:
    """One MaskSet with the units of ``sets`` in order, without building Unit objects."""
    table = tuple(dict.fromkeys(m for s in sets for m in s._modules))
    ids = {m: i for i, m in enumerate(table)}
    out = MaskSet.__new__(MaskSet)
    out._set(torch.cat([s._kind for s in sets]), torch.cat([s._layer for s in sets]),
             torch.cat([torch.tensor([ids[m] for m in s._modules], dtype=torch.int16)[s._module.long()]
                        if s._modules else s._module for s in sets]),
             torch.cat([s._index for s in sets]), table)
    return out


def _as_maskset(units: Iterable[Unit]) -> MaskSet:
    return units if isinstance(units, MaskSet) else MaskSet(units)


# -- selection -----------------------------------------------------------------

def _weight_slots(scores: dict[str, Tensor]) -> list[tuple[int, str, Tensor]]:
    """(layer, module, score matrix) of every ``weight.<layer>.<module>`` key, sorted."""
    slots = []
    for key, value in scores.items():
        if key.startswith("weight."):
            _, layer, module = key.split(".", 2)
            if value.dim() != 2:
                raise ConfigError(f"Score '{key}' must be a 2-D [out, in] matrix, "
                                  f"got shape {tuple(value.shape)}.")
            slots.append((int(layer), module, value))
    return sorted(slots, key=lambda s: (s[0], s[1]))


def _finite(values: Tensor, what: str) -> Tensor:
    values = values.detach()
    values = values if values.dtype == torch.float64 else values.float()
    if not torch.isfinite(values).all():
        raise AttributionError(f"The {what} scores contain NaN or infinite values; recompute the relevance "
                               "(try --dtype float32) before selecting units.")
    return values


def _count(k: int | None, sparsity: float | None, total: int, kind: str) -> int:
    """Number of units to select: ``k``, or ``round(sparsity * total)``."""
    if (k is None) == (sparsity is None):
        raise ConfigError("Give exactly one of --k (a unit count) or --sparsity (a fraction in (0, 1)).")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ConfigError(f"--k {k} must be a whole number >= 1.")
        if k > total:
            raise ConfigError(f"--k {k} exceeds the {total} {kind} units of this model; "
                              f"choose 1 <= k <= {total}.")
        return k
    if not 0 < sparsity < 1:
        raise ConfigError(f"--sparsity {sparsity} is outside (0, 1); give a fraction such as 0.05.")
    n = round(sparsity * total)
    if n == 0:
        raise ConfigError(f"--sparsity {sparsity} selects no units of the {total} {kind} units; "
                          "give a larger fraction or use --k.")
    return n


def _smallest(values: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` smallest values, ordered by (value, position).

    O(n) via ``kthvalue`` plus a sort of the k chosen: a full sort of ~1e8 weight
    scores would be needlessly slow. Ties at the threshold go to lower positions.
    """
    if k < values.numel():
        threshold = values.kthvalue(k).values
        chosen = values < threshold
        chosen[(values == threshold).nonzero()[: k - int(chosen.sum()), 0]] = True
        chosen = chosen.nonzero()[:, 0]
    else:
        chosen = torch.arange(values.numel(), device=values.device)
    return chosen[torch.sort(values[chosen], stable=True).indices]


def _row_smallest(values: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` smallest per row; ties go to lower columns."""
    threshold = values.kthvalue(k, dim=1, keepdim=True).values
    chosen = values < threshold
    tied = values == threshold
    return chosen | (tied & (tied.cumsum(1) <= k - chosen.sum(1, keepdim=True)))


def select(
    scores: dict[str, Tensor],
    kind: str,
    *,
    k: int | None = None,
    sparsity: float | None = None,
    scope: str = "global",
    largest: bool = False,
    exclude: Iterable[Unit] | None = None,
) -> MaskSet:
    """Units with the lowest scores (highest with ``largest``), in rank order.

    Correction passes ``R_diff`` (the most negative units carry the undesired
    behaviour); compression passes relevance (the least relevant go first).
    Exactly one of ``k`` and ``sparsity``; ``sparsity`` counts against all units
    of ``kind``, so it means the same with or without ``exclude`` (units already
    pruned, never chosen again). ``scope="rowwise"`` (Wanda) takes
    ``round(sparsity * in)`` weights from every output row of every matrix.
    Ties break by position, so the result is deterministic.
    """
    if kind not in KINDS:
        raise ConfigError(f"Unknown unit kind '{kind}'. Choose one of: {', '.join(KINDS)}.")
    if scope not in SCOPES:
        raise ConfigError(f"Unknown --scope '{scope}'. Choose one of: {', '.join(SCOPES)}.")
    if scope == "rowwise" and kind != "weight":
        raise ConfigError(f"--scope rowwise applies only to weight units (the same fraction per output row); "
                          f"use --scope global for {kind} units.")
    slots = _weight_slots(scores) if kind == "weight" else []
    if (kind == "weight" and not slots) or (kind != "weight" and kind not in scores):
        raise ConfigError(f"The scores have no {kind} entries; attribute with {kind} units included.")
    excluded = _as_maskset(exclude or ()).of_kind(kind)
    if scope == "rowwise":
        if k is not None:
            raise ConfigError("--scope rowwise takes --sparsity (a fraction per row), not --k.")
        return _select_rowwise(slots, sparsity, largest, excluded)

    if kind == "weight":
        flat = torch.cat([_finite(s, "weight").flatten() for _, _, s in slots])
        sizes = torch.tensor([s.numel() for _, _, s in slots])
        starts = torch.cumsum(sizes, 0) - sizes
        slot_of = {(layer, module): i for i, (layer, module, _) in enumerate(slots)}
    else:
        matrix = _finite(scores[kind], kind)
        flat = matrix.flatten()
    total = flat.numel()
    n = _count(k, sparsity, total, kind)
    values = -flat if largest else flat
    if len(excluded):
        if kind == "weight":
            try:
                slot = torch.tensor([slot_of[u.layer, u.module] for u in excluded], dtype=torch.long)
            except KeyError as exc:
                raise ConfigError(f"Excluded weight {exc.args[0]} has no scores.") from None
            width, gone = sizes[slot], starts[slot] + excluded._index
        else:
            width, gone = matrix.shape[1], excluded._layer.long() * matrix.shape[1] + excluded._index
        if (excluded._index >= width).any() or (gone >= total).any():
            raise ConfigError(f"An excluded {kind} unit lies outside the scores; "
                              "were they made for this model?")
        values = values.clone()  # scores are finite, so +inf is never among the k chosen
        values[gone.to(values.device)] = float("inf")
        left = total - int(torch.isinf(values).sum())
        if n > left:
            option = "--k" if k is not None else "--sparsity"
            raise ConfigError(f"{option} asks for {n} {kind} units but only {left} of {total} "
                              f"remain after excluding {total - left}.")
    chosen = _smallest(values, n).cpu()
    if kind != "weight":
        return MaskSet._of(kind, chosen // matrix.shape[1], chosen % matrix.shape[1])
    slot = torch.searchsorted(starts, chosen, right=True) - 1
    modules = tuple((module, s.shape[1]) for _, module, s in slots)
    layers = torch.tensor([layer for layer, _, _ in slots])
    return MaskSet._of("weight", layers[slot], chosen - starts[slot], slot, modules)


def _select_rowwise(slots: list[tuple[int, str, Tensor]], sparsity: float | None, largest: bool,
                    excluded: MaskSet) -> MaskSet:
    """Wanda-style: the same number of weights from every output row of each matrix.

    Returned in (matrix, row, column) order: within a row the ranking carries no meaning.
    """
    if sparsity is None:
        raise ConfigError("--scope rowwise needs --sparsity (a fraction in (0, 1)).")
    gone = {(layer, module): idx for layer, module, idx in excluded._groups()}
    layers, modules, indices, table = [], [], [], []
    for i, (layer, module, s) in enumerate(slots):
        values = _finite(s, "weight")
        values = -values if largest else values
        rows, cols = values.shape
        per_row = _count(None, sparsity, cols, f"weight (per row of L{layer}.{module})")
        if (layer, module) in gone:
            out = torch.zeros(rows * cols, dtype=torch.bool, device=values.device)
            out[gone[layer, module].to(values.device)] = True
            out = out.view(rows, cols)
            short = (cols - out.sum(1)) < per_row
            if short.any():
                row = int(short.nonzero()[0, 0])
                raise ConfigError(f"--sparsity {sparsity} needs {per_row} weights per row, but row {row} of "
                                  f"L{layer}.{module} has fewer left after the exclusions.")
            values = values.masked_fill(out, float("inf"))  # finite scores: +inf is never chosen
        picked = _row_smallest(values, per_row).flatten().nonzero()[:, 0]
        indices.append(picked.cpu())
        layers.append(torch.full((picked.numel(),), layer, dtype=torch.int32))
        modules.append(torch.full((picked.numel(),), i, dtype=torch.int16))
        table.append((module, cols))
    return MaskSet._of("weight", torch.cat(layers), torch.cat(indices), torch.cat(modules), tuple(table))


# -- masks -----------------------------------------------------------------------

def _shape(module: nn.Module, arch: Architecture) -> tuple[int, int]:
    """A block module's weight shape in ``[out, in]`` layout."""
    shape = tuple(module.weight.shape)
    return shape[::-1] if arch.conv1d else shape


def _weight_unit_masks(model: nn.Module, units: MaskSet) -> dict[tuple[int, str], Tensor]:
    """``[out, in]`` boolean masks of the weight units, per (layer, module)."""
    arch, layers = architecture(model), blocks(model)
    out = {}
    for layer, module, idx in units.of_kind("weight")._groups():
        if layer >= len(layers) or module not in arch.linear_names:
            raise ConfigError(f"Weight mask L{layer}.{module} does not exist in this {arch.family} model "
                              f"({len(layers)} layers; modules: {', '.join(arch.linear_names)}). "
                              "Were the masks made for another model?")
        shape = _shape(layers[layer].get_submodule(module), arch)
        if int(idx.max()) >= shape[0] * shape[1]:
            raise ConfigError(f"Weight index {int(idx.max())} is outside L{layer}.{module} of shape "
                              f"{list(shape)}. Were the masks made for another model?")
        mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
        mask[idx] = True
        out[layer, module] = mask.view(shape)
    return out


def _check_units(model: nn.Module, layer: int, idx: Tensor, kind: str) -> None:
    geo = geometry(model)
    size = geo.n_neurons if kind == "neuron" else geo.n_heads
    if layer >= geo.n_layers or int(idx.max()) >= size:
        raise ConfigError(f"Unit {Unit(kind, layer, int(idx.max()))} is outside this model "
                          f"({geo.n_layers} layers, {size} {kind}s per layer). "
                          "Were the masks made for another model?")


def _entries(model: nn.Module, units: MaskSet) -> dict[tuple[int, str, str], Tensor]:
    """Boolean ``[out, in]`` (weight) / ``[out]`` (bias) masks of every entry the units zero.

    Keyed by (layer, block-relative module, "weight" | "bias").
    """
    arch, geo, layers = architecture(model), geometry(model), blocks(model)
    masks: dict[tuple[int, str, str], Tensor] = {}

    def mark(layer: int, module: str, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
        mod = layers[layer].get_submodule(module)
        shape = _shape(mod, arch)
        w = masks.setdefault((layer, module, "weight"), torch.zeros(shape, dtype=torch.bool))
        if cols is not None:
            w[:, cols] = True
        if rows is not None:
            w[rows] = True
            if getattr(mod, "bias", None) is not None:
                bias = masks.setdefault((layer, module, "bias"), torch.zeros(shape[0], dtype=torch.bool))
                bias[rows] = True

    for layer, _, idx in units.of_kind("neuron")._groups():
        _check_units(model, layer, idx, "neuron")
        for name in (arch.gate, arch.up):
            if name:
                mark(layer, name, rows=idx)
        mark(layer, arch.down, cols=idx)

    hd, group = geo.head_dim, geo.n_heads // geo.n_kv_heads
    o_name = f"{arch.attn}.{arch.o}"
    for layer, _, heads in units.of_kind("head")._groups():
        _check_units(model, layer, heads, "head")
        heads = torch.unique(heads)
        span = (heads[:, None] * hd + torch.arange(hd)).flatten()
        kv_heads = [g for g in range(geo.n_kv_heads)
                    if torch.isin(torch.arange(g * group, (g + 1) * group), heads).all()]
        kv_span = (torch.tensor(kv_heads, dtype=torch.long)[:, None] * hd + torch.arange(hd)).flatten()
        mark(layer, o_name, cols=span)
        if arch.qkv:  # fused q|k|v rows (GPT-2 is never grouped)
            width = geo.n_heads * hd
            mark(layer, f"{arch.attn}.{arch.qkv}",
                 rows=torch.cat([span, kv_span + width, kv_span + 2 * width]))
        else:
            mark(layer, f"{arch.attn}.{arch.q}", rows=span)
            if kv_heads:
                mark(layer, f"{arch.attn}.{arch.k}", rows=kv_span)
                mark(layer, f"{arch.attn}.{arch.v}", rows=kv_span)

    for (layer, module), mask in _weight_unit_masks(model, units).items():
        key = (layer, module, "weight")
        masks[key] = masks[key] | mask if key in masks else mask
    return masks


def _output_gains(model: nn.Module, units: MaskSet, gains: Tensor) -> dict[tuple[int, str], tuple[Tensor, Tensor]]:
    """Per matrix a unit writes through, the ``[out, in]`` mask of those entries and their factors (1 elsewhere).

    A neuron writes through its down-projection column, a head through its o-projection columns, a weight unit
    is its own entry: multiplying those by ``g`` multiplies the unit's contribution by exactly ``g``. Keyed by
    (layer, block-relative module).
    """
    arch, geo, layers = architecture(model), geometry(model), blocks(model)
    out: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def matrix(layer: int, module: str) -> tuple[Tensor, Tensor]:
        if (layer, module) not in out:
            shape = _shape(layers[layer].get_submodule(module), arch)
            out[layer, module] = torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.float64)
        return out[layer, module]

    def of(kind: str) -> tuple[MaskSet, Tensor]:
        return units.of_kind(kind), gains[units._kind == KINDS.index(kind)]

    neurons, g_neurons = of("neuron")
    for layer, _, (idx, g) in neurons._split(g_neurons):
        _check_units(model, layer, idx, "neuron")
        mask, factor = matrix(layer, arch.down)
        mask[:, idx], factor[:, idx] = True, g
    heads, g_heads = of("head")
    for layer, _, (idx, g) in heads._split(g_heads):
        _check_units(model, layer, idx, "head")
        span = (idx[:, None] * geo.head_dim + torch.arange(geo.head_dim)).flatten()
        mask, factor = matrix(layer, f"{arch.attn}.{arch.o}")
        mask[:, span], factor[:, span] = True, g.repeat_interleave(geo.head_dim)
    weights, g_weights = of("weight")
    _weight_unit_masks(model, weights)  # refuses weights outside this model
    for layer, module, (idx, g) in weights._split(g_weights):
        mask, factor = matrix(layer, module)
        mask.view(-1)[idx], factor.view(-1)[idx] = True, g
    return out


class Undo:
    """Restores the entries a mask application zeroed, bit-identically.

    Only the zeroed entries' original values are kept, not whole tensors. Also a
    context manager: ``with apply_masks(model, units): ...`` reverts on exit.
    Undo applications in reverse order when composing several.
    """

    def __init__(self, saved: list[tuple[Tensor, Tensor, Tensor]]):
        self._saved = saved

    def undo(self) -> None:
        with torch.no_grad():
            for param, mask, original in reversed(self._saved):
                param[mask] = original
        self._saved = []

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


Scale = float | Tensor | None  # None: remove; a number: one gain for every unit; a tensor: one gain per unit


def check_scale(scale: Scale, n_units: int | None = None) -> None:
    """A gain must lie in [0, 1] (1 changes nothing; more would amplify); per-unit gains need one per unit."""
    if isinstance(scale, Tensor):
        if scale.dim() != 1 or (n_units is not None and scale.numel() != n_units):
            raise ConfigError(f"Per-unit gains must be one number per unit ({n_units} units), got shape "
                              f"{tuple(scale.shape)}.")
        bad = ~(torch.isfinite(scale) & (scale >= 0) & (scale <= 1))
        if bad.any():
            raise ConfigError(f"The dampening factor (gain) of unit {int(bad.nonzero()[0, 0])} must lie in [0, 1], "
                              f"got {float(scale[bad][0])}. A gain keeps that share of the unit's output.")
        return
    if scale is not None and not (isinstance(scale, int | float) and 0 <= scale <= 1):
        raise ConfigError(f"The dampening factor must lie in [0, 1], got {scale!r}. Use 0 to silence a unit's "
                          "output, 0.3 to keep 30% of it; to remove units entirely use the zero intervention.")


def _gains(units: MaskSet, scale: float | Tensor) -> Tensor:
    return scale.double() if isinstance(scale, Tensor) else torch.full((len(units),), float(scale), dtype=torch.float64)


def apply_masks(model: nn.Module, units: Iterable[Unit], scale: Scale = None) -> Undo:
    """Zero the units' entries in ``model`` in place (or scale them by gains) and return how to undo it.

    ``scale`` None removes each unit (below). A gain in [0, 1], one for all units or a tensor with one per unit
    (in the order of ``units``), instead multiplies only the entries through which each unit writes
    (down-projection column, o-projection columns, the weight itself), as AurA dampens: the unit's
    contribution is multiplied by its gain, gain 0 gives the same outputs as removing it and gain 1 changes
    no bit.

    - neuron j: row j (and bias j) of the gate and up projections, column j of
      the down projection; the neuron's activation is then exactly 0 whatever
      the nonlinearity.
    - head h: q rows and bias of head h and the o projection's input columns of
      head h. Zeroing the o columns alone removes the head's contribution
      exactly; the zero q rows only make its (now unused) attention uniform.
      Under grouped-query attention a k/v head is shared by
      ``num_attention_heads / num_key_value_heads`` query heads, so its k/v rows
      are zeroed only when every query head of that group is pruned (for plain
      multi-head attention, with each head). GPT-2's fused ``c_attn`` gets the
      same q/k/v row slices.
    - weight: that single entry.

    The biases of the down and o projections are left alone: they belong to no
    single neuron or head.
    """
    units = _as_maskset(units)
    check_scale(scale, len(units))
    arch, layers = architecture(model), blocks(model)
    saved = []
    with torch.no_grad():
        if scale is None:
            for (layer, module, kind), mask in _entries(model, units).items():
                param = getattr(layers[layer].get_submodule(module), kind)
                mask = (mask.T if arch.conv1d and kind == "weight" else mask).contiguous().to(param.device)
                saved.append((param, mask, param[mask].clone()))
                param[mask] = 0
            return Undo(saved)
        for (layer, module), (mask, factor) in _output_gains(model, units, _gains(units, scale)).items():
            param = layers[layer].get_submodule(module).weight
            if arch.conv1d:
                mask, factor = mask.T, factor.T
            mask = mask.contiguous().to(param.device)
            original = param[mask].clone()
            saved.append((param, mask, original))
            work = torch.float64 if param.dtype == torch.float64 else torch.float32  # a gain is not rounded to bf16
            param[mask] = (original.to(work) * factor.to(param.device)[mask].to(work)).to(param.dtype)
    return Undo(saved)


@contextmanager
def masked(model: nn.Module, units: Iterable[Unit], scale: Scale = None) -> Iterator[nn.Module]:
    """Temporarily mask ``model`` in place; restored bit-identically on exit, also after errors."""
    undo = apply_masks(model, units, scale)
    try:
        yield model
    finally:
        undo.undo()


def pruned_copy(model: nn.Module, units: Iterable[Unit], scale: Scale = None) -> nn.Module:
    """A deep copy of ``model`` with the units masked (or scaled by their gains); ``model`` is never modified.

    Gains live in the copy's weights, so ``save_pretrained`` of the copy writes them folded in."""
    pruned = copy.deepcopy(model)
    apply_masks(pruned, units, scale)
    return pruned


def count_units(model: nn.Module, kind: str) -> int:
    """All units of ``kind`` in the model (weights: every entry of every block matrix)."""
    geo = geometry(model)
    if kind == "neuron":
        return geo.n_layers * geo.n_neurons
    if kind == "head":
        return geo.n_layers * geo.n_heads
    if kind == "weight":
        names = architecture(model).linear_names
        return sum(block.get_submodule(n).weight.numel() for block in blocks(model) for n in names)
    raise ConfigError(f"Unknown unit kind '{kind}'. Choose one of: {', '.join(KINDS)}.")


def fraction(model: nn.Module, units: Iterable[Unit]) -> float:
    """Distinct pruned units / all units of their kind (one kind per call; 0.0 when empty)."""
    units = _as_maskset(units)
    kinds = list(units.counts())
    if len(kinds) > 1:
        raise ConfigError(f"fraction() takes units of one kind, got {', '.join(kinds)}; "
                          "split them with MaskSet.of_kind().")
    if not kinds:
        return 0.0
    if kinds[0] == "weight":
        pruned = sum(int(m.sum()) for m in _weight_unit_masks(model, units).values())
    else:
        pruned = sum(torch.unique(idx).numel() for _, _, idx in units._groups())
    return pruned / count_units(model, kinds[0])


# -- serialisation -----------------------------------------------------------------

def _key(layer: int, module: str, param: str) -> str:
    return f"layers.{layer}.{module}.{param}"


def _unit_json(u: Unit, gain: float | None = None) -> dict[str, Any]:
    out = {"id": str(u), "kind": u.kind, "layer": u.layer, "module": u.module, "index": u.index}
    return out if gain is None else out | {"gain": gain}


def intervention_info(scale: Scale) -> dict[str, Any]:
    """How the units were changed, for masks.json and results.json."""
    if scale is None:
        return {"kind": "zero"}
    if not isinstance(scale, Tensor):
        return {"kind": "dampen", "scale": scale}
    return {"kind": "gains", "n_units": scale.numel(),
            "min_gain": float(scale.min()) if scale.numel() else 1.0,
            "mean_gain": float(scale.double().mean()) if scale.numel() else 1.0}


def save_masks(units: Iterable[Unit], path_json: str | os.PathLike[str],
               path_safetensors: str | os.PathLike[str], meta: dict[str, Any], *, model: nn.Module,
               scale: Scale = None) -> None:
    """Write ``masks.json`` (readable unit ids and the intervention) and the per-matrix masks or gains.

    The safetensors file holds, per touched parameter, the ``[out, in]`` (or bias)
    mask of every entry the units zero (or, with a dampening ``scale``, multiply by it), keyed like
    ``layers.3.mlp.down_proj.weight``,
    so the masks can be applied without this package. With per-unit gains (a tensor ``scale``) each such
    tensor is instead the float32 factor to multiply the weight by (1 where untouched), and every unit in the
    JSON carries its ``gain``. The JSON lists units
    sorted by (kind, layer, module, index) with sorted keys and no timestamps:
    the same inputs give byte-identical files. Past ``WEIGHT_LIST_LIMIT`` weight
    units the JSON gives per-matrix counts and the units go into the safetensors
    as ``units.<key>``. Both writes are atomic.
    """
    units = _as_maskset(units)
    check_scale(scale, len(units))
    if scale is None:
        entries = _entries(model, units)
    else:
        gains = _output_gains(model, units, _gains(units, scale))
        entries = {(layer, module, "weight"): factor.float() if isinstance(scale, Tensor) else mask
                   for (layer, module), (mask, factor) in gains.items()}
    weight_masks = _weight_unit_masks(model, units)
    n_weights = sum(int(m.sum()) for m in weight_masks.values())
    listed = n_weights <= WEIGHT_LIST_LIMIT
    readable = sorted(set(units.of_kind("neuron")) | set(units.of_kind("head")), key=_sort_key)
    if listed:
        readable += [Unit("weight", layer, i, module, m.shape[1])
                     for (layer, module), m in sorted(weight_masks.items())
                     for i in m.flatten().nonzero()[:, 0].tolist()]
    if isinstance(scale, Tensor) and not listed:
        raise ConfigError(f"Per-unit gains of {n_weights} weight units are more than masks.json lists "
                          f"({WEIGHT_LIST_LIMIT}); use neuron or head units for gains.")
    gain_of = dict(zip(units, scale.tolist(), strict=True)) if isinstance(scale, Tensor) else {}
    counts = {kind: sum(u.kind == kind for u in readable) for kind in ("neuron", "head")}
    counts["weight"] = n_weights
    counts = {kind: n for kind, n in counts.items() if n}
    doc = {
        "format": FORMAT,
        "model_type": model.config.model_type,
        "layout": "[out, in] (nn.Linear), also for Conv1D weights",
        "meta": meta,
        "intervention": intervention_info(scale),
        "counts": counts,
        "fractions": {kind: n / count_units(model, kind) for kind, n in counts.items()},
        "tensors": os.path.relpath(os.path.abspath(path_safetensors),
                                   os.path.dirname(os.path.abspath(path_json))),
        "weights_listed": listed,
        "weight_matrices": [{"key": _key(layer, module, "weight"), "layer": layer, "module": module,
                             "shape": list(m.shape), "count": int(m.sum())}
                            for (layer, module), m in sorted(weight_masks.items())],
        "units": [_unit_json(u, gain_of.get(u)) for u in readable],
    }
    try:
        text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Mask metadata must be plain JSON (str, numbers, lists, dicts): {exc}.") from None
    tensors = {_key(*k): m.contiguous() for k, m in entries.items()}
    if not listed:
        tensors.update({f"units.{_key(layer, module, 'weight')}": m
                        for (layer, module), m in weight_masks.items()})
    with atomic_path(path_safetensors) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "layout": "[out, in]"})
    write_text(path_json, text + "\n")


def load_masks(path_json: str | os.PathLike[str]) -> MaskSet:
    """Read units back from ``masks.json`` (and its safetensors when weights were not listed)."""
    path = Path(path_json)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"Mask file {path} does not exist. Pass the masks.json of a finished run.") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"Mask file {path} is not valid JSON ({exc}). Re-run to regenerate it.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ResultsError(f"{path} is not a safety_prune masks file (expected format '{FORMAT}').")
    try:
        cols = {(m["layer"], m["module"]): m["shape"][1] for m in doc["weight_matrices"]}
        units = [Unit(u["kind"], u["layer"], u["index"], u["module"], cols.get((u["layer"], u["module"])))
                 for u in doc["units"]]
        for u in units:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (u.layer, u.index)):
                raise TypeError(f"layer and index of {u} must be integers")
        listed = doc["weights_listed"]
        counts = doc["counts"]
    except (KeyError, TypeError, IndexError, ConfigError) as exc:
        raise ResultsError(f"Mask file {path} is corrupt ({type(exc).__name__}: {exc}). "
                           "Re-run to regenerate it.") from None
    found = MaskSet(units)
    if not listed:
        found = _concat([found, _load_weight_units(path.parent / doc.get("tensors", ""), doc, path)])
    got = found.counts()
    if got != counts:
        raise ResultsError(f"Mask file {path} is corrupt: it lists {got} units but declares {counts}. "
                           "Re-run to regenerate it.")
    return found


def load_intervention(path_json: str | os.PathLike[str]) -> tuple[MaskSet, Scale]:
    """The units of ``masks.json`` and how they were changed: ``(units, scale)`` as :func:`apply_masks` takes them
    (None: removed; a number: one dampening factor; a tensor: each unit's gain, in the order of the units)."""
    units = load_masks(path_json)
    doc = json.loads(Path(path_json).read_text(encoding="utf-8"))
    how = doc.get("intervention") or {"kind": "zero"}
    try:
        if how["kind"] == "zero":
            return units, None
        if how["kind"] == "dampen":
            return units, float(how["scale"])
        gains = torch.tensor([float(u["gain"]) for u in doc["units"]], dtype=torch.float64)
        check_scale(gains, len(units))
        return units, gains
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ResultsError(f"Mask file {path_json} has a corrupt intervention ({type(exc).__name__}: {exc}). "
                           "Re-run to regenerate it.") from None


def _load_weight_units(tensors: Path, doc: dict[str, Any], path: Path) -> MaskSet:
    """Weight units stored as ``units.<key>`` boolean masks beside a masks.json."""
    try:
        stored = load_file(str(tensors))
    except (OSError, SafetensorError) as exc:
        raise ResultsError(f"{path} keeps its weight units in {tensors}, which cannot be read ({exc}). "
                           "Keep masks.json and its safetensors file together.") from None
    layers, modules, indices, table = [], [], [], []
    for i, m in enumerate(doc["weight_matrices"]):
        mask = stored.get(f"units.{m['key']}")
        if mask is None or list(mask.shape) != m["shape"]:
            raise ResultsError(f"{tensors} lacks a valid mask 'units.{m['key']}'. Re-run to regenerate it.")
        idx = mask.flatten().nonzero()[:, 0]
        indices.append(idx)
        layers.append(torch.full((idx.numel(),), m["layer"]))
        modules.append(torch.full((idx.numel(),), i))
        table.append((m["module"], m["shape"][1]))
    if not indices:
        return MaskSet()
    return MaskSet._of("weight", torch.cat(layers), torch.cat(indices), torch.cat(modules), tuple(table))
