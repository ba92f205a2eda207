"""An optimizer step's backward passes: whole units per pass, in lockstep across sharded processes.

A minibatch's rows are cut into passes of whole units (a chunk's ratio needs all its steps)
of about `max_rows` rows each; a pass's loss (a mean over its units) is weighted by its
number of units over the minibatch's, so the step's gradient is that of the mean over units.

Sharded training (genrl.sharding): a sharded model gathers its parameters collectively in
each forward and backward, so every process must make as many passes, and as many model
calls in each, as the busiest one. `in_lockstep` adds passes of weight 0 (a process's first
pass again, or a stand-in row when it holds nothing of the minibatch) and gives every pass
the row count that sets its number of model calls (`ModelCalls.lockstep`). Filler passes
are not charged to the NFE budget.
"""

from __future__ import annotations

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
        """A fresh copy of the pass's rows (the objective may write into it), made when the pass runs."""
        return self.source[self.mask]


def unit_passes(rows: TensorDictBase, max_rows: int) -> list[Pass]:
    """Whole units per pass, about `max_rows` rows each, in order of unit id."""
    unit = rows.get(keys.UNIT).cpu()
    unit_ids = torch.unique(unit)
    counts = torch.bincount(torch.searchsorted(unit_ids, unit), minlength=len(unit_ids)).tolist()
    batches, current, size = [], [], 0
    for u, count in zip(unit_ids.tolist(), counts):
        if current and size + count > max_rows:
            batches.append(torch.tensor(current))
            current, size = [], 0
        current.append(u)
        size += count
    if current:
        batches.append(torch.tensor(current))
    return [Pass(rows, torch.isin(unit, batch), len(batch)) for batch in batches]


def in_lockstep(passes: list[Pass], stand_in, dist: Dist) -> list[Pass]:
    """`passes` padded to the busiest process's count with zero-weight fillers, each pass's
    `min_rows` the most rows any process has in it. `stand_in()` gives a row for a process
    that holds nothing of the minibatch."""
    missing = dist.max(len(passes)) - len(passes)
    if missing:
        first = passes[0] if passes else Pass(stand_in(), torch.ones(1, dtype=torch.bool), 0)
        passes = passes + [Pass(first.source, first.mask, 0) for _ in range(missing)]
    sizes = dist.gather(torch.tensor([[p.size for p in passes]])).amax(0).tolist()
    return [Pass(p.source, p.mask, p.units, rows) for p, rows in zip(passes, sizes)]
