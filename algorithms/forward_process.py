"""The forward-process family: ODE rollouts, training on the final samples re-noised (DiffusionNFT, AWM).

These algorithms need no per-step log-probability, so the sampler is any solver (here the Euler
probability-flow ODE at every step). What is trained on is the forward process: each trajectory's
final sample x₀ is noised again at M levels t drawn from the rollout's own σ grid,
x_t = (1 − t)·x₀ + t·ε, and the objective compares the velocity at x_t with the flow-matching target
ε − x₀, weighted by the sample's advantage. What this module builds for both:

- the advantage: the group-relative one clipped to ±c (train.adv_clip) and divided by c, Â ∈ [−1, 1]:
  both references divide the clipped advantage by their adv_clip_max before using it;
- the training batch: `TrajectoryRows` of (x₀, t, seed of ε, Â, context), M rows per trajectory and every
  row its own unit; steps and seeds are drawn on the global batch, ε from its seed alone, so a row does
  not depend on the process or the pass it lands in;
- the "old" policy: an average of the trained weights (genrl.ema.ParameterEMA), equal to the base at
  the start, soft-updated once per update (after its optimizer steps, before the next rollout) with
  decay min(old_decay_rate · optimizer steps so far, old_decay_max), and kept in checkpoints;
- the model calls of the objective (θ, the old policy, the frozen base for the KL term) all go through
  the policy's velocity module, so they are charged to the run's NFEs like the rollout's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from genrl import keys, sharding
from genrl.algorithms.base import Algorithm
from genrl.config import ConfigError, option
from genrl.ema import ParameterEMA
from genrl.noise import initial_noise
from genrl.objective import Objective
from genrl.policy import make_policy, velocity_module
from genrl.training_batch import TrajectoryRows, UpdateContext


@dataclass
class ForwardProcessOptions:
    """The options of the family's sections; each algorithm adds its own fields and states its defaults.
    The GRPO family's options (dynamics, sde_window, grouping, clip_range, kl, …) are not fields: setting
    one is an unknown key."""

    shift: float = option(1.0, "default timestep shift of the rollout's σ grid (sampling.shift overrides)",
                          range="(0, inf)")
    schedule: str = option("diffusers", "σ grid of the rollouts (and of the trained t): diffusers or linspace_shift",
                           choices=("diffusers", "linspace_shift"))
    shared_noise: bool = option(False, "the G samples of a prompt share their initial noise")
    advantage: str = option("global_std", "advantage estimator (per_prompt, global_std, …); then clipped to "
                            "±train.adv_clip and divided by it: Â in [-1, 1]")
    advantage_std: str = option("population", "std of the advantage's denominator", choices=("population", "unbiased"))
    advantage_eps: float = option(1e-4, "ε of the advantage's denominator", range="[0, inf)")
    beta: float = option(0.0, "KL weight to the frozen base policy, mean((v_θ − v_ref)²) at the re-noised samples "
                         "(one more model evaluation per row when > 0)", range="[0, inf)")
    old_decay_rate: float = option(0.001, "the old policy's decay grows by this per optimizer step ...",
                                   range="[0, inf)")
    old_decay_max: float = option(0.5, "... up to this: old ← decay·old + (1 − decay)·θ after every update",
                                  range="[0, 1)")

    def validate(self, key: str, num_steps: int) -> None:
        """Invariants between options (each number's own range is its field's); none in the family's."""


def check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def final_samples(rollout: TensorDictBase) -> Tensor:
    """x₀ [n, *latent_shape], each trajectory's final sample: the one place that knows where a rollout keeps it."""
    return rollout.get(keys.ACTION)[:, -1]


class UnderWeights(TensorDictModuleBase):
    """The actor run with other weights swapped in (DiffusionNFT samples with its old policy)."""

    def __init__(self, actor, weights: ParameterEMA):
        super().__init__()
        self.actor, self.weights = actor, weights
        self.in_keys, self.out_keys = actor.in_keys, actor.out_keys

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        with self.weights.applied():
            return self.actor(td)


class ReNoisedObjective(Objective):
    """Reads rows of (x₀, t, ε seed, Â, context); evaluates θ, the old policy and the base at x_t."""

    @dataclass
    class _AcceptedKeys:
        sample: str = keys.SAMPLE
        time: str = keys.TIME
        eps_seed: str = keys.EPS_SEED
        advantage: str = keys.ADVANTAGE
        context: str = keys.CONTEXT

    def __init__(self, velocity, old: ParameterEMA, reference, beta: float):
        super().__init__()
        self.velocity, self.old, self.reference, self.beta = velocity, old, reference, beta

    def re_noised(self, rows: TensorDictBase) -> tuple[Tensor, Tensor, Tensor, Tensor, TensorDictBase]:
        """x₀, ε, t [S] and x_t = (1 − t)·x₀ + t·ε [S, *latent_shape], and the context."""
        k = self.tensor_keys
        x0, t = rows.get(k.sample).float(), rows.get(k.time).float()
        eps = initial_noise(rows.get(k.eps_seed).cpu(), x0.shape[1:]).to(x0)
        t_ = t.reshape(-1, *[1] * (x0.dim() - 1))
        return x0, eps, t, (1 - t_) * x0 + t_ * eps, rows.get(k.context)

    @torch.no_grad()
    def under(self, weights, x_t: Tensor, t: Tensor, context) -> Tensor:
        """The velocity with other weights in place (`weights()` a context): before θ's forward, whose graph
        must not see its parameters swapped."""
        with weights():
            return self.velocity(x_t, t, context)

    def kl_terms(self, v: Tensor, v_ref: Tensor | None) -> dict:
        if v_ref is None:
            return {}
        kl = ((v - v_ref) ** 2).mean()
        return {"loss_kl": self.beta * kl, "kl": kl.detach()}


class ForwardProcess(Algorithm):
    """Base of the family. A subclass states `defaults`, `options_class`, `sample_with_old`, which steps
    of the rollout's grid to train (`draw_steps`) and its objective (`objective`)."""

    sample_with_old: ClassVar[bool] = False  # rollouts from the old policy (DiffusionNFT) or from θ (AWM)

    def __init__(self, options, num_steps: int):
        super().__init__(options, num_steps)
        self.steps = 0  # optimizer steps taken: the clock of the old policy's decay

    def stochastic_steps(self) -> Tensor:
        return torch.zeros(self.num_steps, dtype=torch.bool)  # the ODE at every step

    def make_policy(self, adapter, sigmas: Tensor, *, micro_batch: int, calls):
        # σ_0 … σ_{K−1}: the levels the final samples are re-noised at (a rollout of ODE steps keeps
        # only its final sample, so the grid is kept here rather than read from it)
        self.grid = sigmas[:-1].float()
        actor = make_policy(adapter, sigmas, self.stochastic_steps(), "ode", micro_batch=micro_batch, calls=calls)
        self.old = ParameterEMA(adapter, decay=None)  # a copy of the weights the run starts from
        return UnderWeights(actor, self.old) if self.sample_with_old else actor

    def make_objective(self, policy, adapter) -> Objective:
        actor = policy.actor if isinstance(policy, UnderWeights) else policy
        return self.objective(velocity_module(actor), adapter)

    def objective(self, velocity, adapter) -> Objective:
        raise NotImplementedError(f"{type(self).__name__} must define objective")

    def advantages(self, rewards: Tensor, group_id: Tensor, clip: float) -> Tensor:
        return super().advantages(rewards, group_id, clip) / clip  # Â in [−1, 1]

    def draw_steps(self, num_trajectories: int, generator: torch.Generator) -> Tensor:
        """[N, M] indices of the rollout's steps whose σ each trajectory's rows are re-noised at."""
        raise NotImplementedError(f"{type(self).__name__} must define draw_steps")

    def training_batch(self, rollout: TensorDictBase, ctx: UpdateContext) -> TrajectoryRows:
        every = self.draw_steps(ctx.num_trajectories, ctx.generator)  # [N, M] on the global batch
        seeds = torch.randint(2**62, every.shape, generator=ctx.generator)
        x0 = final_samples(rollout)
        grid = self.grid.to(x0.device)
        steps, seeds = every[ctx.rows].to(x0.device), seeds[ctx.rows].to(x0.device)
        n, m = steps.shape
        rows = TensorDict({
            keys.SAMPLE: x0.unsqueeze(1).expand(n, m, *x0.shape[1:]), keys.TIME: grid[steps], keys.EPS_SEED: seeds,
            keys.ADVANTAGE: rollout.get(keys.ADVANTAGE)[:, :1].expand(n, m),
            keys.CONTEXT: rollout.get(keys.CONTEXT)[:, 0].unsqueeze(1).expand(n, m),
            keys.UNIT: torch.arange(n * m, device=x0.device).reshape(n, m),  # every row its own unit
        }, batch_size=[n, m], device=rollout.device)
        return TrajectoryRows(rows, {"t_mean": float(grid.cpu()[every].mean())})

    def after_step(self) -> None:
        self.steps += 1

    def after_update(self) -> None:
        o = self.options
        self.old.update(min(o.old_decay_rate * self.steps, o.old_decay_max))

    def state_dict(self) -> dict:
        # sharded tensors as they are (the checkpoint gathers them whole), the others copied to the CPU
        old = {k: v if sharding.is_sharded(v) else v.detach().cpu() for k, v in self.old.average.items()}
        return {"old": old, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.old.load(sharding.shard_like(state["old"], self.old.adapter))
        self.steps = state["steps"]
