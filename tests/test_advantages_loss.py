"""GRPO core (docs/architecture.md, "One update"): advantages, multi-reward z-scoring, the clipped surrogate over units."""

import pytest
import torch

from genrl.advantages import combine_rewards, compute_advantages, zero_std_fraction
from genrl.loss import clipped_surrogate, unit_reduce


def test_per_prompt_advantage_is_the_group_z_score():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    a = compute_advantages(r, g, "per_prompt")
    std = torch.tensor([1.0, 2.0, 3.0]).std(unbiased=False)
    torch.testing.assert_close(a[:3], (torch.tensor([1.0, 2.0, 3.0]) - 2) / (std + 1e-4))
    assert torch.equal(a[3:], torch.zeros(3))
    assert zero_std_fraction(r, g) == 0.5


def test_global_std_and_clipping():
    r = torch.tensor([0.0, 1.0, 0.0, 100.0])
    g = torch.tensor([0, 0, 1, 1])
    a = compute_advantages(r, g, "global_std", clip=5.0)
    expected = (r - torch.tensor([0.5, 0.5, 50.0, 50.0])) / (r.std(unbiased=False) + 1e-4)
    torch.testing.assert_close(a, expected.clamp(-5, 5))
    assert compute_advantages(torch.tensor([0.0, 1e6, 0.0, 0.0]), torch.zeros(4, dtype=torch.long), clip=2.0).abs().max() <= 2.0


def test_group_normalised_multi_reward_is_scale_free():
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    small = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.2, 0.1])
    huge = torch.tensor([300.0, 200.0, 100.0, 100.0, 200.0, 300.0])  # opposite preference, 1000x the scale
    both = torch.stack([small, huge], 1)
    raw = combine_rewards(both, torch.tensor([1.0, 1.0]), g, "none")
    normed = combine_rewards(both, torch.tensor([1.0, 1.0]), g, "group")
    assert torch.argmax(raw[:3]) == 0  # the huge reward drowns the small one
    torch.testing.assert_close(normed, torch.zeros(6), atol=5e-3, rtol=0)  # equal weight: they cancel (up to ε)


def test_unit_reduce_mean_is_a_geometric_mean_ratio():
    log_ratio = torch.log(torch.tensor([1.1, 0.9, 1.2, 1.0]))
    unit = torch.tensor([0, 0, 1, 1])
    ratio = torch.exp(unit_reduce(log_ratio, unit, 2, "mean"))
    torch.testing.assert_close(ratio, torch.tensor([(1.1 * 0.9) ** 0.5, 1.2**0.5]))
    torch.testing.assert_close(torch.exp(unit_reduce(log_ratio, unit, 2, "sum")), torch.tensor([1.1 * 0.9, 1.2]))
    with pytest.raises(ValueError):
        unit_reduce(log_ratio, unit, 2, "max")


def test_clipped_surrogate_is_pessimistic():
    eps = 0.1
    log_ratio = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss, clipped = clipped_surrogate(log_ratio, adv, eps)
    torch.testing.assert_close(loss, torch.tensor([-1.1, 1.5, -0.5, 0.9, -2.0]))
    assert clipped.tolist() == [True, False, False, True, False]
    # no gradient through a clipped unit, full gradient through the others
    lr = log_ratio.clone().requires_grad_()
    clipped_surrogate(lr, adv, eps)[0].sum().backward()
    assert lr.grad[0] == 0 and lr.grad[3] == 0 and lr.grad[1] != 0
