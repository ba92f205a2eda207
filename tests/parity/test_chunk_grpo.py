"""Chunk-GRPO parity (xingzhejun/GCPO, the authors' DanceGRPO fork): the Flow-GRPO step on its σ grid,
the chunk partition, the chunk ratio, the draw of half the chunks, the weighted draw, the asymmetric
clip, the advantage, and the defaults of `chunk_grpo`."""

from __future__ import annotations

import itertools
from collections import Counter

import torch
from tensordict import TensorDict

from genrl import config, dynamics, keys
from genrl.advantages import compute_advantages
from genrl.algorithms import grouping
from genrl.build import build_algorithm
from genrl.loss import clipped_surrogate, unit_reduce
from genrl.metrics import l1_rel

from . import reference as ref
from .conftest import TOL

K, SHIFT, A, SIZES = 17, 3.0, 0.7, [2, 3, 4, 7]  # finetune_hpsv3_chunk.sh: 17 steps, shift 3, eta 0.7, [2, 3, 4, 7]


def chunk_cfg(**sampling):
    return config.from_dict({"algorithm": "chunk_grpo", "sampling": {"num_steps": K, **sampling}})


def test_flow_sde_step_on_the_gcpo_grid(random_step_inputs):
    sigmas = dynamics.sigma_schedule("linspace_shift", K, SHIFT)
    torch.testing.assert_close(sigmas, ref.dance_sigma_schedule(K, SHIFT), **TOL)
    assert abs(float(sigmas[16]) - 0.158) < 1e-3  # the figure: σ_16 = 0.158 on this grid
    x, v, x_next, sigma, sigma_next = (t[:-1] for t in random_step_inputs(sigmas, seed=20))  # the 16 trained steps
    mean, std = dynamics.flow_sde_mean_std(x, v, sigma, sigma_next, a=A, sigma_1=float(sigmas[1]))
    r_mean, r_noise, r_log_prob = ref.flow_grpo_sde_step(v, x, sigma, sigma_next, float(sigmas[1]), A, x_next)
    torch.testing.assert_close(mean, r_mean, **TOL)
    torch.testing.assert_close(std, r_noise * torch.sqrt(sigma - sigma_next), **TOL)
    torch.testing.assert_close(dynamics.gaussian_log_prob(x_next, mean, std), r_log_prob, **TOL)


def test_chunk_partition_is_the_split_of_the_16_trained_steps():
    units = build_algorithm(chunk_cfg()).strategy(
        grouping.GroupingContext(build_algorithm(chunk_cfg()).stochastic_steps(), torch.rand(2, K), 0,
                                 torch.Generator().manual_seed(0)), sizes=SIZES)
    assert units.assignment[:, :-1].tolist() == [ref.gcpo_chunk_of_step(SIZES)] * 2
    assert (units.assignment[:, -1] == -1).all()
    assert units.combine is None and build_algorithm(chunk_cfg()).unit_combine == "mean"  # chunk_grpo.py's rule


def test_chunk_ratio_is_the_ratio_of_mean_step_log_probs():
    g = torch.Generator().manual_seed(21)
    old = -5 + torch.randn(3, 16, generator=g, dtype=torch.float64)
    new = old + 1e-3 * torch.randn(3, 16, generator=g, dtype=torch.float64)
    chunk = torch.tensor(ref.gcpo_chunk_of_step(SIZES))
    unit = (torch.arange(3)[:, None] * len(SIZES) + chunk[None, :]).flatten()  # unit ids as the trainer numbers them
    ours = torch.exp(unit_reduce((new - old).flatten(), unit, 3 * len(SIZES), "mean")).reshape(3, len(SIZES))
    torch.testing.assert_close(ours, ref.gcpo_chunk_ratio(new, old, SIZES), **TOL)


def test_asymmetric_clip_is_gcpos_left_right_clamp():
    g = torch.Generator().manual_seed(22)
    ratio = 1 + 2e-4 * torch.randn(400, generator=g, dtype=torch.float64)
    advantages = 3 * torch.randn(400, generator=g, dtype=torch.float64)
    for left, right in ((5e-5, 5e-5), (5e-5, 2e-4), (1e-4, 3e-5)):
        loss, clipped = clipped_surrogate(torch.log(ratio), advantages.clamp(-5, 5), left, right)
        expected = ref.gcpo_policy_loss(ratio, advantages, left, right)
        torch.testing.assert_close(loss, expected, **TOL)
        assert 0 < clipped.float().mean() < 1
    symmetric, _ = clipped_surrogate(torch.log(ratio), advantages, 5e-5)
    torch.testing.assert_close(symmetric, clipped_surrogate(torch.log(ratio), advantages, 5e-5, 5e-5)[0], rtol=0, atol=0)


def test_half_the_chunks_drawn_uniformly():
    """train_one_step: int(4 · 0.5) = 2 chunks per trajectory, a uniformly random pair; same law as GCPO's randperm."""
    n = 6000
    units = build_algorithm(chunk_cfg()).units(torch.rand(n, K), 0, torch.Generator().manual_seed(23))
    ours = [frozenset(row[row >= 0].unique().tolist()) for row in units.assignment]
    theirs = ref.gcpo_draw_chunks(n, len(SIZES), 0.5, torch.Generator().manual_seed(24))
    assert all(len(s) == 2 for s in ours) and all(len(s) == 2 for s in theirs)
    pairs = list(itertools.combinations(range(4), 2))
    for counts in (Counter(ours), Counter(frozenset(s) for s in theirs)):
        frequencies = torch.tensor([counts[frozenset(p)] / n for p in pairs])
        assert (frequencies - 1 / 6).abs().max() < 0.02  # six pairs, equally likely
    kept = units.assignment >= 0  # whole chunks are kept: a drawn chunk trains all its steps
    for row in units.assignment[:50]:
        assert sorted(int((row == c).sum()) for c in row[row >= 0].unique()) == sorted(SIZES[c] for c in row[row >= 0].unique())
    assert kept.any()


def test_weighted_chunk_draw_probabilities():
    """--sample_weight: chunk weights ∝ the chunk's mean L1 change (normalized) or their softmax."""
    g = torch.Generator().manual_seed(25)
    n = 5
    latents = torch.randn(n, K, 4, 6, 6, generator=g, dtype=torch.float64)
    action = latents + 0.3 * torch.randn(n, K, 4, 6, 6, generator=g, dtype=torch.float64)
    rollout = TensorDict({keys.LATENTS: latents, keys.ACTION: action}, batch_size=[n, K])
    profile = l1_rel(rollout)  # [n, K], genrl's L1rel
    units = grouping.chunks_to_units(
        grouping.GroupingContext(build_algorithm(chunk_cfg()).stochastic_steps(), profile, 0, g), SIZES)
    for ours_name, theirs_name in (("l1", "normalized"), ("softmax", "softmax")):
        ours = grouping.unit_weights(units, profile, ours_name)
        theirs = ref.gcpo_chunk_weights(latents[:, :-1], action[:, :-1], SIZES, theirs_name)
        torch.testing.assert_close(ours.double(), theirs, **TOL)


def test_advantage_unbiased_std_plus_1e_8():
    g = torch.Generator().manual_seed(26)
    rewards = 10 + 2 * torch.rand(2 * 12, generator=g)  # --train_batch_size 2 --num_generations 12
    ours = compute_advantages(rewards, torch.arange(24) // 12, "per_prompt", clip=float("inf"), std="unbiased", eps=1e-8)
    torch.testing.assert_close(ours, ref.dance_grpo_advantages(rewards, 12), **TOL)


def test_chunk_grpo_defaults_are_the_released_script():
    o = chunk_cfg().algo
    assert (o.dynamics, o.noise_level, o.shift, o.schedule, o.shared_noise) == ("flow_sde", A, SHIFT, "linspace_shift", True)
    assert (o.grouping, o.grouping_options, o.unit_fraction, o.unit_weighting) == ("fixed_chunks", {"sizes": SIZES}, 0.5, "uniform")
    assert (o.advantage, o.advantage_std, o.advantage_eps) == ("per_prompt", "unbiased", 1e-8)
    assert (o.clip_range, o.clip_range_high, o.beta) == (5e-5, None, 0.0)  # both sides 5e-5
    high = config.from_dict({"algorithm": "chunk_grpo", "chunk_grpo": {"clip_range_high": 2e-4}}).algo
    assert (high.clip_range, high.clip_range_high) == (5e-5, 2e-4)
