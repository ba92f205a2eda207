"""The tree family of the GRPO family: rollouts on a sampling structure, one clipped ratio per edge (docs/trees.md).

A tree algorithm names a structure (genrl.envs.structures: `<algorithm>.structure`, options in
`structure_options`) and says how an edge's advantage comes from the leaves' rewards
(`edge_advantages`, built from genrl.tree_advantages). What it shares with the chains of the GRPO
family: the objective (`GRPOLoss`, every edge its own unit, its log-ratio the step's) and the rows
copied from the rollout one backward pass at a time (`EdgeRows`: `StepRows` with an advantage per
row). Each edge is stored once in the rollout's bookkeeping and trained at most once: only its
owner row (`edge_owner`) and only if it was sampled with the SDE (scale > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor

from genrl import keys
from genrl.algorithms.grpo import GRPO, StepRows
from genrl.config import AlgorithmOptions, option
from genrl.envs import structures
from genrl.errors import ConfigError
from genrl.models.base import ModelAdapter
from genrl.policy import ModelCalls, make_policy
from genrl.training_batch import UpdateContext


@dataclass
class TreeOptions(AlgorithmOptions):
    structure: str = option("shared_prefix", "sampling structure of the rollouts (genrl.envs.structures): "
                            "shared_prefix, branches, trunk_forks, or a registered name")
    structure_options: dict = option({}, "options of the structure, e.g. {points: [0, 2, 4, 6], fork: 2}")


class EdgeRows(StepRows):
    """`StepRows` whose advantage is per row (an edge's), not per trajectory."""

    def __post_init__(self):
        super().__post_init__()
        if self.in_keys is None or keys.ADVANTAGE in self.in_keys:
            self._per_step.set(keys.ADVANTAGE, self.rollout.get(keys.ADVANTAGE))
            self._per_trajectory = self._per_trajectory.exclude(keys.ADVANTAGE)


class TreeGRPO(GRPO):
    """Base of the tree algorithms. A subclass states `defaults` and `edge_advantages`."""

    combine = "mean"  # a unit is one edge
    options_class = TreeOptions

    def __init__(self, options, num_steps: int):
        super().__init__(options, num_steps)
        if options.structure != self.defaults.get("structure") and options.structure_options == self.defaults.get(
                "structure_options"):
            options.structure_options = {}  # the default options belong to the default structure
        self.group_size: int | None = None
        self._rewards: Tensor | None = None  # the update's rewards, kept by `advantages` for the edges
        self._clip = 5.0
        self._leaf_advantages: Tensor | None = None  # `advantages`' result: the chains' advantages

    @property
    def shared_noise(self) -> bool:
        return True  # one root per tree: its leaves share the initial noise

    def stochastic_steps(self) -> Tensor:
        """Every step but the last may hold an SDE edge of some tree (which ones: the rollout's scale)."""
        mask = torch.ones(self.num_steps, dtype=torch.bool)
        mask[-1] = False
        return mask

    def structure(self, update: int) -> structures.Structure:
        o = self.options
        return structures.build(o.structure, o.structure_options, self.num_steps, self.group_size, update, self.name)

    def rollout_structure(self, group_size: int):
        """The env's structure per rollout index; a structure without forks is refused here."""
        self.group_size = group_size
        probe = self.structure(0)
        if probe is None or not probe.forks:
            raise ConfigError(f"{self.name}.structure={self.options.structure!r} has no forks: {self.name} trains on "
                              "trees; choose a structure that forks (shared_prefix, branches, trunk_forks)")
        return self.structure

    def noise_multiplier(self) -> Tensor | None:
        """[K] the density's factor on each step's SDE std (the structure's noise multiplier); None: 1."""
        return None

    def make_policy(self, adapter: ModelAdapter, sigmas: Tensor, *, micro_batch: int, calls: ModelCalls):
        o = self.options
        return make_policy(adapter, sigmas, self.stochastic_steps(), o.dynamics, micro_batch=micro_batch,
                           logprob_reduce=o.logprob_reduce, log_prob_form=self.log_prob_form, calls=calls,
                           noise_multiplier=self.noise_multiplier(), **self.dynamics_params)

    def advantages(self, rewards: Tensor, group_id: Tensor, clip: float) -> Tensor:
        """The leaves' group advantages (logged, drawn on the grids); the update's rewards are kept for
        `training_batch`, where each edge gets its own."""
        self._rewards, self._clip = rewards.float(), clip
        self._leaf_advantages = super().advantages(rewards, group_id, clip)
        return self._leaf_advantages

    def edge_advantages(self, rollout: TensorDictBase, rewards: Tensor, ctx: UpdateContext) -> Tensor:
        """[n, K] the advantage of each row's edge (only owner rows of SDE edges are trained)."""
        raise NotImplementedError(f"{type(self).__name__} must define edge_advantages")

    def step_weights(self, rollout: TensorDictBase) -> Tensor | None:
        """[n, K] a positive weight on each edge's policy loss (folded into its advantage), or None."""
        return None

    def training_batch(self, rollout: TensorDictBase, ctx: UpdateContext) -> EdgeRows:
        if keys.EDGE_OWNER not in rollout.keys():
            raise ConfigError(f"{self.name} trains on tree rollouts: build its env with its structure (genrl.build)")
        rewards = self._rewards[ctx.rows].to(rollout.device)
        advantage = self.edge_advantages(rollout, rewards, ctx).clamp(-self._clip, self._clip)
        weights = self.step_weights(rollout)
        if weights is not None:  # w·max(−Aρ, −A·clip(ρ)) = max(−(wA)ρ, −(wA)·clip(ρ)) for w > 0
            advantage = advantage * weights
        trained = rollout.get(keys.EDGE_OWNER) & (rollout.get(keys.SCALE) > 0)
        steps = torch.arange(self.num_steps, device=trained.device).expand(trained.shape)
        assignment = torch.where(trained, steps, torch.full_like(steps, -1)).cpu()  # each edge its own unit
        rollout.set(keys.ADVANTAGE, advantage.float())
        edges = int(trained.sum())
        stats = {"units_per_trajectory": edges / max(len(trained), 1), "edges_trained": float(edges),
                 "chunks": [[int(k), int(k)] for k in trained.any(0).nonzero().flatten()], "chunks_shared": False}
        return EdgeRows(rollout, assignment, stats, ctx.in_keys)

    def describe(self, stats: dict) -> str | None:
        s = self.structure(0)
        o = self.options
        forks = ", ".join(f"{k} (x{s.steps[k].fork})" for k in s.forks)
        return (f"{self.name}: {o.structure} {o.structure_options or ''} — forks at steps {forks}, {s.leaves} leaves "
                f"per prompt, {s.velocities()} model calls per prompt against {self.num_steps * s.leaves} for "
                f"{s.leaves} chains; {stats['edges_trained']:.0f} edges trained in the first update")
