"""What an algorithm trains on in one update: rows built from a rollout, handed out by trajectory.

The trainer cuts an update into minibatches of whole prompt groups, and asks the training
batch for the rows of the trajectories of each: `batch.rows(trajectories)` is a TensorDict
[S] that the algorithm's objective reads, every row carrying `keys.UNIT` (rows of one unit
go into one backward pass). What a row is belongs to the algorithm:

- the GRPO family: one row per trained (trajectory, step), an index into the rollout that is
  copied out of it (only what the objective reads) one backward pass at a time
  (`algorithms/grpo.py`, `StepRows`);
- a forward-process family (DiffusionNFT, AWM): one row per (trajectory, draw of t), holding
  the final sample x₀, the re-noising t and ε, the advantage: `TrajectoryRows` below.

Random draws that shape the batch (which units are trained, which t) are made on the global
batch from the `UpdateContext`'s generator, identical on every process, and each process keeps
its own trajectories (`ctx.rows`): a multi-process run then trains on what one process would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Callable

import torch
from tensordict import TensorDictBase
from torch import Tensor


def minibatch_groups(num_groups: int, minibatches: int, draw: str, generator: torch.Generator) -> list[Tensor]:
    """The group ids of each minibatch, drawn on the global batch (the same on every process).

    random: a permutation of the groups cut into `minibatches` parts. balanced: one random permutation per
    block of `minibatches` consecutive groups, whose i-th group goes to minibatch i. A process of a sharded run
    holds consecutive groups, so when its count is a multiple of `minibatches` it holds as many groups of every
    minibatch as any other, and its passes line up with theirs without lockstep fillers; one process draws
    the same minibatches as N."""
    if draw == "random":
        return list(torch.randperm(num_groups, generator=generator).chunk(minibatches))
    if num_groups % minibatches:
        raise ValueError(f"a balanced draw needs whole blocks: {num_groups} groups, {minibatches} minibatches")
    blocks = num_groups // minibatches
    dealt = torch.stack([torch.randperm(minibatches, generator=generator) for _ in range(blocks)])  # [blocks, M]
    groups = dealt + minibatches * torch.arange(blocks)[:, None]  # block b's groups b·M … b·M + M − 1, dealt
    return list(groups.T)  # minibatch i: the i-th dealt group of every block


@dataclass
class UpdateContext:
    update: int  # index of this update (0-based), for schedules
    generator: torch.Generator  # the run's stream for training draws (checkpointed; the same on every process)
    rows: slice  # this process's trajectories within the global batch
    num_trajectories: int  # N of the global batch
    gather: Callable[[Tensor], Tensor] = lambda t: t  # per-trajectory tensor [n, ...] -> [N, ...] over processes
    in_keys: Sequence | None = None  # the keys the objective reads (its `in_keys`); None: not declared


class TrainingBatch:
    """Rows for the objective, by trajectory (local indices into the rollout)."""

    stats: dict  # logged with the update's metrics, e.g. units_per_trajectory

    def rows(self, trajectories: Tensor) -> TensorDictBase:
        """The rows [S] of these trajectories (ascending local indices), each with keys.UNIT."""
        raise NotImplementedError

    def gather(self, rows: TensorDictBase) -> TensorDictBase:
        """A backward pass's rows (some of `rows(...)`) as the objective reads them, made when the pass
        runs: rows that point into the rollout are copied out of it here, one pass at a time. By
        default the rows themselves."""
        return rows

    def stand_in(self) -> TensorDictBase:
        """A row for a process that holds nothing of a minibatch in sharded training: it runs through
        the objective with weight 0, so that the sharded model is called as often as elsewhere."""
        return self.rows(torch.tensor([0]))[:1]


@dataclass
class TrajectoryRows(TrainingBatch):
    """Rows stored per trajectory: `td` [n] or [n, M] (M rows per trajectory, e.g. M draws of t),
    with keys.UNIT unique within `td` (e.g. every row its own unit: arange(n · M))."""

    td: TensorDictBase
    stats: dict = field(default_factory=dict)

    def rows(self, trajectories: Tensor) -> TensorDictBase:
        rows = self.td[trajectories.to(self.td.device)]
        return rows.reshape(rows.batch_size.numel()) if rows.batch_dims > 1 else rows  # not -1: a process may hold none

