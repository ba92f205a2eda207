"""Groupwise rewards and Pref-GRPO's pairwise win rate (issue 32, item 3)."""

import itertools
import json

import pytest
import torch

from genrl import config
from genrl.errors import ConfigError, RewardError
from genrl.rewards import checked_call, is_groupwise, load, score
from genrl.rewards.pairwise import all_pairs, win_rates
from genrl.shapeworld import render
from genrl.shapeworld import score as shapeworld_score
from genrl.trainer import Trainer


def reference_win_rates(verdict, group_size):
    """Pref-GRPO's `_pairwise_win_rate`, re-derived: every pair of itertools.combinations once; the winner
    counts 1, a tie 0.5 each; a win rate is wins over comparisons."""
    wins, counts = [0.0] * group_size, [0] * group_size
    for i, j in itertools.combinations(range(group_size), 2):
        v = verdict(i, j)
        wins[i] += v
        wins[j] += 1 - v
        counts[i] += 1
        counts[j] += 1
    return torch.tensor([w / c for w, c in zip(wins, counts)])


def test_win_rates_are_the_references_over_every_pair_once():
    g = 6
    pairs = all_pairs(g)
    assert [tuple(p) for p in pairs.tolist()] == list(itertools.combinations(range(g), 2))
    verdicts = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0])
    table = {tuple(p): float(v) for p, v in zip(pairs.tolist(), verdicts)}
    rates = win_rates(verdicts, pairs, g)
    assert torch.allclose(rates, reference_win_rates(lambda i, j: table[(i, j)], g))
    assert float(rates.mean()) == pytest.approx(0.5)  # every comparison hands out one win in all


def test_the_shapeworld_judge_prefers_the_image_meeting_more_constraints():
    prompt = "a yellow square above a red circle"
    drawn = [prompt, "a yellow square above a red square", "a blue circle", prompt, "a yellow square below a red circle"]
    images = torch.stack([render(p, seed=i) for i, p in enumerate(drawn)]).float()
    met = shapeworld_score(images, [prompt] * len(drawn))["partial"]
    assert len(set(met.tolist())) == 4  # all, some and none of the constraints
    reward = load("pairwise")
    assert is_groupwise(reward)
    rates = checked_call(reward, images, [prompt] * 5, group_ids=torch.zeros(5, dtype=torch.long))
    expected = reference_win_rates(lambda i, j: 1.0 if met[i] > met[j] else 0.0 if met[i] < met[j] else 0.5, 5)
    assert torch.allclose(rates, expected)
    assert rates[0] == rates[3] == rates.max()  # the two that meet them all tie for first


def test_groups_are_scored_apart_and_a_score_judge_ranks_within_its_group():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.9, 0.5, 0.3, 0.3, 0.8)])
    prompts = ["p"] * 3 + ["q"] * 3
    reward = load("pairwise", judge="scores", judge_options={"reward": {"name": "brightness"}})
    rates = score(reward, images, prompts, torch.tensor([0, 0, 0, 1, 1, 1]))
    # within a group of three: the brightest wins both comparisons (1), the darkest none (0); a tie is half
    assert torch.allclose(rates, torch.tensor([0.0, 1.0, 0.5, 0.25, 0.25, 1.0]))


def test_a_group_of_one_and_a_pointwise_judge_are_one_clear_error():
    reward = load("pairwise", judge="scores", judge_options={"reward": {"name": "brightness"}})
    with pytest.raises(RewardError, match="group of one image .*prompt 'q'.*group_size >= 2"):
        score(reward, torch.rand(3, 3, 4, 4), ["p", "p", "q"], torch.tensor([0, 0, 1]))
    with pytest.raises(ConfigError, match="judge='shapeeval' is a pointwise reward, not a pairwise judge: use judge: scores"):
        load("pairwise", judge="shapeeval")
    with pytest.raises(ConfigError, match="groupwise itself"):
        load("pairwise", judge="scores", judge_options={"reward": {"name": "pairwise"}})


def test_without_group_ids_the_images_of_one_prompt_are_a_group():
    """An evaluation or a gym env scores without group ids: each prompt's images are compared together."""
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.2, 0.6, 0.4, 0.1)])
    reward = load("pairwise", judge="scores", judge_options={"reward": {"name": "brightness"}})
    rates = checked_call(reward, images, ["p", "q", "p", "q"])
    assert torch.allclose(rates, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_a_multi_reward_gives_its_groupwise_part_the_group_ids():
    multi = load("multi", rewards=[{"name": "brightness", "weight": 1.0},
                                   {"name": "pairwise", "weight": 2.0,
                                    "options": {"judge": "scores", "judge_options": {"reward": {"name": "brightness"}}}}])
    assert is_groupwise(multi)
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.2, 0.6, 0.4, 0.1)])
    parts = multi.components(images, ["p"] * 4, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(parts[:, 1], torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_the_trainer_scores_whole_groups(toy_overrides, tmp_path):
    """Every group's win rates average 0.5, so the batch's mean reward is 0.5 exactly when each group is
    scored whole; a group cut in two would raise or shift it."""
    cfg = config.load(overrides=[*toy_overrides, "reward.name=pairwise", "train.updates=2",
                                 "reward.options={judge: scores, judge_options: {reward: {name: toy_brightness}}}"])
    Trainer(cfg).run()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_mean"] for m in metrics] == [pytest.approx(0.5, abs=1e-6)] * 2
    assert all(m["reward_std"] > 0 for m in metrics)
