"""Timestep grouping strategies: which steps of a trajectory are optimised together
(docs/architecture.md, "The GRPO family").

A strategy maps the K steps of each trajectory (and rollout statistics) to
optimisation units. It returns `Units`: for every (trajectory, step) the index
of its unit within the trajectory (−1: not trained this update). How the
per-step log-ratios of a unit combine is the algorithm's choice ("mean": the
unit ratio is the geometric mean of its steps' ratios, Chunk-GRPO; "sum": their
product); a strategy that takes a `combine` option states its own, which the
algorithm then adopts when it is built (`declared_combine`).

Register your own with `@register("name")`; it receives a `GroupingContext`
and its options from the config (`<algorithm>.grouping_options`). An option's type and
range (`Annotated[int, Range("[1, inf)")]`) are checked when the run is built, before
anything is written.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Annotated, Callable

import torch
from torch import Tensor

from genrl.config_io import Range
from genrl.errors import ConfigError
from genrl.registry import Registry

AT_LEAST_ONE = Range("[1, inf)")


@dataclass
class GroupingContext:
    trainable: Tensor  # [K] bool: steps that may be trained (stochastic, not the last)
    l1_rel: Tensor  # [N, K] ‖x_{k+1} − x_k‖₁ / ‖x_k‖₁, the temporal dynamics of each trajectory
    update: int  # index of the current update (for schedules such as a sliding window)
    generator: torch.Generator  # the only source of randomness a strategy may use

    @property
    def num_trajectories(self) -> int:
        return self.l1_rel.shape[0]

    @property
    def trainable_steps(self) -> Tensor:
        return self.trainable.nonzero().flatten()


@dataclass
class Units:
    assignment: Tensor  # [N, K] long: unit index within the trajectory, −1 = not trained
    combine: str | None = None  # "mean" | "sum": a strategy's own rule; None: the algorithm's

    @property
    def num_slots(self) -> int:
        """The largest unit index + 1: the most units a trajectory can have."""
        return int(self.assignment.max().item()) + 1 if self.assignment.numel() else 0

    @property
    def units_per_trajectory(self) -> float:
        """The mean number of units trained per trajectory (after a draw, fewer than its slots)."""
        slots = self.num_slots
        if slots <= 0:
            return 0.0
        trained = torch.zeros(self.assignment.shape[0], slots, dtype=torch.bool)
        rows, steps = (self.assignment >= 0).nonzero(as_tuple=True)
        trained[rows, self.assignment[rows, steps]] = True
        return float(trained.sum(1).double().mean())


GroupingStrategy = Callable[..., Units]
GROUPINGS: Registry = Registry("grouping strategy")
register = GROUPINGS.register


def get(name: str) -> GroupingStrategy:
    return GROUPINGS.get(name)


def declared_combine(strategy: GroupingStrategy, options: dict) -> str | None:
    """The `combine` rule a strategy takes as an option (its value in `options`, else the strategy's
    default), or None when it takes none and leaves the rule to the algorithm."""
    param = inspect.signature(strategy).parameters.get("combine")
    if param is None:
        return None
    return options.get("combine", param.default)


def chunks_to_units(ctx: GroupingContext, sizes: list[int], combine: str | None = None) -> Units:
    """Consecutive chunks of the trainable steps, from the high-noise end, the same for every trajectory."""
    steps = ctx.trainable_steps
    if sum(sizes) != len(steps):
        raise ConfigError(f"chunk sizes {sizes} must add up to the {len(steps)} trainable steps")
    row = torch.full(ctx.trainable.shape, -1, dtype=torch.long)
    row[steps] = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return Units(row.expand(ctx.num_trajectories, -1).clone(), combine)


@register("per_step")
def per_step(ctx: GroupingContext) -> Units:
    """Every trainable step is its own unit: ordinary step-level GRPO (Flow-GRPO)."""
    return chunks_to_units(ctx, [1] * len(ctx.trainable_steps))


@register("random_subset")
def random_subset(ctx: GroupingContext, fraction: Annotated[float, Range("(0, 1]")] = 0.6) -> Units:
    """Per-step units, a random `fraction` of each trajectory's steps trained (DanceGRPO's timestep fraction)."""
    return draw_units(per_step(ctx), fraction, ctx.generator)


@register("sliding_window")
def sliding_window(ctx: GroupingContext, size: Annotated[int, AT_LEAST_ONE] = 3,
                   stride: Annotated[int, Range("[0, inf)")] = 1, every: Annotated[int, AT_LEAST_ONE] = 1) -> Units:
    """Per-step units inside a window of `size` trainable steps that moves by `stride` every `every` updates (MixGRPO)."""
    steps = ctx.trainable_steps
    size = min(size, len(steps))
    positions = len(steps) - size + 1
    start = (ctx.update // max(every, 1)) * stride % positions
    row = torch.full(ctx.trainable.shape, -1, dtype=torch.long)
    row[steps[start : start + size]] = torch.arange(size)
    return Units(row.expand(ctx.num_trajectories, -1).clone())


def scale_chunk_sizes(sizes: list[int], total: int) -> list[int]:
    """Scale chunk sizes proportionally to `total` steps: same order, ≥ 1 each, summing to `total`.

    The cumulative boundaries are scaled and rounded, so proportions and order
    survive; with fewer steps than chunks, one step per chunk.
    """
    if total <= 0:
        return []
    if total < len(sizes):
        return [1] * total
    boundaries, cumulative, previous = [], 0, 0
    for i, size in enumerate(sizes):
        cumulative += size
        remaining_chunks = len(sizes) - i - 1
        b = round(cumulative * total / sum(sizes))
        b = min(max(b, previous + 1), total - remaining_chunks)
        boundaries.append(b)
        previous = b
    return [b - a for a, b in zip([0] + boundaries[:-1], boundaries)]


@register("fixed_chunks")
def fixed_chunks(ctx: GroupingContext, sizes: Annotated[list[int], AT_LEAST_ONE] = (2, 3, 4, 7)) -> Units:
    """Chunk-GRPO's fixed chunks, [2, 3, 4, 7] for 16 trainable steps, scaled to the trainable steps."""
    return chunks_to_units(ctx, scale_chunk_sizes(list(sizes), len(ctx.trainable_steps)))


@register("uniform_chunks")
def uniform_chunks(ctx: GroupingContext, size: Annotated[int, AT_LEAST_ONE] = 4) -> Units:
    """Equal chunks of `size` steps (the last one shorter); size 1 is step-level GRPO, size ≥ T sequence-level."""
    total = len(ctx.trainable_steps)
    sizes = [size] * (total // size) + ([total % size] if total % size else [])
    return chunks_to_units(ctx, sizes)


def _sign_runs(values: Tensor) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of equal sign in `values`."""
    signs = torch.sign(values).tolist()
    runs, start = [], 0
    for i in range(1, len(signs) + 1):
        if i == len(signs) or signs[i] != signs[start]:
            runs.append((start, i))
            start = i
    return runs


def _order_diff_per_step(profile: Tensor, order: int) -> Tensor:
    """The `order`-th difference of the profile, one value per step (the first steps borrow the first value)."""
    if len(profile) <= order:
        return torch.zeros(len(profile))
    diff = torch.diff(profile, n=order)
    return torch.cat([diff[:1].expand(order), diff])


def _dynamic_segments(profile: Tensor, start: int, end: int, order: int, max_size: int) -> list[tuple[int, int]]:
    """Split steps [start, end) by sign changes of the `order`-th difference; refine chunks over `max_size`."""
    runs = _sign_runs(_order_diff_per_step(profile, order)[start:end])
    if len(runs) == 1 and end - start > max_size:  # no sign change at this order: split at the midpoint
        half = (end - start) // 2
        runs = [(0, half), (half, end - start)]
    segments = []
    for a, b in runs:
        if b - a > max_size:
            segments += _dynamic_segments(profile, start + a, start + b, order + 1, max_size)
        else:
            segments.append((start + a, start + b))
    return segments


@register("dynamic_chunks")
def dynamic_chunks(ctx: GroupingContext, max_size: Annotated[int | None, AT_LEAST_ONE] = None) -> Units:
    """Chunks from each trajectory's temporal dynamics (Chunk-GRPO v3 / GCPO's adaptive rule).

    Consecutive steps whose first difference of L1rel has the same sign form a
    chunk; a chunk longer than `max_size` is split by the sign changes of the
    next-order difference, or at its midpoint when it has none, recursively.
    `max_size` is not published; the default ⌈7/16 · T⌉ matches the largest
    of the fixed chunks [2, 3, 4, 7].
    """
    steps = ctx.trainable_steps
    total = len(steps)
    max_size = max_size or max(1, math.ceil(7 * total / 16))
    assignment = torch.full((ctx.num_trajectories, ctx.trainable.shape[0]), -1, dtype=torch.long)
    for n in range(ctx.num_trajectories):
        profile = ctx.l1_rel[n, steps].float()
        segments = _dynamic_segments(profile, 0, total, 1, max_size)
        for u, (a, b) in enumerate(segments):
            assignment[n, steps[a:b]] = u
    return Units(assignment)


# --------------------------------------------------------------------------------------
# drawing a fraction of units (shared by every strategy)


def unit_weights(units: Units, l1_rel: Tensor, weighting: str) -> Tensor:
    """[N, U] probability of drawing each unit: uniform, ∝ mean L1rel of its steps, or softmax of it."""
    n, u = units.assignment.shape[0], units.num_slots
    present = torch.zeros(n, u)
    mean_l1 = torch.zeros(n, u)
    for j in range(u):
        mask = units.assignment == j  # [N, K]
        count = mask.sum(1)
        present[:, j] = (count > 0).float()
        mean_l1[:, j] = (l1_rel * mask).sum(1) / count.clamp(min=1)
    if weighting == "uniform":
        weights = present
    elif weighting == "l1":
        weights = mean_l1.clamp(min=1e-12) * present
    elif weighting == "softmax":
        weights = torch.softmax(mean_l1.masked_fill(present == 0, -math.inf), dim=1)
    else:
        raise ValueError(f"unknown unit weighting {weighting!r}; choose uniform, l1 or softmax")
    return weights / weights.sum(1, keepdim=True).clamp(min=1e-12)


def spans(assignment: Tensor) -> list[list[list[int]]]:
    """Per trajectory, the [first, last] step of each of its units (chunk boundaries), in step order."""
    out = []
    for row in assignment.tolist():
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for step, unit in enumerate(row):
            if unit >= 0:
                first.setdefault(unit, step)
                last[unit] = step
        out.append(sorted([first[u], last[u]] for u in first))
    return out


def draw_units(
    units: Units, fraction: float, generator: torch.Generator, l1_rel: Tensor | None = None, weighting: str = "uniform"
) -> Units:
    """Keep ⌊fraction · U⌋ units per trajectory (at least one), drawn without replacement.

    The floor is the references' `int(len · timestep_fraction)` (DanceGRPO's steps, Chunk-GRPO's
    chunks: 0.6 of 16 steps is 9, 0.5 of 4 chunks 2)."""
    if fraction >= 1:
        return units
    n = units.assignment.shape[0]
    l1 = l1_rel if l1_rel is not None else torch.zeros(units.assignment.shape)
    weights = unit_weights(units, l1, weighting)  # [N, U]
    present = (weights > 0).sum(1)
    assignment = units.assignment.clone()
    for i in range(n):
        keep = max(1, int(int(present[i]) * fraction))
        chosen = torch.multinomial(weights[i], keep, replacement=False, generator=generator)
        dropped = torch.ones(weights.shape[1], dtype=torch.bool)
        dropped[chosen] = False
        row = assignment[i]
        row[(row >= 0) & dropped[row.clamp(min=0)]] = -1
    return Units(assignment, units.combine)
