"""Sample grouping: advantages from the rewards of each prompt's group (docs/architecture.md, "One update").

An estimator maps rewards R [N], group ids [N] and the statistics of its
denominator (`std`: "population" | "unbiased", `eps`) to un-clipped advantages
[N]; `compute_advantages` handles several rewards and clipping.

The references differ in those statistics: Flow-GRPO divides by numpy's
population std + 1e-4 (yifan123/flow_grpo, flow_grpo/stat_tracking.py,
PerPromptStatTracker.update); DanceGRPO and Chunk-GRPO by torch's Bessel-corrected
`.std()` + 1e-8 (XueZeyue/DanceGRPO, fastvideo/train_grpo_flux.py, train_one_step).
For a group of G the unbiased std is √(G/(G−1)) times the population one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from genrl.registry import Registry

STD_EPS = 1e-4  # Flow-GRPO's ε in (R − mean) / (std + ε); DanceGRPO's and Chunk-GRPO's is 1e-8
STD_FORMS = ("population", "unbiased")

ADVANTAGES: Registry = Registry("advantage estimator")
register = ADVANTAGES.register
AdvantageEstimator = Callable[[Tensor, Tensor], Tensor]


def _unbiased(std: str) -> bool:
    if std not in STD_FORMS:
        raise ValueError(f"advantage std must be one of {STD_FORMS}, got {std!r}")
    return std == "unbiased"


def group_stats(values: Tensor, group_id: Tensor, std: str = "population") -> tuple[Tensor, Tensor]:
    """Per-row mean and std of the row's group, [N] each; the std divides by n, or by n − 1 ("unbiased")."""
    groups, inverse = torch.unique(group_id, return_inverse=True)
    zeros = torch.zeros(len(groups), dtype=values.dtype, device=values.device)
    count = zeros.index_add(0, inverse, torch.ones_like(values))
    mean = zeros.index_add(0, inverse, values) / count
    squares = zeros.index_add(0, inverse, (values - mean[inverse]) ** 2)
    var = squares / (count - 1).clamp(min=1) if _unbiased(std) else squares / count
    return mean[inverse], var.sqrt()[inverse]


@register("per_prompt")
def per_prompt_advantages(rewards: Tensor, group_id: Tensor, std: str = "population", eps: float = STD_EPS) -> Tensor:
    """A = (R − mean_g R) / (std_g R + ε): GRPO's group-relative advantage (Flow-GRPO eq. 4)."""
    mean, group_std = group_stats(rewards, group_id, std)
    return (rewards - mean) / (group_std + eps)


@register("global_std")
def global_std_advantages(rewards: Tensor, group_id: Tensor, std: str = "population", eps: float = STD_EPS) -> Tensor:
    """A = (R − mean_g R) / (std over the whole batch + ε): keeps the scale of easy and hard prompts
    (Flow-GRPO's `sample.global_std = True`, the setting of its released configs)."""
    mean, _ = group_stats(rewards, group_id)
    return (rewards - mean) / (rewards.std(unbiased=_unbiased(std)) + eps)


def combine_rewards(components: Tensor, weights: Tensor, group_id: Tensor, normalize: str = "none") -> Tensor:
    """Weighted sum of M rewards [N, M]; with normalize="group" each is z-scored within its group first,
    so a reward with a large scale cannot drown the others."""
    if normalize == "group":
        columns = []
        for m in range(components.shape[1]):
            mean, std = group_stats(components[:, m], group_id)
            columns.append((components[:, m] - mean) / (std + STD_EPS))
        components = torch.stack(columns, dim=1)
    elif normalize != "none":
        raise ValueError(f"reward.normalize must be 'none' or 'group', got {normalize!r}")
    return components @ weights.to(components)


def compute_advantages(
    rewards: Tensor, group_id: Tensor, estimator: str = "per_prompt", clip: float = 5.0,
    std: str = "population", eps: float = STD_EPS,
) -> Tensor:
    """Advantages [N] clamped to ±clip. Groups must be complete (all G samples of a prompt present)."""
    return ADVANTAGES.get(estimator)(rewards.float(), group_id, std=std, eps=eps).clamp(-clip, clip)


def zero_std_fraction(rewards: Tensor, group_id: Tensor) -> float:
    """Fraction of groups whose rewards are all equal (they give no learning signal)."""
    _, std = group_stats(rewards.float(), group_id)
    groups, inverse = torch.unique(group_id, return_inverse=True)
    per_group = torch.zeros(len(groups), device=std.device).scatter(0, inverse, (std < 1e-8).float())  # rows of a group agree
    return float(per_group.mean())
