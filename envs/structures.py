"""Sampling structures: how a rollout's trajectories branch, step by step (docs/trees.md).

A structure says, for each step k of a tree (one per prompt), whether nodes that do not fork step
with the SDE or the ODE, how many children a forking node has (its fork factor b: one velocity for
the parent, b independent noise draws), a multiplier on the std of the step's draws, and optionally
how many live nodes per tree a pruning rule keeps after it. Chains are no structure at all (`chains`
returns None: the env's usual N independent trajectories); a fork of G at step 0 with the SDE
everywhere is the same set of trajectories when the G chains share their initial noise.

Register your own with `@register("name")`: a function `(num_steps, group_size, update, **options)
-> Structure | None`, options from `<algorithm>.structure_options`. `update` lets a structure move
(MixGRPO's sliding window); the env passes the index of the rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable

import torch
from torch import Tensor

from genrl.config_io import Range, check_options
from genrl.errors import ConfigError
from genrl.registry import Registry


@dataclass(frozen=True)
class StepPlan:
    sde: bool = False  # nodes that do not fork take this step with the SDE (else the ODE)
    fork: int = 1  # children of a forking node at this step (b); a fork is always an SDE step
    noise: float = 1.0  # multiplier on the std of this step's SDE draws
    keep: int = 0  # pruning: live nodes per tree kept after this step (0: no pruning)


@dataclass(frozen=True)
class Structure:
    name: str
    steps: tuple  # StepPlan per step k < K
    trunk: bool = False  # only the trunk forks; its own continuation is the ODE (TempFlow-GRPO)
    prune: str | None = None  # pruning rule (PRUNING) applied where a step has `keep`
    notes: dict = field(default_factory=dict, compare=False)  # shown by `describe`

    @property
    def forks(self) -> list[int]:
        return [k for k, p in enumerate(self.steps) if p.fork > 1]

    def live_nodes(self) -> list[int]:
        """Live nodes of one tree before each step k, and after the last: K + 1 counts."""
        counts, live = [1], 1
        for plan in self.steps:
            if self.trunk:
                live += plan.fork if plan.fork > 1 else 0
            else:
                live = live * plan.fork
                if plan.keep:
                    live = min(live, plan.keep)
            counts.append(live)
        return counts

    @property
    def leaves(self) -> int:
        return self.live_nodes()[-1]

    def velocities(self) -> int:
        """Model evaluations of one tree's rollout: one per live node and step (CFG not counted)."""
        return sum(self.live_nodes()[:-1])

    def edges(self) -> int:
        """Edges of one tree: one per node but the root (each stored once, trained at most once)."""
        return sum(self.live_nodes()[1:])

    def validate(self, group_size: int, key: str) -> None:
        """Bad structures as one line each (ConfigError), before anything runs."""
        last = len(self.steps) - 1
        for k, plan in enumerate(self.steps):
            if not isinstance(plan.fork, int) or plan.fork < 1:
                raise ConfigError(f"{key}: the fork factor at step {k} is {plan.fork!r}; a fork factor is an integer >= 1")
            if plan.fork > 1 and k >= last:
                raise ConfigError(f"{key}: a fork at step {k} is after the last SDE step ({last - 1}: the last step "
                                  f"of {last + 1} has σ' = 0 and no noise); fork at an earlier step")
            if plan.keep < 0:
                raise ConfigError(f"{key}: keep={plan.keep!r} at step {k}; keep is a count of nodes >= 1")
            if plan.noise <= 0 and (plan.fork > 1 or plan.sde):
                raise ConfigError(f"{key}: noise multiplier {plan.noise!r} at step {k}; it must be > 0")
        if any(p.keep for p in self.steps) and self.prune is None:
            raise ConfigError(f"{key}: a step keeps some nodes but no pruning rule is named")
        if self.prune is not None:
            PRUNING.get(self.prune)  # an unknown rule fails here
            if self.trunk:
                raise ConfigError(f"{key}: pruning is not supported on a trunk structure")
        if self.leaves != group_size:
            raise ConfigError(f"{key}: structure {self.name!r} has {self.leaves} leaves per prompt, but "
                              f"train.group_size={group_size}; set train.group_size={self.leaves}")
        if not self.trunk:
            for k, live in enumerate(self.live_nodes()[1:]):
                if group_size % live:
                    raise ConfigError(f"{key}: {live} live nodes after step {k} do not divide the "
                                      f"{group_size} leaves of a tree evenly")


# --- pruning rules: (latents [m, ...] of a step's new nodes, tree [m], step, keep) -> kept [m] bool ---
PruningRule = Callable[[Tensor, Tensor, int, int], Tensor]
PRUNING: Registry = Registry("pruning rule")


@PRUNING.register("farthest")
def farthest_from_mean(latents: Tensor, tree: Tensor, step: int, keep: int) -> Tensor:
    """Keep each tree's `keep` nodes farthest (L2) from their tree's mean latent: the most spread-out
    subset, a cheap stand-in for Pro-GRPO's highest-variance pruning."""
    kept = torch.zeros(len(tree), dtype=torch.bool)
    flat = latents.flatten(1).float()
    for t in torch.unique(tree):
        rows = (tree == t).nonzero().flatten()
        distance = (flat[rows] - flat[rows].mean(0)).norm(dim=1)
        kept[rows[distance.argsort(descending=True, stable=True)[:keep]]] = True
    return kept


# --- structures --------------------------------------------------------------------------
STRUCTURES: Registry = Registry("sampling structure")
register = STRUCTURES.register


def get(name: str):
    return STRUCTURES.get(name)


@register("chains")
def chains(num_steps: int, group_size: int, update: int = 0) -> None:
    """G independent trajectories per prompt: the env's ordinary rollout (no tree bookkeeping)."""
    return None


def window_start(update: int, num_steps: int, every: int, stride: int) -> int:
    """MixGRPO's progressive window: starts at step 0, moves `stride` steps every `every` updates and
    rolls back to 0 once it would start past step K − 2, the last with a stochastic successor."""
    positions = (num_steps - 2) // stride + 1
    return (update // max(every, 1)) % positions * stride


@register("shared_prefix")
def shared_prefix(num_steps: int, group_size: int, update: int = 0, size: Annotated[int, Range("[1, inf)")] = 4,
                  every: Annotated[int, Range("[1, inf)")] = 25, stride: Annotated[int, Range("[1, inf)")] = 1,
                  start: Annotated[int | None, Range("[0, inf)")] = None) -> Structure:
    """ODE before the window [c, c + size) (cut at step K − 2), a fork of G at c, the SDE inside it, the
    ODE after: the G samples of a prompt share the prefix, computed once (MixGRPO). `start` pins c;
    else it slides (`window_start`)."""
    if start is not None and start > num_steps - 2:
        raise ConfigError(f"start={start!r} is past step {num_steps - 2}, the last with a stochastic successor of "
                          f"{num_steps} steps; give a start in [0, {num_steps - 2}], or none to slide the window")
    c = window_start(update, num_steps, every, stride) if start is None else start
    end = min(c + size, num_steps - 1)
    plans = [StepPlan(sde=c <= k < end, fork=group_size if k == c else 1) for k in range(num_steps)]
    return Structure("shared_prefix", tuple(plans), notes={"window": [c, end]})


@register("branches")
def branches(num_steps: int, group_size: int, update: int = 0,
             points: Annotated[list[int], Range("[0, inf)", "steps of the grid")] = (0, 3, 6, 9),
             fork: Annotated[int, Range("[1, inf)")] = 2, noise: Annotated[float, Range("(0, inf)")] = 4.0,
             prune: str | None = None, prune_at: Annotated[int | None, Range("[0, inf)")] = None,
             keep: Annotated[int, Range("[0, inf)")] = 0) -> Structure:
    """Forks of `fork` at `points`, the SDE on every step (BranchGRPO); `noise` multiplies the std of
    the draws at a fork. Optionally a pruning rule keeps `keep` nodes per tree after step `prune_at`."""
    outside = [p for p in points if not isinstance(p, int) or isinstance(p, bool) or p >= num_steps]
    if outside:  # a point off the grid would silently fork nowhere
        raise ConfigError(f"points={list(points)!r}: {outside} are not steps of the {num_steps}-step grid; give "
                          f"integers in [0, {num_steps - 2}]")
    if prune is not None and (keep < 1 or prune_at is None):
        raise ConfigError(f"pruning rule {prune!r} with keep={keep!r} at prune_at={prune_at!r} removes "
                          "every node; give keep >= 1 and the step prune_at")
    plans = []
    for k in range(num_steps):
        split = k in points
        plans.append(StepPlan(sde=k < num_steps - 1, fork=fork if split else 1, noise=noise if split else 1.0,
                              keep=keep if prune is not None and k == prune_at else 0))
    return Structure("branches", tuple(plans), prune=prune)


@register("trunk_forks")
def trunk_forks(num_steps: int, group_size: int, update: int = 0, children: Annotated[int, Range("[2, inf)")] = 6,
                fraction: Annotated[float, Range("(0, 1]")] = 0.99) -> Structure:
    """One ODE trunk; at each of the first int(fraction·K) steps (before the last) it forks `children`
    SDE draws from its own velocity, each finished by the ODE (TempFlow-GRPO)."""
    forked = min(int(fraction * num_steps), num_steps - 1)
    plans = [StepPlan(sde=False, fork=children if k < forked else 1) for k in range(num_steps)]
    return Structure("trunk_forks", tuple(plans), trunk=True)


def build(name: str, options: dict, num_steps: int, group_size: int, update: int, key: str) -> Structure | None:
    """The structure `name` with its options for one rollout, checked (ConfigError naming `key`)."""
    try:
        factory = get(name)
    except KeyError as err:
        raise ConfigError(f"{key}.structure={name!r}: {err.args[0]}") from None
    check_options(factory, options, f"{key}.structure_options", skip=3)
    try:
        structure = factory(num_steps, group_size, update, **options)
    except TypeError as err:
        raise ConfigError(f"{key}.structure_options {options!r} rejected by {name!r}: {err}") from None
    except ConfigError as err:  # a structure's own check of its options, named with the key it came from
        raise ConfigError(f"{key}.structure_options of {name!r}: {err}") from None
    if structure is not None:
        if len(structure.steps) != num_steps:
            raise ConfigError(f"{key}: structure {name!r} gave {len(structure.steps)} steps for sampling.num_steps={num_steps}")
        structure.validate(group_size, f"{key}.structure={name!r}")
    return structure


def check_budget(structure: Structure, prompts: int, nfe_per_velocity: int, budget: int | None) -> None:
    """Refuse a structure whose rollout alone needs more model evaluations than train.nfe_budget."""
    nfe = structure.velocities() * prompts * nfe_per_velocity
    if budget is not None and nfe > budget:
        raise ConfigError(f"structure {structure.name!r}: one update's rollout evaluates the model {nfe} times "
                          f"({structure.velocities()} nodes x {prompts} prompts x {nfe_per_velocity}), more than "
                          f"train.nfe_budget={budget}; raise the budget or use fewer forks or prompts")


def chain_calls(num_steps: int, group_size: int) -> int:
    """Model evaluations of G independent chains of K steps (the chain equivalent of a tree)."""
    return num_steps * group_size


__all__ = ["PRUNING", "STRUCTURES", "StepPlan", "Structure", "build", "chain_calls", "check_budget", "get", "register"]
