"""`pairwise`: Pref-GRPO's groupwise reward, each image's win rate against the rest of its group.

    reward: {name: pairwise, options: {judge: shapeworld}}

Pref-GRPO (arXiv 2508.20751; CodeGoat24/Pref-GRPO, `fastvideo/rewards/unifiedreward_think.py`)
replaces a pointwise score by pairwise preferences: a judge compares every unordered pair of a
prompt's group once (`itertools.combinations`, the image of lower index shown first), the
preferred image scores 1 and the other 0, a tie (or a verdict the judge does not give) 0.5 each,
and an image's reward is its wins over its G − 1 comparisons. The reference's judge is the
UnifiedReward-Think VLM (qwen3vl-8b) behind a vLLM server, with groups of G = 8
(`--num_generations 8`) and the win rate weighted 0.4 against CLIP's 0.6 for FLUX
(`--reward_spec '{"unifiedreward_think": 0.4, "clip": 0.6}'`: a `multi` reward here). The
reference rounds each win rate to 3 decimals for logging; here it is exact.

Judges (`JUDGES`): `shapeworld`, the programmatic ShapeWorld judge (the image that meets more of
the prompt's constraints wins, an equal count is a tie), so that the path runs on CPU; and
`scores`, which lets any pointwise reward judge (the higher score wins, equal scores tie). A judge
is `judge(images [G,3,H,W], prompt, pairs [P, 2]) -> [P]` in {0, 0.5, 1}: how much the pair's
first image wins. A VLM judge registers the same way.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from genrl.errors import ConfigError, RewardError
from genrl.registry import Registry
from genrl.rewards import base
from genrl.shapeworld import parse, score

JUDGES: Registry = Registry("pairwise judge")


def all_pairs(group_size: int) -> Tensor:
    """[P, 2]: every unordered pair (i < j) of a group once, in itertools.combinations' order."""
    return torch.combinations(torch.arange(group_size), r=2)


def win_rates(wins_of_first: Tensor, pairs: Tensor, group_size: int) -> Tensor:
    """[G]: each image's wins over its comparisons; `wins_of_first` [P] in [0, 1], the loser gets 1 − it."""
    wins = torch.zeros(group_size, dtype=torch.float64)
    counts = torch.zeros(group_size, dtype=torch.float64)
    wins.index_add_(0, pairs[:, 0], wins_of_first.double())
    wins.index_add_(0, pairs[:, 1], 1 - wins_of_first.double())
    counts.index_add_(0, pairs.flatten(), torch.ones(pairs.numel(), dtype=torch.float64))
    return (wins / counts).float()


def verdicts(first: Tensor, second: Tensor) -> Tensor:
    """1 where the first score is higher, 0 where lower, 0.5 for a tie."""
    return (first > second).float() + 0.5 * (first == second).float()


@JUDGES.register("shapeworld")
class ShapeWorldJudge:
    """The image meeting more of the prompt's ShapeWorld constraints wins; the same number is a tie.

    Both images answer the same prompt, so comparing the fraction of constraints met (shapeeval's
    "partial" score) compares their counts."""

    def __call__(self, images: Tensor, prompt: str, pairs: Tensor) -> Tensor:
        met = score(images, [prompt] * len(images))["partial"].cpu()
        return verdicts(met[pairs[:, 0]], met[pairs[:, 1]])

    def check_prompt(self, prompt: str) -> None:
        parse(prompt)


@JUDGES.register("scores")
class ScoreJudge:
    """A pointwise reward as a judge: the higher score wins, equal scores tie (`reward: {name, options}`)."""

    def __init__(self, reward: dict | None = None):
        if not isinstance(reward, dict) or "name" not in reward:
            raise ConfigError("the 'scores' judge needs judge_options.reward: {name: REWARD, options: {...}}")
        self.name = reward["name"]
        self.reward = base.load(self.name, **reward.get("options", {}))
        if base.is_groupwise(self.reward):
            raise ConfigError(f"judge_options.reward={self.name!r} is groupwise itself: give a pointwise reward")

    def __call__(self, images: Tensor, prompt: str, pairs: Tensor) -> Tensor:
        scores = base.checked_call(self.reward, images, [prompt] * len(images), self.name).cpu()
        return verdicts(scores[pairs[:, 0]], scores[pairs[:, 1]])

    def check_prompt(self, prompt: str) -> None:
        if hasattr(self.reward, "check_prompt"):
            self.reward.check_prompt(prompt)


@base.register("pairwise")
class PairwiseReward:
    """Each image's win rate in its group under a pairwise judge (Pref-GRPO); groups of two or more."""

    name = "pairwise"
    groupwise = True  # genrl.rewards.base: called as reward(images, prompts, group_ids) on whole groups

    def __init__(self, judge: str = "shapeworld", judge_options: dict | None = None):
        if judge not in JUDGES:
            pointwise = judge in base.REWARDS
            raise ConfigError(
                f"reward.options.judge={judge!r} is "
                + ("a pointwise reward, not a pairwise judge: use judge: scores, judge_options: {reward: {name: "
                   f"{judge}}}}}" if pointwise else "not a pairwise judge")
                + f"; judges: {', '.join(JUDGES.names())}")
        self.judge_name, self.judge = judge, JUDGES.get(judge)(**(judge_options or {}))

    def check_prompt(self, prompt: str) -> None:
        if hasattr(self.judge, "check_prompt"):
            self.judge.check_prompt(prompt)

    def __call__(self, images: Tensor, prompts: Sequence[str], group_ids: Tensor) -> Tensor:
        group_ids = torch.as_tensor(group_ids).cpu()
        rewards = torch.empty(len(prompts), dtype=torch.float32)
        for group in torch.unique(group_ids):
            members = (group_ids == group).nonzero().flatten()
            prompt = prompts[int(members[0])]
            if len(members) < 2:
                raise RewardError(f"reward 'pairwise' got a group of one image (prompt {prompt!r}): a win rate needs "
                                  "two or more images per prompt (algorithm group_size >= 2, or --seeds >= 2)")
            if any(prompts[int(i)] != prompt for i in members):
                raise RewardError(f"reward 'pairwise': group {int(group)} mixes prompts; a group is one prompt's images")
            pairs = all_pairs(len(members))
            wins = self.judge(images[members], prompt, pairs)
            rewards[members] = win_rates(wins.float().cpu(), pairs, len(members))
        return rewards.to(images.device)

    def __repr__(self) -> str:
        return f"PairwiseReward(judge={self.judge_name!r})"
