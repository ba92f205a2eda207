"""The GRPO family: per-step log-ratios of the rollout's own SDE, grouped into units, one clipped ratio per unit.

Flow-GRPO, DanceGRPO and Chunk-GRPO differ only in their choices (sampler, timestep
grouping, unit draw, clip range, β, how a unit's per-step log-ratios combine), which
each module states; this module builds what they share:

- the training batch: one row per trained (trajectory, step), its unit id unique within the
  batch and its trajectory's advantage (`StepRows`), units drawn on the global batch, the rows
  copied from the rollout one backward pass at a time;
- the objective: `genrl.loss.GRPOLoss`, the clipped surrogate over units (+ β·KL to the base).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from genrl import keys
from genrl.algorithms import grouping
from genrl.algorithms.base import Algorithm
from genrl.errors import ConfigError
from genrl.loss import GRPOLoss
from genrl.models.base import ModelAdapter
from genrl.training_batch import TrainingBatch, UpdateContext


@dataclass
class StepRows(TrainingBatch):
    """The trained steps of a rollout. A minibatch's rows are an index, (trajectory, step, unit); a
    pass's rows are copied out of the rollout when the pass runs (`gather`): only the keys the
    objective reads, each row's per-trajectory entries (the prompt's context) indexed by trajectory
    from where the rollout stores them once."""

    rollout: TensorDictBase  # [n, R], this process's trajectories (with keys.ADVANTAGE)
    assignment: Tensor  # [n, K] unit index within the trajectory, −1 = not trained
    stats: dict = field(default_factory=dict)
    in_keys: Sequence | None = None  # what the objective reads (None: every entry)

    def __post_init__(self):
        wanted = self.rollout if self.in_keys is None else self.rollout.select(*self.in_keys, strict=False)
        self._per_step = wanted.exclude(*keys.PER_TRAJECTORY)  # [n, R]
        self._per_trajectory = wanted.select(*keys.PER_TRAJECTORY, strict=False)[:, 0]  # [n], views

    def rows(self, trajectories: Tensor) -> TensorDictBase:
        row, step = (self.assignment[trajectories] >= 0).nonzero(as_tuple=True)
        traj = trajectories[row]
        unit = traj * self.assignment.shape[1] + self.assignment[traj, step]  # unique within the batch
        return TensorDict({keys.TRAJECTORY: traj, keys.STEP: step, keys.UNIT: unit}, batch_size=[len(traj)])

    def gather(self, rows: TensorDictBase) -> TensorDictBase:
        traj, step = rows.get(keys.TRAJECTORY), rows.get(keys.STEP)  # row k of the rollout is step k
        out = self._per_step[traj, step]  # [S] copies
        out.update(self._per_trajectory[traj])
        out.set(keys.UNIT, rows.get(keys.UNIT).to(out.device))
        return out

    def stand_in(self) -> TensorDictBase:
        zero = torch.zeros(1, dtype=torch.long)
        return TensorDict({keys.TRAJECTORY: zero, keys.STEP: zero, keys.UNIT: zero}, batch_size=[1])


class GRPO(Algorithm):
    """Base of the GRPO family. A subclass states `defaults` and `combine`."""

    combine: ClassVar[str]  # how a unit's per-step log-ratios make its log-ratio: "mean" or "sum"

    def __init__(self, options, num_steps: int):
        super().__init__(options, num_steps)
        self.strategy = grouping.get(options.grouping)
        declared = grouping.declared_combine(self.strategy, options.grouping_options)
        self.unit_combine = declared or type(self).combine  # a strategy that states its rule overrides
        if self.unit_combine not in ("mean", "sum"):
            raise ConfigError(f"{self.name}: units combine by 'mean' or 'sum', got {self.unit_combine!r}")

    def partition(self, l1_rel: Tensor, update: int, generator: torch.Generator) -> grouping.Units:
        """Timestep grouping of this update ([N, K] L1rel of the whole batch): every unit (chunk) of
        each trajectory, before a fraction of them is drawn."""
        ctx = grouping.GroupingContext(self.stochastic_steps(), l1_rel, update, generator)
        return self.strategy(ctx, **self.options.grouping_options)

    def units(self, l1_rel: Tensor, update: int, generator: torch.Generator) -> grouping.Units:
        """The partition, then the draw of a fraction of units per trajectory: what the update trains."""
        o = self.options
        partition = self.partition(l1_rel, update, generator)
        return grouping.draw_units(partition, o.unit_fraction, generator, l1_rel, o.unit_weighting)

    def training_batch(self, rollout: TensorDictBase, ctx: UpdateContext) -> StepRows:
        o, l1_rel = self.options, ctx.gather(rollout.get(keys.L1_REL)[:, 0]).cpu()  # [N, K], every step's
        partition = self.partition(l1_rel, ctx.update, ctx.generator)
        units = grouping.draw_units(partition, o.unit_fraction, ctx.generator, l1_rel, o.unit_weighting)
        if units.combine not in (None, self.unit_combine):
            raise ConfigError(f"grouping strategy {o.grouping!r} returned units that combine by "
                              f"{units.combine!r} but declared {self.unit_combine!r} (its `combine` option)")
        spans = grouping.spans(partition.assignment)
        stats = {"units_per_trajectory": units.units_per_trajectory, "chunks": spans[0],
                 "chunks_shared": all(row == spans[0] for row in spans)}
        return StepRows(rollout, units.assignment[ctx.rows], stats, ctx.in_keys)

    def describe(self, stats: dict) -> str | None:
        """The chunks of the first update's trajectories, for the start of a run, e.g.
        `chunk_grpo: 2 chunks of steps 0-1 | 2-3 (fixed_chunks {'sizes': [2, 2]}, the same for every trajectory)`."""
        o = self.options
        spans = " | ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in stats["chunks"])
        shared = "the same for every trajectory" if stats["chunks_shared"] else "per trajectory; the first one's"
        options = f" {o.grouping_options}" if o.grouping_options else ""
        count = len(stats["chunks"])
        line = f"{self.name}: {count} chunk{'s' if count != 1 else ''} of steps {spans} ({o.grouping}{options}, {shared})"
        if o.unit_fraction < 1:
            line += f"; {o.unit_fraction:g} of them ({o.unit_weighting} draw) trained per trajectory and update"
        return line

    def make_objective(self, policy, adapter: ModelAdapter) -> GRPOLoss:
        o = self.options
        return GRPOLoss(policy, clip_range=o.clip_range, clip_range_high=o.clip_range_high, beta=o.beta, kl=o.kl,
                        combine=self.unit_combine, reference=adapter.reference)
