"""DanceGRPO parity (XueZeyue/DanceGRPO): its SDE step, its σ grid, the per-group advantage with the
Bessel-corrected std, the timestep fraction, and the defaults of `dance_grpo`."""

from __future__ import annotations

import torch

from genrl import config, dynamics
from genrl.advantages import compute_advantages
from genrl.algorithms import grouping
from genrl.build import build_algorithm

from . import reference as ref
from .conftest import TOL

K, SHIFT, ETA = 16, 3.0, 0.3  # scripts/finetune/finetune_flux_grpo_8gpus.sh: --sampling_steps 16 --shift 3 --eta 0.3


def test_schedule_is_the_shifted_linspace():
    for steps in (K, 10, 17):
        torch.testing.assert_close(dynamics.sigma_schedule("linspace_shift", steps, SHIFT),
                                   ref.dance_sigma_schedule(steps, SHIFT), **TOL)


def test_dance_sde_step_mean_std_and_log_prob(random_step_inputs):
    sigmas = dynamics.sigma_schedule("linspace_shift", K, SHIFT)
    x, v, x_next, sigma, sigma_next = random_step_inputs(sigmas, seed=10)
    mean, std = dynamics.dance_sde_mean_std(x, v, sigma, sigma_next, eta=ETA)
    r_mean, r_std, r_log_prob = ref.dance_grpo_flux_step(v, x, ETA, sigma, sigma_next, x_next)
    torch.testing.assert_close(mean, r_mean, **TOL)
    torch.testing.assert_close(std, r_std, **TOL)
    torch.testing.assert_close(dynamics.gaussian_log_prob(x_next, mean, std), r_log_prob, **TOL)


def test_advantage_unbiased_std_plus_1e_8():
    g = torch.Generator().manual_seed(11)
    rewards = torch.rand(4 * 12, generator=g)  # 4 prompts x 12 generations, consecutive as in the reference
    rewards[12:24] = 0.5  # equal rewards: 0 / (0 + 1e-8)
    group_id = torch.arange(48) // 12
    ours = compute_advantages(rewards, group_id, "per_prompt", clip=float("inf"), std="unbiased", eps=1e-8)
    torch.testing.assert_close(ours, ref.dance_grpo_advantages(rewards, 12), **TOL)
    ours_global = compute_advantages(rewards, group_id, "global_std", clip=float("inf"), std="unbiased", eps=1e-8)
    torch.testing.assert_close(ours_global, ref.dance_grpo_advantages(rewards, 12, use_global_std=True), **TOL)


def test_timestep_fraction_trains_int_fraction_of_the_steps_uniformly():
    """train_one_step: a random permutation of the K − 1 trained steps, the first int((K − 1)·0.6) trained."""
    cfg = config.from_dict({"algorithm": "dance_grpo", "sampling": {"num_steps": K}})
    algorithm = build_algorithm(cfg)
    n = 3000
    units = algorithm.units(torch.rand(n, K), 0, torch.Generator().manual_seed(12))
    trained = units.assignment >= 0  # [n, K]
    assert (trained.sum(1) == int((K - 1) * 0.6)).all() and int((K - 1) * 0.6) == 9
    assert not trained[:, -1].any()  # the last step is never trained
    frequency = trained[:, :-1].float().mean(0)  # each step is drawn with probability 9/15
    assert (frequency - 9 / 15).abs().max() < 0.04
    assert grouping.draw_units.__doc__ and "int(len" in grouping.draw_units.__doc__


def test_dance_grpo_defaults_are_the_released_script():
    o = config.from_dict({"algorithm": "dance_grpo"}).algo
    assert (o.dynamics, o.noise_level, o.shift, o.schedule, o.shared_noise) == ("dance_sde", ETA, SHIFT, "linspace_shift", True)
    assert (o.grouping, o.grouping_options, o.unit_fraction) == ("random_subset", {"fraction": 0.6}, 1.0)
    assert (o.advantage, o.advantage_std, o.advantage_eps) == ("per_prompt", "unbiased", 1e-8)
    assert (o.clip_range, o.clip_range_high, o.beta) == (1e-4, None, 0.0)
