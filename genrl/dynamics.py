"""One denoising step of a flow-matching model, as pure float32 tensor maths.

Convention of SD3 / FLUX (docs/architecture.md, "Dynamics"): x_σ = (1−σ)·x0 + σ·ε and the model
predicts the velocity v ≈ ε − x0. A step goes from σ to σ' < σ, Δ = σ' − σ.
Every kind maps (x, v, σ, σ') to the mean μ and the (per-sample) std s of a
Gaussian over the next latent; sampling and log-densities are shared.

There is no hidden state (unlike diffusers' scheduler step index): RL has to
re-evaluate any step of any trajectory in any order.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class StepOutput(NamedTuple):
    sample: Tensor  # x_{k+1}                 [B, ...]
    mean: Tensor  # μ                         [B, ...]
    std: Tensor  # s, one value per sample    [B]
    log_prob: Tensor  # log π(sample | x)     [B]


def flow_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """σ_0 = 1 > σ_1 > … > σ_K = 0, the schedule of diffusers' flow-matching Euler scheduler.

    Uses diffusers' own maths (shift σ ← sσ/(1+(s−1)σ)), so genrl samples on
    exactly the timesteps a diffusers pipeline uses.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.to(torch.float32).clone()


def flow_shift(sigma: Tensor, shift: float) -> Tensor:
    """σ ← sσ/(1+(s−1)σ), the flow shift of diffusers' schedulers (identity at s = 1)."""
    return sigma if shift == 1 else shift * sigma / (1 + (shift - 1) * sigma)


def linspace_shift_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """σ_k = s·t/(1+(s−1)·t) at t = linspace(1, 0, K+1): DanceGRPO's and Chunk-GRPO's schedule.

    XueZeyue/DanceGRPO, fastvideo/train_grpo_flux.py, sample_reference_model (and the
    same code in xingzhejun/GCPO) shift a uniform grid that ends at 0 itself; diffusers'
    grid ends at σ_min = 1/1000 before the final 0, so its last steps are much smaller
    (K = 17, shift 3: σ_16 = 0.158 here, 0.0089 in diffusers).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return flow_shift(t, shift).to(torch.float32)


SCHEDULES: dict[str, Callable[[int, float], Tensor]] = {
    "diffusers": flow_sigmas,  # Flow-GRPO: the pipeline's FlowMatchEulerDiscreteScheduler
    "linspace_shift": linspace_shift_sigmas,  # DanceGRPO, Chunk-GRPO: sd3_time_shift(shift, linspace(1, 0, K+1))
}


def sigma_schedule(name: str, num_steps: int, shift: float = 1.0) -> Tensor:
    """The K + 1 σ values of the schedule `name` (see SCHEDULES)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_steps, shift)


def _per_sample(value: Tensor | float, like: Tensor) -> Tensor:
    """σ or s as [B, 1, …, 1] so it broadcasts over a latent of any rank ([B, C, H, W], [B, C, F, H, W])."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.dim() - 1)))


def ode_mean_std(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    """Euler step of the probability-flow ODE: μ = x + Δ·v, s = 0."""
    delta = _per_sample(sigma_next, x) - _per_sample(sigma, x)
    return x + delta * v, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def _score_drift_step(x: Tensor, v: Tensor, sig: Tensor, delta: Tensor, g: Tensor) -> Tensor:
    # Reverse SDE with the score s(x) = −(x + (1−σ)v)/σ of x_σ = (1−σ)x0 + σε:
    # μ = x + [v + g²/(2σ)·(x + (1−σ)·v)]·Δ   (Flow-GRPO eq. 9, DanceGRPO eq. 6)
    return x + (v + g**2 / (2 * sig) * (x + (1 - sig) * v)) * delta


def flow_sde_mean_std(
    x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, *, a: float = 0.7, sigma_1: float | Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Flow-GRPO SDE: g = a·√(σ/(1−σ)), s = g·√(−Δ).

    At σ = 1 the noise level is infinite, so the denominator uses σ_1 (the
    second schedule value) there, as the reference implementation does.
    """
    sig, sig_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    delta = sig_next - sig
    denominator_sigma = sig if sigma_1 is None else torch.where(sig >= 1, _per_sample(sigma_1, x), sig)
    g = a * torch.sqrt(sig / (1 - denominator_sigma))
    mean = _score_drift_step(x, v, sig, delta, g)
    return mean, (g * torch.sqrt(-delta)).reshape(-1)


def dance_sde_mean_std(
    x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, *, eta: float = 0.3
) -> tuple[Tensor, Tensor]:
    """DanceGRPO SDE: the same drift with a constant g = η, s = η·√(−Δ)."""
    sig, sig_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    delta = sig_next - sig
    g = torch.full_like(sig, eta)
    mean = _score_drift_step(x, v, sig, delta, g)
    return mean, (g * torch.sqrt(-delta)).reshape(-1)


def cps_mean_std(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, *, a: float = 0.7) -> tuple[Tensor, Tensor]:
    """Coefficient-preserving sampling: μ = (1−σ')·x̂0 + √(σ'² − s²)·ε̂, s = σ'·sin(aπ/2).

    x̂0 = x − σv and ε̂ = x + (1−σ)v are the model's estimates of data and noise;
    the total noise coefficient of the next latent stays exactly σ'.
    """
    sig, sig_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    std = sig_next * math.sin(a * math.pi / 2)
    x0_hat = x - sig * v
    eps_hat = x + (1 - sig) * v
    mean = (1 - sig_next) * x0_hat + torch.sqrt(torch.clamp(sig_next**2 - std**2, min=0)) * eps_hat
    return mean, std.reshape(-1)


MEAN_STD: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "ode": ode_mean_std,
    "flow_sde": flow_sde_mean_std,
    "dance_sde": dance_sde_mean_std,
    "cps": cps_mean_std,
}


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor, reduce: str = "mean") -> Tensor:
    """log N(sample; μ, s² I) reduced over all non-batch dims; 0 where s = 0.

    `mean` reduction (the references' choice) keeps ratios near 1 whatever the
    image size; `sum` is the exact joint density.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"logprob_reduce must be 'mean' or 'sum', got {reduce!r}")
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    s = _per_sample(safe_std, sample)
    elementwise = -((sample - mean) ** 2) / (2 * s**2) - torch.log(s) - _LOG_SQRT_2PI
    dims = tuple(range(1, sample.dim()))
    reduced = elementwise.mean(dims) if reduce == "mean" else elementwise.sum(dims)
    return torch.where(stochastic, reduced, torch.zeros_like(reduced))


def squared_error_log_prob(sample: Tensor, mean: Tensor, std: Tensor, reduce: str = "mean") -> Tensor:
    """−(x − μ)² reduced over all non-batch dims; 0 where s = 0.

    Flow-GRPO's CPS log-prob (yifan123/flow_grpo, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py,
    sde_step_with_logprob, sde_type "cps": "remove all constants"). It drops the Gaussian's 1/(2s²)
    and log s, so a log-ratio is 2s² times the Gaussian one: the same clip range is a different
    trust region (at σ' = 0.5, a = 0.7: ×0.40; at σ' = 0.001: ×1.6·10⁻⁶).
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"logprob_reduce must be 'mean' or 'sum', got {reduce!r}")
    elementwise = -((sample - mean) ** 2)
    dims = tuple(range(1, sample.dim()))
    reduced = elementwise.mean(dims) if reduce == "mean" else elementwise.sum(dims)
    return torch.where(std > 0, reduced, torch.zeros_like(reduced))


LOG_PROBS: dict[str, Callable[..., Tensor]] = {
    "gaussian": gaussian_log_prob,
    "squared_error": squared_error_log_prob,
}


def step(
    kind: str,
    x: Tensor,
    v: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    noise: Tensor | None = None,
    *,
    reduce: str = "mean",
    log_prob: str = "gaussian",
    **params,
) -> StepOutput:
    """x_{k+1} = μ + s·noise and its log-density (LOG_PROBS[log_prob]). `noise=None` returns the mean."""
    if kind not in MEAN_STD:
        raise ValueError(f"unknown dynamics {kind!r}; choose one of {sorted(MEAN_STD)}")
    x, v = x.float(), v.float()
    mean, std = MEAN_STD[kind](x, v, sigma, sigma_next, **params)
    sample = mean if noise is None else mean + _per_sample(std, mean) * noise
    return StepOutput(sample, mean, std, LOG_PROBS[log_prob](sample, mean, std, reduce))


def _sde_noise_level(std: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    # s = g·√(−Δ) for both SDE kinds, so g = s / √(σ − σ')
    return std / torch.sqrt(torch.as_tensor(sigma - sigma_next, dtype=std.dtype, device=std.device))


# The std_dev_t that Flow-GRPO's sde_step_with_logprob returns, which its training loss divides
# by: the noise level g without the √(−Δ) factor for the SDEs, the step's std itself for CPS.
REFERENCE_KL_STD: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "ode": lambda std, sigma, sigma_next: std,
    "flow_sde": _sde_noise_level,
    "dance_sde": _sde_noise_level,
    "cps": lambda std, sigma, sigma_next: std,
}
KL_FORMS = ("reference", "exact")


def kl_std(form: str, kind: str, std: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """The s_KL [B] of KL = mean((μ_θ − μ_ref)²) / (2·s_KL²) for each KL form.

    "exact": the step's std s, so KL is the KL divergence of the two Gaussian steps.
    "reference": Flow-GRPO's (yifan123/flow_grpo, scripts/train_sd3.py, main, kl_loss), which
    divides by 2g² for the SDEs: at the same β the exact penalty is 1/(−Δ) times the reference's
    (×3.7 to ×25 over the steps of K = 10, shift 3); β_exact = β_reference·(−Δ) gives the same
    penalty at a step. For CPS (s = σ'·sin(aπ/2) has no √(−Δ)) both forms agree.
    """
    if form == "exact":
        return std
    if form != "reference":
        raise ValueError(f"kl must be one of {KL_FORMS}, got {form!r}")
    return REFERENCE_KL_STD[kind](std, sigma, sigma_next)


def kl_to_reference(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL(N(μ_θ, s²) ‖ N(μ_ref, s²)) per element, averaged: mean((μ_θ − μ_ref)² / (2s²)); 0 where s = 0.

    With `std` from `kl_std(form, …)` this is either KL form."""
    stochastic = std > 0
    s = _per_sample(torch.where(stochastic, std, torch.ones_like(std)), mean)
    kl = ((mean - ref_mean) ** 2 / (2 * s**2)).mean(tuple(range(1, mean.dim())))
    return torch.where(stochastic, kl, torch.zeros_like(kl))


def relative_l1(x: Tensor, x_next: Tensor, batch_dims: int = 1) -> Tensor:
    """‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ over the dims after the first `batch_dims`: the temporal dynamics
    of a step (L1rel, Chunk-GRPO §3.2), which its dynamic grouping follows."""
    dims = tuple(range(batch_dims, x.dim()))
    return (x_next - x).abs().sum(dims) / x.abs().sum(dims).clamp(min=1e-12)
