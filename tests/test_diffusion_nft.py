"""DiffusionNFT's loss (algorithms/diffusion_nft.py) against closed forms and the reference's own formula."""

import pytest
import torch

from genrl.algorithms.diffusion_nft import adaptive_x0_loss, nft_loss

S, SHAPE = 5, (2, 3, 3)


def case(seed: int = 0):
    """x₀, ε, t, x_t, v_old, v and r on a few rows, in float64."""
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(S, *SHAPE, generator=g, dtype=torch.float64), torch.randn(S, *SHAPE, generator=g, dtype=torch.float64)
    t = torch.rand(S, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x_t = (1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * eps
    v_old = (eps - x0) + 0.3 * torch.randn(S, *SHAPE, generator=g, dtype=torch.float64)
    v = v_old + 0.2 * torch.randn(S, *SHAPE, generator=g, dtype=torch.float64)
    r = torch.rand(S, generator=g, dtype=torch.float64)
    return x0, eps, t, x_t, v_old, v, r


def gradient(fn, v):
    v = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(v).sum(), v)
    return grad


def reference_policy_loss(x0, x_t, t, forward_prediction, old_prediction, r, beta):
    """NVlabs/DiffusionNFT, scripts/train_nft_sd3.py lines 934-959, transcribed (without the constant
    ×adv_clip_max of line 960): per-sample r·positive/β + (1 − r)·negative/β."""
    t_expanded = t.view(-1, *([1] * (len(x0.shape) - 1)))
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = x_t - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = torch.abs(x0_prediction.double() - x0.double()).mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001)
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = x_t - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (
            torch.abs(negative_x0_prediction.double() - x0.double()).mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001)
        )
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    return r * positive_loss / beta + (1.0 - r) * negative_loss / beta


@pytest.mark.parametrize("mix", [1.0, 0.3, 0.1])
def test_the_loss_and_its_gradient_are_the_references(mix):
    x0, _, t, x_t, v_old, v, r = case()
    ours = nft_loss(x0, x_t, t, v, v_old, r, mix)
    theirs = reference_policy_loss(x0, x_t, t, v, v_old, r, mix)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient(lambda u: nft_loss(x0, x_t, t, u, v_old, r, mix), v),
                               gradient(lambda u: reference_policy_loss(x0, x_t, t, u, v_old, r, mix), v), rtol=1e-12, atol=0)


def test_the_adaptive_weight_divides_by_the_mean_absolute_error_held_constant():
    x0, _, _, _, _, _, _ = case()
    x0_hat = x0 + 0.5 * torch.randn(S, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    error = x0_hat - x0
    expected = (error**2).mean((1, 2, 3)) / error.abs().mean((1, 2, 3))
    torch.testing.assert_close(adaptive_x0_loss(x0_hat, x0), expected)
    # the weight is held constant: the gradient is that of the squared error over a fixed number
    grad = gradient(lambda u: adaptive_x0_loss(u, x0), x0_hat)
    torch.testing.assert_close(grad, 2 * error / error[0].numel() / error.abs().mean((1, 2, 3)).reshape(-1, 1, 1, 1))
    assert float(adaptive_x0_loss(x0, x0).sum()) == 0.0  # a perfect prediction: the 1e-5 floor, no 0/0


def test_with_all_r_one_only_the_positive_branch_acts():
    x0, eps, t, x_t, v_old, v, _ = case()
    ones = torch.ones(S, dtype=torch.float64)
    t_ = t.reshape(-1, 1, 1, 1)
    for mix in (1.0, 0.4):
        positive = mix * v + (1 - mix) * v_old
        torch.testing.assert_close(nft_loss(x0, x_t, t, v, v_old, ones, mix), adaptive_x0_loss(x_t - t_ * positive, x0) / mix)
    # mix 1: v⁺ = v_θ, x̂₀ − x₀ = −t·(v − (ε − x₀)): flow matching on the sample, weighted t²/(t·mean|v − target|)
    target = eps - x0
    expected = t**2 * ((v - target) ** 2).mean((1, 2, 3)) / (t * (v - target).abs().mean((1, 2, 3)))
    torch.testing.assert_close(nft_loss(x0, x_t, t, v, v_old, ones, 1.0), expected)
    # and v_old plays no part in it
    torch.testing.assert_close(nft_loss(x0, x_t, t, v, v_old + 5.0, ones, 1.0), expected)


def test_as_mix_goes_to_zero_the_gradient_is_advantage_weighted_flow_matching():
    """With m → 0, v± → v_old and the gradient of the NFT loss in v_θ tends to that of
    (2r − 1)·t²·‖v − (ε − x₀)‖²/w at v_old, w = t·mean|v_old − (ε − x₀)|: reward-weighted flow matching."""
    x0, eps, t, x_t, v_old, v, r = case(1)
    target, t_ = eps - x0, t.reshape(-1, 1, 1, 1)
    w = (t_ * (v_old - target)).abs().mean((1, 2, 3), keepdim=True)
    closed_form = (2 * r - 1).reshape(-1, 1, 1, 1) * 2 * t_**2 * (v_old - target) / (w * v_old[0].numel())
    for mix, tolerance in ((1e-3, 1e-2), (1e-6, 1e-5)):
        grad = gradient(lambda u: nft_loss(x0, x_t, t, u, v_old, r, mix), v)
        assert (grad - closed_form).abs().max() <= tolerance * closed_form.abs().max()
    # at θ = old (the start of every update) it holds for any mix
    for mix in (1.0, 0.5):
        torch.testing.assert_close(gradient(lambda u: nft_loss(x0, x_t, t, u, v_old, r, mix), v_old), closed_form)


def test_high_reward_pulls_the_velocity_to_its_sample_and_low_reward_pushes_it_away():
    x0, eps, t, x_t, v_old, v, _ = case(2)
    target = eps - x0
    distance = lambda u: ((u - target) ** 2).sum()  # noqa: E731
    for r, closer in ((1.0, True), (0.0, False)):
        rows_r = torch.full((S,), r, dtype=torch.float64)
        step = v - 1e-3 * gradient(lambda u: nft_loss(x0, x_t, t, u, v_old, rows_r, 1.0), v)
        assert (distance(step) < distance(v)) == closer
