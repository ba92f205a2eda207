"""The credit probe (genrl.benchmarks.credit_probe): its statistics against closed forms, its forks
against the trunk they leave, and `genrl probe credit` as a user runs it."""

from __future__ import annotations

import json

import pytest
import torch

from genrl import dynamics
from genrl.benchmarks import credit_probe
from genrl.cli import main
from toy_adapter import ToyAdapter

PROMPTS = ["a photo of a cat", "an oil painting", "abstract art"]  # not ShapeWorld: scored by the reward


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def test_spread_of_hand_built_sibling_rewards():
    # one step, two forks of three siblings: [1, 0, 0] and [1, 1, 1]
    scores = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    out = credit_probe.spread(scores)
    # fork 1: mean 1/3, population variance 2/9, |deviations| 2/3, 1/3, 1/3; fork 2: all zero
    assert out["reward_var"] == pytest.approx([(2 / 9 + 0) / 2])
    assert out["mean_abs_adv"] == pytest.approx([(2 / 3 + 1 / 3 + 1 / 3) / 6])
    assert out["disagree"] == pytest.approx([0.5])


def test_partition_r2_closed_form():
    profile = torch.tensor([1.0, 1.0, 5.0, 5.0])
    assert credit_probe.partition_r2(profile, [2, 2]) == pytest.approx(1.0)  # chunks are the two levels
    # [1] | [1, 5, 5]: within-chunk sum of squares 2·(8/3)² + (4/3)²... computed: chunk mean 11/3
    within = (1 - 11 / 3) ** 2 + 2 * (5 - 11 / 3) ** 2
    total = 4 * 2.0**2
    assert credit_probe.partition_r2(profile, [1, 3]) == pytest.approx(1 - within / total)
    assert credit_probe.partition_r2(profile, [4]) == pytest.approx(0.0)


def test_homogeneity_ranks_among_every_contiguous_partition():
    profile = torch.tensor([0.0, 0.0, 3.0, 3.0, 1.0])
    best = credit_probe.homogeneity(profile, [2, 2, 1])
    assert best["r2"] == pytest.approx(1.0) and best["rank"] == 1 and best["partitions"] == 6  # C(4, 2)
    worse = credit_probe.homogeneity(profile, [1, 1, 3])
    assert worse["r2"] < best["r2"] and worse["rank"] > 1 and worse["percentile"] < 1


def test_bootstrap_rank_of_a_noiseless_profile_is_its_rank():
    # every trunk has the same per-step spread, so resampling trunks cannot move the ranks
    per_step = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # siblings [1, 0] give |deviation| 1/2, [0, 0] give 0
    scores = torch.stack([per_step, torch.zeros(5)], -1)[:, None, :].expand(5, 7, 2)  # [S, T, children]
    best = credit_probe.bootstrap_rank(scores, [2, 3], resamples=20)
    assert best["first"] == 1.0 and best["median"] == 1 and best["p95"] == 1
    assert credit_probe.bootstrap_rank(scores, [1, 4], resamples=20)["median"] > 1


def test_noise_free_forks_follow_the_trunk_and_calls_are_counted():
    """An ODE fork takes the trunk's own step, so every sibling ends where the trunk does."""
    adapter = ToyAdapter()
    sigmas = dynamics.flow_sigmas(4)
    probe = credit_probe.fork_rewards(adapter, brightness, PROMPTS, [1, 2, 3], sigmas, children=3,
                                      fork=("ode", {}), micro_batch=4)
    scores = probe["scores"]["reward"]  # [3 forked steps, 3 trunks, 3 children]
    assert scores.shape == (3, 3, 3)
    trunk = probe["trunk"]["reward"]
    assert torch.allclose(scores, trunk[None, :, None].expand_as(scores), atol=1e-6)
    assert probe["model_calls"] == 3 * 4 + 3 * 3 * (3 + 2 + 1)  # the trunk, then each fork's ODE to the end
    noisy = credit_probe.fork_rewards(adapter, brightness, PROMPTS, [1, 2, 3], sigmas, children=3, micro_batch=4)
    assert credit_probe.spread(noisy["scores"]["reward"])["reward_var"][0] > 0  # the SDE fork spreads siblings


def test_probe_credit_command_on_the_base_model(tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "credit", "--out", str(out), "--max-prompts", "2", "--seeds", "1", "--children", "2"]) == 0
    summary = json.loads((out / "credit.json").read_text())
    steps = summary["forked_steps"]
    assert steps == len(summary["l1_rel"]) == len(summary["spread"]["strict"]["disagree"])
    assert sum(summary["partitions"]["fixed_chunks"]) == sum(summary["partitions"]["dynamic_chunks"]) == steps
    assert (out / "credit.png").stat().st_size > 0
    assert "Spearman" in capsys.readouterr().out


def test_probe_credit_refuses_a_single_child(tmp_path, capsys):
    assert main(["probe", "credit", "--out", str(tmp_path / "p"), "--children", "1"]) == 2
    assert "--children must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
