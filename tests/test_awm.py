"""Advantage Weighted Matching's loss and timestep draw (algorithms/awm.py) against the reference's formulas."""

import pytest
import torch

from genrl import config
from genrl.algorithms.awm import AWM, awm_loss

S, SHAPE = 6, (2, 3, 3)


def case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(S, *SHAPE, generator=g, dtype=torch.float64), torch.randn(S, *SHAPE, generator=g, dtype=torch.float64)
    v = (eps - x0) + 0.5 * torch.randn(S, *SHAPE, generator=g, dtype=torch.float64)
    t = torch.rand(S, generator=g, dtype=torch.float64) * 0.9 + 0.05
    advantage = torch.rand(S, generator=g, dtype=torch.float64) * 2 - 1
    return x0, eps, v, t, advantage


def gradient(fn, v):
    v = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(v).sum(), v)
    return grad


def reference_log_prob(model_output, random_noise, clean_latents, timestep, ghuber_power):
    """scxue/advantage_weighted_matching, scripts/train_sd3_awm.py, compute_log_prob_awm (lines 237-249), 'ghuber'."""
    log_prob = -(model_output.double() - (random_noise.double() - clean_latents.double())) ** 2
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return -(torch.pow(-log_prob + 1e-10, ghuber_power) - torch.pow(torch.tensor(1e-10, dtype=log_prob.dtype), ghuber_power)) * timestep.view(-1) / ghuber_power


def reference_policy_loss(log_prob, advantages, clip_range=1.0):
    """Lines 1282-1327 on-policy ('exp_first'): the old log-prob is the detached current one."""
    ratio = torch.exp(log_prob - log_prob.detach())
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.mean(torch.maximum(unclipped_loss, clipped_loss))


@pytest.mark.parametrize("power", [0.25, 0.5, 1.0])
def test_the_gradient_is_the_references_and_the_value_the_weighted_error(power):
    x0, eps, v, t, advantage = case()
    ours = lambda u: awm_loss(u, eps - x0, t, advantage, power).mean()  # noqa: E731
    theirs = lambda u: reference_policy_loss(reference_log_prob(u, eps, x0, t, power), advantage)  # noqa: E731
    torch.testing.assert_close(gradient(ours, v), gradient(theirs, v), rtol=1e-12, atol=1e-15)
    # the value: Â·ρ_t(e), where the reference's is −Â (a ratio of exactly 1)
    torch.testing.assert_close(awm_loss(v, eps - x0, t, advantage, power), -advantage * reference_log_prob(v, eps, x0, t, power))
    assert float(theirs(v)) == pytest.approx(float(-advantage.mean()))


def test_power_one_is_the_t_weighted_squared_error_and_small_powers_damp_large_errors():
    x0, eps, v, t, advantage = case(1)
    error = ((v - (eps - x0)) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(awm_loss(v, eps - x0, t, advantage, 1.0), advantage * t * error)
    # ρ'(e) = t·(e + 1e-10)^(p − 1): a row's pull shrinks as its error grows when p < 1
    ones = torch.ones(S, dtype=torch.float64)
    slope = gradient(lambda u: awm_loss(u, eps - x0, ones, ones, 0.25), v)
    expected = ((error + 1e-10) ** -0.75).reshape(-1, 1, 1, 1) * 2 * (v - (eps - x0)) / v[0].numel()
    torch.testing.assert_close(slope, expected)


def test_positive_advantages_pull_toward_the_flow_matching_target_and_negative_ones_push_away():
    x0, eps, v, t, _ = case(2)
    target = eps - x0
    for sign in (1.0, -1.0):
        advantage = torch.full((S,), sign, dtype=torch.float64)
        step = v - 1e-3 * gradient(lambda u: awm_loss(u, target, t, advantage, 0.25), v)
        moved = ((step - target) ** 2).sum((1, 2, 3)) - ((v - target) ** 2).sum((1, 2, 3))
        assert bool((moved < 0).all()) == (sign > 0) and bool((moved > 0).all()) == (sign < 0)


def reference_steps(num_steps, timestep_fraction, train_timesteps, rand_u, first):
    """Lines 1172-1177 ('discrete', first 0) and 1197-1202 ('discrete_wo_init', first 1)."""
    boundaries = torch.linspace(first, int(num_steps * timestep_fraction), steps=train_timesteps + 1)
    lower_bounds, upper_bounds = boundaries[:-1].long(), boundaries[1:].long()
    return lower_bounds + (rand_u * (upper_bounds - lower_bounds)).long()


@pytest.mark.parametrize("sampling, first", [("discrete_wo_init", 1), ("discrete", 0)])
@pytest.mark.parametrize("num_steps", [10, 14])
def test_timesteps_are_drawn_one_per_stratum_as_the_reference_does(sampling, first, num_steps):
    cfg = config.load(overrides=["algorithm=awm", f"awm.timestep_sampling={sampling}", f"sampling.num_steps={num_steps}"])
    algorithm = AWM(cfg.algo, num_steps)
    steps = algorithm.draw_steps(400, torch.Generator().manual_seed(0))
    u = torch.rand(400, 6, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([reference_steps(num_steps, 0.9, 6, row, first) for row in u])
    assert torch.equal(steps, expected)
    assert int(steps.min()) == first and int(steps.max()) < int(num_steps * 0.9)
    assert (steps[:, 1:] >= steps[:, :-1]).all()  # strata in order, never overlapping
