"""Flow-GRPO parity (yifan123/flow_grpo): its SDE step, CPS step in both log-prob forms, the KL in
both forms, the SD3 pipeline's σ grid, the advantage, and the defaults of `flow_grpo`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrl import config, dynamics
from genrl.advantages import compute_advantages
from genrl.build import build_algorithm

from . import reference as ref
from .conftest import TOL

K, SHIFT, A = 10, 3.0, 0.7  # config/grpo.py geneval_sd3 (num_steps 10), SD3.5's shift 3, noise_level 0.7


def test_schedule_is_the_sd3_pipelines():
    torch.testing.assert_close(dynamics.sigma_schedule("diffusers", K, SHIFT).double(),
                               ref.diffusers_sigma_schedule(K, SHIFT), **TOL)
    torch.testing.assert_close(dynamics.sigma_schedule("diffusers", 40, 1.0).double(),
                               ref.diffusers_sigma_schedule(40, 1.0), **TOL)


def test_flow_sde_step_mean_std_and_log_prob(random_step_inputs):
    sigmas = dynamics.sigma_schedule("diffusers", K, SHIFT)
    x, v, x_next, sigma, sigma_next = random_step_inputs(sigmas)
    sigma_1 = float(sigmas[1])  # where σ = 1 the noise level's denominator uses σ_1 (the reference's σ_max)
    mean, std = dynamics.flow_sde_mean_std(x, v, sigma, sigma_next, a=A, sigma_1=sigma_1)
    log_prob = dynamics.gaussian_log_prob(x_next, mean, std)
    r_mean, r_noise_level, r_log_prob = ref.flow_grpo_sde_step(v, x, sigma, sigma_next, sigma_1, A, x_next)
    torch.testing.assert_close(mean, r_mean, **TOL)
    torch.testing.assert_close(std, r_noise_level * torch.sqrt(sigma - sigma_next), **TOL)
    torch.testing.assert_close(log_prob, r_log_prob, **TOL)
    assert torch.isfinite(log_prob).all() and sigma[0] == 1  # the σ = 1 step is covered


@pytest.mark.parametrize("form,reference_form", [("reference", True), ("gaussian", False)])
def test_cps_step_in_both_log_prob_forms(random_step_inputs, form, reference_form):
    sigmas = dynamics.sigma_schedule("diffusers", K, SHIFT)
    x, v, x_next, sigma, sigma_next = random_step_inputs(sigmas, seed=1)
    x, v, x_next, sigma, sigma_next = x[:-1], v[:-1], x_next[:-1], sigma[:-1], sigma_next[:-1]  # σ' > 0
    mean, std = dynamics.cps_mean_std(x, v, sigma, sigma_next, a=A)
    r_mean, r_std, r_log_prob = ref.flow_grpo_cps_step(v, x, sigma, sigma_next, A, x_next)
    torch.testing.assert_close(mean, r_mean, **TOL)
    torch.testing.assert_close(std, r_std, **TOL)
    cfg = config.load(overrides=["algorithm=flow_grpo", "flow_grpo.dynamics=cps", f"flow_grpo.cps_logprob={form}"])
    log_prob = dynamics.LOG_PROBS[build_algorithm(cfg).log_prob_form](x_next, mean, std)
    if reference_form:
        torch.testing.assert_close(log_prob, r_log_prob, **TOL)
    else:  # the exact density: the reference's −mean((x − μ)²) scaled by 1/(2s²), minus log s + log √(2π)
        expected = r_log_prob / (2 * r_std**2) - torch.log(r_std) - ref.LOG_SQRT_2PI
        torch.testing.assert_close(log_prob, expected, **TOL)
        exact = torch.distributions.Normal(r_mean, ref.col(r_std).expand_as(r_mean)).log_prob(x_next).flatten(1).mean(1)
        torch.testing.assert_close(log_prob, exact, **TOL)


def test_cps_log_ratio_scale_between_the_forms(random_step_inputs):
    """Same samples, two densities: the reference's log-ratios are 2s² times the Gaussian ones."""
    sigmas = dynamics.sigma_schedule("diffusers", K, SHIFT)
    x, v, x_next, sigma, sigma_next = (t[:-1] for t in random_step_inputs(sigmas, seed=2))
    mean_old, std = dynamics.cps_mean_std(x, v, sigma, sigma_next, a=A)
    mean_new, _ = dynamics.cps_mean_std(x, v + 1e-3, sigma, sigma_next, a=A)
    ratio = {name: f(x_next, mean_new, std) - f(x_next, mean_old, std) for name, f in dynamics.LOG_PROBS.items()}
    torch.testing.assert_close(ratio["squared_error"], 2 * std**2 * ratio["gaussian"], **TOL)


@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde", "cps"])
def test_kl_in_both_forms(random_step_inputs, kind):
    sigmas = dynamics.sigma_schedule("diffusers", K, SHIFT)
    x, v, _, sigma, sigma_next = (t[:-1] for t in random_step_inputs(sigmas, seed=3))
    v_ref = v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(4), dtype=v.dtype)
    params = {"eta": 0.3} if kind == "dance_sde" else {"a": A}
    if kind == "flow_sde":
        params["sigma_1"] = float(sigmas[1])
    mean, std = dynamics.MEAN_STD[kind](x, v, sigma, sigma_next, **params)
    ref_mean, _ = dynamics.MEAN_STD[kind](x, v_ref, sigma, sigma_next, **params)
    # Flow-GRPO's std_dev_t: the SDE's noise level (without √(−dt)); CPS's std itself
    if kind == "flow_sde":
        std_dev_t = ref.flow_grpo_sde_step(v, x, sigma, sigma_next, float(sigmas[1]), A, x)[1]
    elif kind == "dance_sde":
        std_dev_t = torch.full_like(sigma, 0.3)
    else:
        std_dev_t = ref.flow_grpo_cps_step(v, x, sigma, sigma_next, A, x)[1]
    for form, denominator in (("reference", std_dev_t), ("exact", std)):
        kl = dynamics.kl_to_reference(mean, ref_mean, dynamics.kl_std(form, kind, std, sigma, sigma_next))
        torch.testing.assert_close(kl, ref.flow_grpo_kl(mean, ref_mean, denominator), **TOL)
    exact = dynamics.kl_to_reference(mean, ref_mean, dynamics.kl_std("exact", kind, std, sigma, sigma_next))
    reference = dynamics.kl_to_reference(mean, ref_mean, dynamics.kl_std("reference", kind, std, sigma, sigma_next))
    factor = torch.ones_like(sigma) if kind == "cps" else 1 / (sigma - sigma_next)  # exact = reference / (−Δ)
    torch.testing.assert_close(exact, reference * factor, **TOL)


@pytest.mark.parametrize("estimator,global_std", [("global_std", True), ("per_prompt", False)])
def test_advantage_population_std_plus_1e_4(estimator, global_std):
    g = torch.Generator().manual_seed(5)
    rewards = torch.rand(6 * 4, generator=g, dtype=torch.float64)
    rewards[:4] = 0.25  # a group of equal rewards: the ε decides
    order = torch.randperm(24, generator=g)  # the reference matches prompts by name, in any order
    group_id = (torch.arange(24) // 4)[order]
    prompts = [f"prompt {int(i)}" for i in group_id]
    expected = ref.flow_grpo_advantages(prompts, rewards[order].numpy(), global_std)
    ours = compute_advantages(rewards[order], group_id, estimator, clip=float("inf"), std="population", eps=1e-4)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_flow_grpo_defaults_are_the_released_configs():
    o = config.from_dict({"algorithm": "flow_grpo"}).algo
    assert (o.dynamics, o.noise_level, o.schedule, o.shared_noise) == ("flow_sde", 0.7, "diffusers", False)
    assert (o.grouping, o.unit_fraction, o.sde_window) == ("per_step", 1.0, None)
    assert (o.advantage, o.advantage_std, o.advantage_eps) == ("global_std", "population", 1e-4)
    assert (o.clip_range, o.clip_range_high, o.beta, o.kl, o.cps_logprob) == (1e-4, None, 0.04, "reference", "reference")
    trained = build_algorithm(config.from_dict({"algorithm": "flow_grpo", "sampling": {"num_steps": K}})).stochastic_steps()
    assert int(trained.sum()) == int(K * 0.99) == 9 and bool(trained[: int(K * 0.99)].all())  # timestep_fraction 0.99


def test_kl_factor_range_quoted_in_the_docs():
    """At K = 10, shift 3 the exact KL is ×3.7 to ×25 the reference's over the trained steps."""
    sigmas = dynamics.sigma_schedule("diffusers", K, SHIFT)
    factor = 1 / (sigmas[:-2] - sigmas[1:-1])
    assert math.isclose(float(factor.min()), 3.7, abs_tol=0.05) and math.isclose(float(factor.max()), 25.1, abs_tol=0.1)
