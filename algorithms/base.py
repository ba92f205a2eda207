"""What an algorithm is: a sampler, a sample and timestep grouping, an objective (docs/architecture.md, "The algorithm interface").

An algorithm module states its choices as class attributes (`defaults`, the fields of its
`options_class`) and overrides what its paper does differently. The trainer calls, per update:

    advantages(rewards, group_id, clip)      sample grouping: rewards [N] -> advantages [N]
    training_batch(rollout, ctx)             the rollout (with keys.ADVANTAGE) -> rows by trajectory
    objective(rows)                          -> TensorDict of loss_* terms and diagnostics
    after_step()                             after every optimizer step taken
    after_update()                           once the update's steps are done, before the next rollout

and once, when the run is built: `make_policy` (the sampler of rollouts) and `make_objective`.
State the algorithm keeps across updates goes into checkpoints through `state_dict()` /
`load_state_dict()`. The GRPO family (`algorithms/grpo.py`) implements all of it for per-step
log-ratios; an algorithm of another family subclasses `Algorithm` directly.
"""

from __future__ import annotations

from typing import ClassVar

from tensordict import TensorDictBase
from torch import Tensor

from genrl import dynamics
from genrl.advantages import compute_advantages
from genrl.config import ALGORITHMS, AlgorithmOptions
from genrl.models.base import ModelAdapter
from genrl.objective import Objective
from genrl.policy import ModelCalls, make_policy, stochastic_steps
from genrl.training_batch import TrainingBatch, UpdateContext

register = ALGORITHMS.register  # @register("name") on an Algorithm subclass: config then parses its section


class Algorithm:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    options_class: ClassVar[type] = AlgorithmOptions  # the dataclass its config section maps onto

    def __init__(self, options, num_steps: int):
        self.options = options
        self.num_steps = num_steps

    # -- the sampler ------------------------------------------------------------------
    @property
    def shared_noise(self) -> bool:
        """Sample grouping: the G samples of a prompt start from one initial noise."""
        return self.options.shared_noise

    def sigmas(self, shift: float) -> Tensor:
        """σ_0 = 1 > … > σ_K = 0, the rollout's noise levels: the options' schedule, shifted by `shift`."""
        return dynamics.sigma_schedule(self.options.schedule, self.num_steps, shift)

    def stochastic_steps(self) -> Tensor:
        """[K] bool: steps sampled with the SDE, hence trainable; the last step is always the ODE."""
        return stochastic_steps(self.num_steps, self.options.sde_window)

    def rollout_structure(self, group_size: int):
        """The sampling structure of its rollouts as a function of the rollout's index (genrl.envs.structures),
        or None: G independent chains per prompt (every algorithm but the tree family, algorithms/tree_grpo.py)."""
        return None

    @property
    def dynamics_params(self) -> dict:
        """Keyword arguments of the dynamics: the noise level under the name the formula uses."""
        name = "eta" if self.options.dynamics == "dance_sde" else "a"
        return {name: self.options.noise_level}

    @property
    def log_prob_form(self) -> str:
        """The step log-density (dynamics.LOG_PROBS): Flow-GRPO's constant-free form for cps unless
        `cps_logprob: gaussian`; the exact Gaussian for the SDEs."""
        o = self.options
        return "squared_error" if o.dynamics == "cps" and o.cps_logprob == "reference" else "gaussian"

    def make_policy(self, adapter: ModelAdapter, sigmas: Tensor, *, micro_batch: int, calls: ModelCalls):
        """The rollout's actor (genrl.policy): the options' dynamics on the stochastic steps, the ODE elsewhere."""
        o = self.options
        return make_policy(adapter, sigmas, self.stochastic_steps(), o.dynamics, micro_batch=micro_batch,
                           logprob_reduce=o.logprob_reduce, log_prob_form=self.log_prob_form, calls=calls,
                           **self.dynamics_params)

    # -- sample grouping ----------------------------------------------------------------
    def advantages(self, rewards: Tensor, group_id: Tensor, clip: float) -> Tensor:
        """Advantages [N] of the global batch's rewards [N], clamped to ±clip."""
        o = self.options
        return compute_advantages(rewards, group_id, o.advantage, clip, o.advantage_std, o.advantage_eps)

    # -- the objective ------------------------------------------------------------------
    def make_objective(self, policy, adapter: ModelAdapter) -> Objective:
        raise NotImplementedError(f"{type(self).__name__} must define make_objective")

    def training_batch(self, rollout: TensorDictBase, ctx: UpdateContext) -> TrainingBatch:
        """This process's rows for the objective, from its rollout [n, K] (keys.ADVANTAGE per trajectory)."""
        raise NotImplementedError(f"{type(self).__name__} must define training_batch")

    def describe(self, stats: dict) -> str | None:
        """One line printed after a run's first update, from its training batch's `stats` (the GRPO
        family: the chunk boundaries); None prints nothing."""
        return None

    def after_step(self) -> None:
        """Called after every optimizer step that was taken (not after a skipped, non-finite one)."""

    def after_update(self) -> None:
        """Called once per update, after its last optimizer step and before the next rollout (e.g. the
        soft update of an "old" sampling policy, which must not move while its own samples are trained on)."""

    def state_dict(self) -> dict:
        """What the algorithm keeps across updates (e.g. an "old" policy), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """`state` as saved, its tensors whole: under sharding, cut them back with sharding.shard_like(t, adapter)."""


__all__ = ["Algorithm", "TrainingBatch", "UpdateContext", "register"]
