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

