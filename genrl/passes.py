"""An optimizer step's backward passes: whole units packed into full model calls, in lockstep across
sharded processes.

A minibatch's rows are cut into passes of whole units (a chunk's ratio needs all its steps, so a
unit's rows share one backward pass, though they may span several model calls). The model runs in
calls of exactly `micro_batch` rows (genrl.policy), so a pass whose rows are not a multiple of it
pays for padding rows in full: `pack_units` fills every call where the units allow it. A pass's loss
(a mean over its units) is weighted by its number of units over the minibatch's, so the step's
gradient is that of the mean over units, however the units are packed.

Sharded training (genrl.sharding): a sharded model gathers its parameters collectively in
each forward and backward, so every process must make as many passes, and as many model
calls in each, as the busiest one. `in_lockstep` orders every process's passes largest first,
adds passes of weight 0 (a process's smallest pass again, or a stand-in row when it holds
nothing of the minibatch) and gives every pass the row count that sets its number of model
calls (`ModelCalls.lockstep`). Filler passes are not charged to the NFE budget.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor

from genrl import keys
from genrl.distributed import Dist


@dataclass
class Pass:
    source: TensorDictBase  # the minibatch's rows [S]
    mask: Tensor  # [S] bool: this pass's rows, whole units
    units: int  # its weight in the minibatch's mean over units; 0: a lockstep filler
    min_rows: int = 0  # call the model as often as this many rows need (0: as its own rows need)

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    def rows(self) -> TensorDictBase:
        """The pass's rows of the minibatch (a copy; the training batch's `gather` adds what they point to)."""
        return self.source[self.mask]


def pack_units(sizes: list[int], micro_batch: int, max_calls: int | None = None) -> list[list[int]]:
    """Units (their row counts, in unit order) packed into passes (lists of positions in `sizes`) whose
    rows fill their model calls of `micro_batch` rows, wherever the units allow it.

    A pass starts with the largest unit left (the earliest of equals) and is completed to the next
    multiple of `micro_batch` rows with the next units in order that fit; when that leaves a gap, with
    the earliest units of the sizes that close it exactly, growing the pass to at most `max_calls`
    calls (default: one call more than the largest unit needs). A pass stays short only when no units
    left close its gap: the minibatch's last ones. Units of one size keep their order, so single-step
    units make passes of `micro_batch` consecutive units.
    """
    if not sizes:
        return []
    max_calls = max_calls or -(-max(sizes) // micro_batch) + 1
    taken = [False] * len(sizes)
    largest_first = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    passes, next_largest, earliest = [], 0, 0
    while True:
        while next_largest < len(sizes) and taken[largest_first[next_largest]]:
            next_largest += 1
        if next_largest == len(sizes):
            return passes
        first = largest_first[next_largest]
        taken[first] = True
        while earliest < len(sizes) and taken[earliest]:
            earliest += 1
        rows, target, in_order = sizes[first], -(-sizes[first] // micro_batch) * micro_batch, []
        for i in range(earliest, len(sizes)):
            if rows == target:
                break
            if not taken[i] and rows + sizes[i] <= target:
                in_order.append(i)
                rows += sizes[i]
        if rows != target:
            rest = [i for i in range(earliest, len(sizes)) if not taken[i]]
            in_order = _closing(sizes, rest, sizes[first], micro_batch, max_calls) or in_order
        for i in in_order:
            taken[i] = True
        passes.append(sorted([first, *in_order]))


def _closing(sizes: list[int], candidates: list[int], rows: int, micro_batch: int, max_calls: int) -> list[int] | None:
    """The fewest calls' worth of `candidates` (positions, in order) that bring `rows` to a multiple of
    `micro_batch` within `max_calls` calls, the earliest of each size; None if no subset does."""
    by_size = defaultdict(list)
    for i in candidates:
        by_size[sizes[i]].append(i)
    for calls in range(-(-rows // micro_batch), max_calls + 1):
        need = calls * micro_batch - rows
        reachable = {0: {}}  # total -> {size: count}, bounded by how many units of each size are left
        for size, positions in sorted(by_size.items()):
            for total, counts in list(reachable.items()):
                for count in range(1, len(positions) + 1):
                    if total + count * size > need:
                        break
                    reachable.setdefault(total + count * size, {**counts, size: count})
        if need in reachable:
            return [i for size, count in reachable[need].items() for i in by_size[size][:count]]
    return None


def model_rows(pass_rows: list[int], micro_batch: int) -> int:
    """Rows the model evaluates for passes of these many rows: each pass in whole calls of `micro_batch`."""
    return sum(math.ceil(rows / micro_batch) * micro_batch for rows in pass_rows)


def unit_passes(rows: TensorDictBase, micro_batch: int) -> list[Pass]:
    """The minibatch's rows in passes of whole units, packed into full calls of `micro_batch` rows (`pack_units`)."""
    unit = rows.get(keys.UNIT).cpu()
    unit_ids = torch.unique(unit)
    counts = torch.bincount(torch.searchsorted(unit_ids, unit), minlength=len(unit_ids)).tolist()
    packed = pack_units(counts, micro_batch)
    return [Pass(rows, torch.isin(unit, unit_ids[members]), len(members)) for members in packed]


def in_lockstep(passes: list[Pass], stand_in, dist: Dist) -> list[Pass]:
    """`passes`, largest first (so that the passes of all processes line up by size), padded to the
    busiest process's count with zero-weight fillers (its smallest pass again), each pass's `min_rows`
    the most rows any process has in it. `stand_in()` gives a row for a process that holds nothing of
    the minibatch."""
    passes = sorted(passes, key=lambda p: -p.size)
    missing = dist.max(len(passes)) - len(passes)
    if missing:
        filler = passes[-1] if passes else Pass(stand_in(), torch.ones(1, dtype=torch.bool), 0)
        passes = passes + [Pass(filler.source, filler.mask, 0) for _ in range(missing)]
    sizes = dist.gather(torch.tensor([[p.size for p in passes]])).amax(0).tolist()
    return [Pass(p.source, p.mask, p.units, rows) for p, rows in zip(passes, sizes)]
