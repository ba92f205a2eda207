"""Sample grouping: advantages from the rewards of each prompt's group (docs/architecture.md, "One update").

An estimator maps rewards R [N] and group ids [N] to un-clipped advantages [N];
`compute_advantages` handles several rewards and clipping.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from genrl.registry import Registry

STD_EPS = 1e-4  # the references' ε in (R − mean) / (std + ε)

ADVANTAGES: Registry = Registry("advantage estimator")
register = ADVANTAGES.register
AdvantageEstimator = Callable[[Tensor, Tensor], Tensor]


def group_stats(values: Tensor, group_id: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row mean and (population) std of the row's group, [N] each."""
    groups, inverse = torch.unique(group_id, return_inverse=True)
    zeros = torch.zeros(len(groups), dtype=values.dtype, device=values.device)
    count = zeros.index_add(0, inverse, torch.ones_like(values))
    mean = zeros.index_add(0, inverse, values) / count
    var = zeros.index_add(0, inverse, (values - mean[inverse]) ** 2) / count
    return mean[inverse], var.sqrt()[inverse]


@register("per_prompt")
def per_prompt_advantages(rewards: Tensor, group_id: Tensor) -> Tensor:
    """A = (R − mean_g R) / (std_g R + ε): GRPO's group-relative advantage (Flow-GRPO eq. 4)."""
    mean, std = group_stats(rewards, group_id)
    return (rewards - mean) / (std + STD_EPS)


@register("global_std")
def global_std_advantages(rewards: Tensor, group_id: Tensor) -> Tensor:
    """A = (R − mean_g R) / (std over the whole batch + ε): keeps the scale of easy and hard prompts."""
    mean, _ = group_stats(rewards, group_id)
    return (rewards - mean) / (rewards.std(unbiased=False) + STD_EPS)


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


def compute_advantages(rewards: Tensor, group_id: Tensor, estimator: str = "per_prompt", clip: float = 5.0) -> Tensor:
    """Advantages [N] clamped to ±clip. Groups must be complete (all G samples of a prompt present)."""
    return ADVANTAGES.get(estimator)(rewards.float(), group_id).clamp(-clip, clip)


def zero_std_fraction(rewards: Tensor, group_id: Tensor) -> float:
    """Fraction of groups whose rewards are all equal (they give no learning signal)."""
    _, std = group_stats(rewards.float(), group_id)
    groups, inverse = torch.unique(group_id, return_inverse=True)
    per_group = torch.zeros(len(groups), device=std.device).scatter(0, inverse, (std < 1e-8).float())  # rows of a group agree
    return float(per_group.mean())
