"""The maths of docs/architecture.md, "Dynamics": each sampler against closed forms and properties."""

import math

import pytest
import torch

from genrl import dynamics

KINDS_AND_NOISE = [("flow_sde", "a"), ("dance_sde", "eta"), ("cps", "a")]


def test_flow_sigmas_endpoints_and_shift():
    plain, shifted = dynamics.flow_sigmas(10), dynamics.flow_sigmas(10, shift=3.0)
    for s in (plain, shifted):
        assert s.shape == (11,) and s.dtype == torch.float32
        assert s[0] == 1.0 and s[-1] == 0.0
        assert torch.all(s[1:] < s[:-1])
    assert torch.all(shifted[1:-1] > plain[1:-1])  # a shift > 1 spends more steps at high noise


@pytest.mark.parametrize("kind,noise_name", KINDS_AND_NOISE)
def test_sde_mean_tends_to_ode_step_as_noise_vanishes(kind, noise_name):
    torch.manual_seed(0)
    x, v = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    sigma, sigma_next = torch.tensor([0.9, 0.7, 0.5, 0.2]), torch.tensor([0.8, 0.5, 0.3, 0.1])
    ode = dynamics.step("ode", x, v, sigma, sigma_next).mean
    errors = []
    for level in (1e-1, 1e-2, 1e-3):
        out = dynamics.step(kind, x, v, sigma, sigma_next, **{noise_name: level})
        errors.append((out.mean - ode).abs().max().item())
        assert out.std.shape == (4,) and torch.all(out.std > 0)
    assert errors[-1] < 1e-5
    assert errors[0] > errors[1] > errors[2] or errors[0] < 1e-6  # converges, unless exactly equal (cps)


def test_ode_step_is_deterministic_with_zero_log_prob():
    x, v = torch.randn(2, 4), torch.randn(2, 4)
    out = dynamics.step("ode", x, v, torch.tensor(0.5), torch.tensor(0.3), noise=torch.randn(2, 4))
    assert torch.equal(out.sample, out.mean)
    assert torch.equal(out.std, torch.zeros(2)) and torch.equal(out.log_prob, torch.zeros(2))


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_log_prob_is_the_gaussian_density(reduce):
    torch.manual_seed(1)
    mean, std = torch.randn(3, 2, 4, 4), torch.tensor([0.1, 0.5, 2.0])
    sample = mean + std.view(3, 1, 1, 1) * torch.randn(3, 2, 4, 4)
    expected = torch.distributions.Normal(mean, std.view(3, 1, 1, 1).expand_as(mean)).log_prob(sample).flatten(1)
    expected = expected.mean(1) if reduce == "mean" else expected.sum(1)
    torch.testing.assert_close(dynamics.gaussian_log_prob(sample, mean, std, reduce), expected)


def test_unknown_reduce_and_kind_are_errors():
    with pytest.raises(ValueError, match="logprob_reduce"):
        dynamics.gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), "max")
    with pytest.raises(ValueError, match="unknown dynamics"):
        dynamics.step("ddim", torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.4)


def exact_gaussian_velocity(x, sigma, m, s0):
    """E[ε − x0 | x_σ = x] for x0 ~ N(m, s0²), ε ~ N(0, 1), x_σ = (1−σ)x0 + σε."""
    sigma = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    var = (1 - sigma) ** 2 * s0**2 + sigma**2
    cov = sigma - (1 - sigma) * s0**2
    return -m + cov / var * (x - (1 - sigma) * m)


@pytest.mark.parametrize("kind,params", [("flow_sde", {"a": 0.7}), ("dance_sde", {"eta": 0.3})])
def test_sde_sampling_keeps_the_marginal_law(kind, params):
    """With the exact velocity of Gaussian data, x_σ keeps mean (1−σ)m and variance (1−σ)²s0² + σ².

    CPS is not an SDE discretisation: it re-noises a fixed fraction of σ' each
    step, so with a posterior-mean x̂0 it shrinks the variance (measured: std
    0.42 for 0.50 over 100 steps); its own property is tested below.
    """
    torch.manual_seed(0)
    m, s0, n, steps = 1.5, 0.5, 20000, 100
    sigmas = dynamics.flow_sigmas(steps)
    if kind == "flow_sde":
        params = {**params, "sigma_1": float(sigmas[1])}
    x = torch.randn(n, 1)
    for k in range(steps):
        sigma = sigmas[k].expand(n)
        v = exact_gaussian_velocity(x, sigma, m, s0)
        last = k == steps - 1  # the last step is deterministic
        kind_k, params_k = ("ode", {}) if last else (kind, params)
        x = dynamics.step(kind_k, x, v, sigma, sigmas[k + 1].expand(n), torch.randn(n, 1), **params_k).sample
        if k == steps // 2:
            s = float(sigmas[k + 1])
            assert abs(x.mean().item() - (1 - s) * m) < 0.03
            assert abs(x.var().item() - ((1 - s) ** 2 * s0**2 + s**2)) < 0.03
    assert abs(x.mean().item() - m) < 0.03
    assert abs(x.std().item() - s0) < 0.03


def test_kl_to_reference_closed_form():
    mean, ref, std = torch.zeros(2, 4), torch.ones(2, 4), torch.tensor([1.0, 0.0])
    kl = dynamics.kl_to_reference(mean, ref, std)
    assert kl[0].item() == pytest.approx(0.5) and kl[1].item() == 0.0


def test_flow_sde_noise_at_sigma_one_uses_sigma_1():
    sigmas = dynamics.flow_sigmas(10)
    x, v = torch.zeros(1, 4), torch.zeros(1, 4)
    _, std = dynamics.flow_sde_mean_std(x, v, sigmas[0], sigmas[1], a=0.7, sigma_1=float(sigmas[1]))
    expected = 0.7 * math.sqrt(1 / (1 - float(sigmas[1]))) * math.sqrt(float(sigmas[0] - sigmas[1]))
    assert torch.isfinite(std).all() and std.item() == pytest.approx(expected, rel=1e-5)


def test_cps_preserves_the_noise_coefficient_given_the_true_data():
    """With oracle predictions (x̂0 = x0, ε̂ = ε), x' | x0 ~ N((1−σ')x0, σ'²): the coefficients are kept exactly."""
    torch.manual_seed(0)
    n, sigma, sigma_next = 200000, 0.6, 0.45
    x0, eps = torch.full((n, 1), 2.0), torch.randn(n, 1)
    x = (1 - sigma) * x0 + sigma * eps
    out = dynamics.step("cps", x, eps - x0, torch.tensor(sigma), torch.tensor(sigma_next), torch.randn(n, 1), a=0.7)
    assert out.std[0].item() == pytest.approx(sigma_next * math.sin(0.7 * math.pi / 2), rel=1e-6)
    assert abs(out.sample.mean().item() - (1 - sigma_next) * 2.0) < 0.005
    assert abs(out.sample.std().item() - sigma_next) < 0.005
