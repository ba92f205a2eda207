"""The three references' formulas, re-derived here in float64 from their public code.

Written for this test suite from the references' equations (not copied): each function cites
the repository, file and function whose computation it reproduces, and keeps that code's
algebraic form (which is not genrl's), so that an agreement is a check of the algebra.

- Flow-GRPO: yifan123/flow_grpo (ac4c86e; CPS at 54809b5)
- DanceGRPO: XueZeyue/DanceGRPO (15cc71d)
- Chunk-GRPO / GCPO: xingzhejun/GCPO (ea6cc4d), a fork of DanceGRPO
- The σ grid of Flow-GRPO's SD3 pipeline: huggingface/diffusers, FlowMatchEulerDiscreteScheduler
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def batch_mean(t: Tensor) -> Tensor:
    """Mean over every dimension but the first (the references' `.mean(dim=tuple(range(1, ndim)))`)."""
    return t.flatten(1).mean(1)


def col(t: Tensor) -> Tensor:
    """[B] → [B, 1, 1, 1], the references' `.view(-1, 1, 1, 1)`."""
    return t.reshape(-1, 1, 1, 1)


# --- σ schedules -------------------------------------------------------------------------


def sd3_time_shift(shift: float, t: Tensor) -> Tensor:
    """DanceGRPO fastvideo/train_grpo_flux.py and GCPO fastvideo/utils/common_utils.py, sd3_time_shift."""
    return (shift * t) / (1 + (shift - 1) * t)


def dance_sigma_schedule(sampling_steps: int, shift: float) -> Tensor:
    """DanceGRPO / GCPO sample_reference_model: sd3_time_shift(shift, linspace(1, 0, steps + 1)), float32."""
    return sd3_time_shift(shift, torch.linspace(1, 0, sampling_steps + 1))


def diffusers_sigma_schedule(num_inference_steps: int, shift: float, num_train_timesteps: int = 1000) -> Tensor:
    """FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(K).sigmas, as Flow-GRPO's SD3 pipeline uses it.

    __init__: σ = shift(t/N) for t = N, …, 1, so σ_max = 1 and σ_min = shift(1/N);
    set_timesteps: K timesteps linspace(σ_max·N, σ_min·N), divided by N, shifted again, then a final 0.
    """
    sigma_min = float(sd3_time_shift(shift, torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64)))
    grid = torch.linspace(1.0 * num_train_timesteps, sigma_min * num_train_timesteps, num_inference_steps,
                          dtype=torch.float64) / num_train_timesteps
    return torch.cat([sd3_time_shift(shift, grid), torch.zeros(1, dtype=torch.float64)])


# --- one step -----------------------------------------------------------------------------


def flow_grpo_sde_step(model_output, sample, sigma, sigma_prev, sigma_max, noise_level, prev_sample):
    """Flow-GRPO flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_step_with_logprob (sde_type "sde");
    the same step is GCPO's train_grpo_flux_hpsv3.py, flow_grpo_step. Returns (mean, std_dev_t, log_prob).

    std_dev_t is the noise level a·√(σ/(1−σ)) (σ_max = the second schedule value where σ = 1); the
    sample's std is std_dev_t·√(−dt)."""
    sigma, sigma_prev = col(sigma), col(sigma_prev)
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, torch.full_like(sigma, sigma_max), sigma))) * noise_level
    mean = (sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
            + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt)
    noise_std = std_dev_t * torch.sqrt(-dt)
    log_prob = batch_mean(-((prev_sample - mean) ** 2) / (2 * noise_std**2) - torch.log(noise_std) - LOG_SQRT_2PI)
    return mean, std_dev_t.flatten(), log_prob


def flow_grpo_cps_step(model_output, sample, sigma, sigma_prev, noise_level, prev_sample):
    """Flow-GRPO sde_step_with_logprob, sde_type "cps" (54809b5): x̂0 and x̂1 recombined with σ'·sin(aπ/2)
    of fresh noise; the log-prob keeps only −(x − μ)² ("remove all constants"). Returns (mean, std, log_prob)."""
    sigma, sigma_prev = col(sigma), col(sigma_prev)
    std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)
    pred_original_sample = sample - sigma * model_output
    noise_estimate = sample + model_output * (1 - sigma)
    mean = pred_original_sample * (1 - sigma_prev) + noise_estimate * torch.sqrt(sigma_prev**2 - std_dev_t**2)
    return mean, std_dev_t.flatten(), batch_mean(-((prev_sample - mean) ** 2))


def dance_grpo_flux_step(model_output, latents, eta, sigma, sigma_next, prev_sample):
    """DanceGRPO fastvideo/train_grpo_flux.py, flux_step (sde_solver=True, grpo=True): the Euler step
    plus −η²/2·score·dσ, score = −(x − (1−σ)·x̂0)/σ². Returns (mean, std, log_prob)."""
    sigma, sigma_next = col(sigma), col(sigma_next)
    dsigma = sigma_next - sigma
    mean = latents + dsigma * model_output
    pred_original_sample = latents - sigma * model_output
    std_dev_t = eta * torch.sqrt(sigma - sigma_next)
    score_estimate = -(latents - pred_original_sample * (1 - sigma)) / sigma**2
    mean = mean + (-0.5 * eta**2 * score_estimate) * dsigma
    log_prob = batch_mean(-((prev_sample - mean) ** 2) / (2 * std_dev_t**2) - torch.log(std_dev_t) - LOG_SQRT_2PI)
    return mean, std_dev_t.flatten(), log_prob


def flow_grpo_kl(prev_sample_mean, prev_sample_mean_ref, std_dev_t):
    """Flow-GRPO scripts/train_sd3.py, main, kl_loss: ((μ − μ_ref)²).mean(dims) / (2·std_dev_t²), per sample
    (std_dev_t [B], one value per sample as the step returns it)."""
    return batch_mean((prev_sample_mean - prev_sample_mean_ref) ** 2) / (2 * std_dev_t.flatten() ** 2)


# --- advantages ---------------------------------------------------------------------------


def flow_grpo_advantages(prompts: list[str], rewards: np.ndarray, global_std: bool) -> np.ndarray:
    """Flow-GRPO flow_grpo/stat_tracking.py, PerPromptStatTracker.update (type "grpo"): per-prompt mean,
    numpy's (population) std of the prompt's rewards or of the whole batch, + 1e-4."""
    prompts_arr = np.array(prompts)
    rewards = np.asarray(rewards, dtype=np.float64)
    advantages = np.zeros_like(rewards)
    for prompt in np.unique(prompts_arr):
        group = rewards[prompts_arr == prompt]
        std = (np.std(rewards) if global_std else np.std(group)) + 1e-4
        advantages[prompts_arr == prompt] = (group - np.mean(group)) / std
    return advantages


def dance_grpo_advantages(rewards: Tensor, num_generations: int, use_global_std: bool = False) -> Tensor:
    """DanceGRPO train_grpo_flux.py and GCPO train_grpo_flux_hpsv3.py, train_one_step (--use_group): the
    G = num_generations samples of a prompt are consecutive; torch's Bessel-corrected .std() + 1e-8
    (GCPO's --use_global_std: one std of all the rewards)."""
    advantages = torch.zeros_like(rewards)
    for start in range(0, len(rewards), num_generations):
        group = rewards[start : start + num_generations]
        std = (rewards.std() if use_global_std else group.std()) + 1e-8
        advantages[start : start + num_generations] = (group - group.mean()) / std
    return advantages


# --- chunks and the clipped loss (GCPO) -----------------------------------------------------


def gcpo_chunk_of_step(chunk_sizes: list[int]) -> list[int]:
    """GCPO train_one_step: torch.split(samples, chunk_sizes, dim=1) over the trained steps, high noise first."""
    steps = torch.arange(sum(chunk_sizes))
    out = [0] * len(steps)
    for c, piece in enumerate(torch.split(steps, chunk_sizes)):
        for s in piece.tolist():
            out[s] = c
    return out


def gcpo_chunk_ratio(new_step_log_probs: Tensor, old_step_log_probs: Tensor, chunk_sizes: list[int]) -> Tensor:
    """GCPO: the old chunk log-prob is the mean of the stored step log-probs of the chunk, the new one the
    mean of the re-evaluated ones (grpo_one_step); ratio = exp(new − old). [B, S] → [B, num_chunks]."""
    new = torch.stack([c.mean(dim=1) for c in torch.split(new_step_log_probs, chunk_sizes, dim=1)], dim=1)
    old = torch.stack([c.mean(dim=1) for c in torch.split(old_step_log_probs, chunk_sizes, dim=1)], dim=1)
    return torch.exp(new - old)


def gcpo_policy_loss(ratio: Tensor, advantages: Tensor, clip_range: float, right_clip_range: float,
                     adv_clip_max: float = 5.0) -> Tensor:
    """GCPO train_one_step: max(−A·ρ, −A·clamp(ρ, 1 − clip_range, 1 + right_clip_range)), A clamped to ±5;
    elementwise, before the mean."""
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + right_clip_range)
    return torch.maximum(unclipped, clipped)


def gcpo_draw_chunks(num_trajectories: int, num_chunks: int, timestep_fraction: float, generator) -> list[set]:
    """GCPO train_one_step without --sample_weight: a random permutation of the chunks per trajectory,
    the first int(num_chunks · timestep_fraction) trained."""
    train_chunks = int(num_chunks * timestep_fraction)
    return [set(torch.randperm(num_chunks, generator=generator)[:train_chunks].tolist())
            for _ in range(num_trajectories)]


def gcpo_chunk_weights(latents: Tensor, next_latents: Tensor, chunk_sizes: list[int], method: str) -> Tensor:
    """GCPO train_one_step with --sample_weight: L1 change / mean |x| per step (mean over the latent),
    averaged per chunk, + 1e-8, then normalised (L1) or softmaxed. latents [B, S, ...] → [B, num_chunks]."""
    dims = tuple(range(2, latents.dim()))
    l1 = (next_latents - latents).abs().mean(dim=dims) / (latents.abs().mean(dim=dims) + 1e-8)
    weights = torch.cat([c.mean(dim=1, keepdim=True) for c in torch.split(l1, chunk_sizes, dim=1)], dim=1) + 1e-8
    if method == "normalized":
        return weights / weights.abs().sum(dim=1, keepdim=True)
    return torch.softmax(weights, dim=1)
