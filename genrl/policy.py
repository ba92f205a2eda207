"""The denoising policy as a torchrl module chain (docs/architecture.md, "The rollout").

    VelocityModule   (latents, sigma, context)  -> velocity     v_θ with guidance
    DynamicsHead     (latents, velocity, step)  -> loc, scale   μ_θ, s_k of the step's dynamics
    ProbabilisticActor over StepGaussian        -> action, log_prob

The model always runs in micro-batches of one fixed shape (the tail padded):
row results then do not depend on the batch they came in, so re-evaluating a
stored action with unchanged weights gives a ratio of exactly 1 at any batch
size, where the references drift because kernels differ by batch shape.

Every call of the denoiser through a policy is charged to its `ModelCalls`: the run's
NFE count, and (sharded training) the lockstep that makes every process call the
model equally often.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torchrl.modules import ProbabilisticActor

from genrl import dynamics, keys
from genrl.models.base import ModelAdapter


def fixed_shape_calls(fn, batch_size: int, micro_batch: int, *tensors, min_calls: int = 0):
    """Run `fn(*rows)` on slices of exactly `micro_batch` rows, padding the last by repeating its final row.

    `min_calls` adds calls on padding rows until there are that many: a sharded model must be called
    equally often on every process. Their outputs stay in the graph (sliced away after the
    concatenation), so backward also passes through every call on every process.
    """
    outputs = []
    for start in range(0, max(batch_size, min_calls * micro_batch), micro_batch):
        rows = [t[min(start, batch_size - 1) : min(start + micro_batch, batch_size)] for t in tensors]
        pad = micro_batch - rows[0].shape[0]
        if pad:
            rows = [torch.cat([r, r[-1:].expand(pad, *r.shape[1:])]) for r in rows]
        outputs.append(fn(*rows))
    return torch.cat(outputs)[:batch_size]


class ModelCalls:
    """The denoiser's evaluations through a policy (rollout, objective, reference, an "old" policy).

    `nfe` counts model evaluations of real rows (CFG counting two): the run's NFE budget.
    Padding rows of a fixed-shape call are not counted, nor calls made under `lockstep`
    with counted=False (a sharded run's filler passes, which are not work the budget pays for).
    """

    def __init__(self):
        self.nfe = 0
        self.min_rows = 0  # call the model at least as often as this many rows need
        self.counted = True

    def charge(self, rows: int, nfe_per_row: int) -> None:
        if self.counted:
            self.nfe += rows * nfe_per_row

    def take(self) -> int:
        """The evaluations since the last take (and start counting afresh)."""
        nfe, self.nfe = self.nfe, 0
        return nfe

    @contextlib.contextmanager
    def lockstep(self, min_rows: int, counted: bool = True) -> Iterator[None]:
        """Within: every forward calls the model as often as `min_rows` rows need, and its calls are
        charged only if `counted`. A sharded model gathers its parameters collectively in each call,
        so every process must call it equally often (genrl.passes)."""
        self.min_rows, self.counted = min_rows, counted
        try:
            yield
        finally:
            self.min_rows, self.counted = 0, True


class VelocityModule(nn.Module):
    """v_θ(x, σ, c) through the adapter, in fixed-shape micro-batches, charged to `calls`."""

    def __init__(self, adapter: ModelAdapter, micro_batch: int = 16, calls: ModelCalls | None = None):
        super().__init__()
        self.adapter = adapter
        self.micro_batch = micro_batch
        self.calls = calls if calls is not None else ModelCalls()

    def forward(self, latents: Tensor, sigma: Tensor, context: TensorDict) -> Tensor:
        """Rows of any batch shape (a flat batch [S], a rollout [N, K]): the latents' leading dims."""
        latent_dims = len(self.adapter.latent_shape)
        batch = latents.shape[:-latent_dims]
        n = batch.numel()
        self.calls.charge(n, self.adapter.nfe_per_velocity)
        flat = context.reshape(-1) if context.batch_dims > 1 else context
        # TensorDict rows are padded with the tensors, keeping the call shape fixed.
        items = [(k, v) for k, v in flat.items(include_nested=True, leaves_only=True)]
        names = [k for k, _ in items]

        def call(x, s, *cond_values):
            cond = TensorDict(dict(zip(names, cond_values)), batch_size=[x.shape[0]])
            return self.adapter.velocity(x, s, cond)

        velocity = fixed_shape_calls(
            call, n, self.micro_batch, latents.reshape(n, *latents.shape[-latent_dims:]),
            sigma.reshape(n), *[v for _, v in items], min_calls=-(-self.calls.min_rows // self.micro_batch),
        )
        return velocity.reshape(*batch, *velocity.shape[1:])


class DynamicsHead(nn.Module):
    """(x_k, v, k) -> (μ, s): the step's SDE where `stochastic[k]`, the ODE step elsewhere."""

    def __init__(self, sigmas: Tensor, stochastic: Tensor, kind: str, noise_multiplier: Tensor | None = None, **params):
        super().__init__()
        if kind not in dynamics.MEAN_STD:
            raise ValueError(f"unknown dynamics {kind!r}; choose one of {sorted(dynamics.MEAN_STD)}")
        self.register_buffer("sigmas", sigmas.float())  # [K + 1]
        self.register_buffer("stochastic", stochastic.bool().to(sigmas.device))  # [K], indexed by steps on that device
        # [K] factor on the SDE std of each step (a tree's noisier forks, genrl.envs.structures); None: 1
        self.noise_multiplier = None if noise_multiplier is None else noise_multiplier.float().to(sigmas.device)
        self.kind = kind
        self.params = dict(params)
        if kind == "flow_sde":
            self.params.setdefault("sigma_1", float(sigmas[1]))

    def step_sigmas(self, step: Tensor) -> tuple[Tensor, Tensor]:
        """σ and σ' [B] of each row's step."""
        step = step.reshape(-1).long()
        return self.sigmas[step], self.sigmas[step + 1]

    def forward(self, latents: Tensor, velocity: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of any batch shape: `step`'s ([S], or [N, K] for a rollout); μ has the latents' shape, s the steps'."""
        return self.loc_scale(latents, velocity, step, self.stochastic[step.reshape(-1).long()])

    def loc_scale(self, latents: Tensor, velocity: Tensor, step: Tensor, stochastic: Tensor) -> tuple[Tensor, Tensor]:
        """μ, s with the SDE where the row's flag `stochastic` ([S] bool) is set, the ODE elsewhere: a tree's
        edges of one step may differ (genrl.envs.tree)."""
        batch = step.shape
        step = step.reshape(-1).long()
        x = latents.reshape(len(step), *latents.shape[len(batch):]).float()
        v = velocity.reshape(x.shape).float()
        sigma, sigma_next = self.step_sigmas(step)
        sde_mean, sde_std = dynamics.MEAN_STD[self.kind](x, v, sigma, sigma_next, **self.params)
        ode_mean, _ = dynamics.ode_mean_std(x, v, sigma, sigma_next)
        if self.noise_multiplier is not None:
            sde_std = sde_std * self.noise_multiplier[step]
        mask = stochastic.reshape(-1, *([1] * (x.dim() - 1)))
        loc = torch.where(mask, sde_mean, ode_mean)
        scale = torch.where(stochastic, sde_std, torch.zeros_like(sde_std))
        return loc.reshape(*batch, *loc.shape[1:]), scale.reshape(batch)


class StepGaussian(Distribution):
    """N(loc, scale² I) with one scale per sample and a log-density reduced over the latent.

    The batch shape is the scale's ([S] rows, or [N, K] for a whole rollout, as torchrl's losses
    pass it); the event is one latent.

    `log_prob_form` names the density in dynamics.LOG_PROBS: "gaussian" (the exact one), or
    "squared_error" (Flow-GRPO's CPS form without constants, see dynamics.squared_error_log_prob).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.greater_than_eq(0)}
    has_rsample = True

    def __init__(
        self, loc: Tensor, scale: Tensor, seed: Tensor | None = None, step: Tensor | None = None, reduce: str = "mean",
        log_prob_form: str = "gaussian",
    ):
        if log_prob_form not in dynamics.LOG_PROBS:
            raise ValueError(f"unknown log-prob form {log_prob_form!r}; choose one of {sorted(dynamics.LOG_PROBS)}")
        batch = scale.shape
        self.loc, self.scale, self.reduce = loc, scale, reduce
        self.log_prob_form = log_prob_form
        self.seed, self.step = seed, step
        super().__init__(batch_shape=batch, event_shape=loc.shape[len(batch):], validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        if sample_shape or self.seed is None:
            noise = torch.randn(tuple(sample_shape) + tuple(self.loc.shape), dtype=self.loc.dtype, device=self.loc.device)
        else:
            noise = step_noise(self.seed.reshape(-1), self.step.reshape(-1), self.event_shape, self.loc.device)
            noise = noise.reshape(self.loc.shape)
        return self.loc + self.scale.reshape(*self.batch_shape, *([1] * len(self.event_shape))) * noise

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def deterministic_sample(self) -> Tensor:
        return self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        flat = (-1, *self.event_shape)
        log_prob = dynamics.LOG_PROBS[self.log_prob_form](
            value.reshape(flat), self.loc.reshape(flat), self.scale.reshape(-1), self.reduce)
        return log_prob.reshape(self.batch_shape)


def step_noise(seeds: Tensor, steps: Tensor, shape: torch.Size, device: torch.device) -> Tensor:
    """ε ~ N(0, I) per row from a generator keyed by (trajectory seed, step): layout-independent sampling."""
    rows = []
    for seed, step in zip(seeds.tolist(), steps.tolist()):
        generator = torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % 2**63)
        rows.append(torch.randn(tuple(shape), generator=generator, device=device))
    return torch.stack(rows)


def stochastic_steps(num_steps: int, sde_window: list | None = None) -> Tensor:
    """[K] bool: steps sampled with the SDE. The last step (σ' = 0) is always deterministic."""
    mask = torch.zeros(num_steps, dtype=torch.bool)
    if sde_window is None:
        mask[: num_steps - 1] = True
    else:
        start, size = sde_window
        mask[start : start + size] = True
    mask[num_steps - 1] = False
    return mask


def make_policy(
    adapter: ModelAdapter,
    sigmas: Tensor,
    stochastic: Tensor,
    kind: str = "flow_sde",
    *,
    micro_batch: int = 16,
    logprob_reduce: str = "mean",
    log_prob_form: str = "gaussian",
    calls: ModelCalls | None = None,
    noise_multiplier: Tensor | None = None,
    **dynamics_params,
) -> ProbabilisticActor:
    """The actor: writes loc, scale, action and log_prob into a TensorDict holding latents, sigma, step and context.

    Its model evaluations are charged to `calls` (a fresh ModelCalls if none is given).
    """
    velocity = TensorDictModule(
        VelocityModule(adapter, micro_batch, calls), in_keys=[keys.LATENTS, keys.SIGMA, keys.CONTEXT], out_keys=[keys.VELOCITY]
    )
    head = TensorDictModule(
        DynamicsHead(sigmas, stochastic, kind, noise_multiplier, **dynamics_params),
        in_keys=[keys.LATENTS, keys.VELOCITY, keys.STEP],
        out_keys=[keys.LOC, keys.SCALE],
    )
    return ProbabilisticActor(
        TensorDictSequential(velocity, head),
        in_keys={"loc": keys.LOC, "scale": keys.SCALE, "seed": keys.STEP_SEED, "step": keys.STEP},
        out_keys=[keys.ACTION],
        distribution_class=StepGaussian,
        distribution_kwargs={"reduce": logprob_reduce, "log_prob_form": log_prob_form},
        return_log_prob=True,
        log_prob_key=keys.LOG_PROB,
        default_interaction_type=InteractionType.RANDOM,
    )


def mean_module(policy: ProbabilisticActor) -> TensorDictSequential:
    """The velocity → (loc, scale) chain of the actor, without sampling."""
    return policy.module[0]


def velocity_module(policy: ProbabilisticActor) -> VelocityModule:
    """The actor's velocity model, (latents, sigma, context) -> v: an objective that evaluates the
    model outside the actor's distribution (e.g. at re-noised samples) calls it, so the calls are counted."""
    return policy.module[0][0].module


def dynamics_head(policy: ProbabilisticActor) -> DynamicsHead:
    return policy.module[0][1].module


def sampler_module(policy: ProbabilisticActor):
    """The actor's last module: (loc, scale, step seed, step) -> action, log_prob (a tree draws its
    children's noise with it from parents' means)."""
    return policy.module[1]
