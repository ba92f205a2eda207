"""Rewards by name (DESIGN.md §8): `genrl.rewards.load("shapeeval")`.

A reward is a callable `reward(images [N,3,H,W] in [0,1], prompts) -> Tensor [N]`,
run under no_grad on the trainer's device. `checked_call` validates what it returns.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import Tensor

from genrl.registry import Registry

REWARDS: Registry = Registry("reward")
register = REWARDS.register

_BUILTIN_MODULES = {
    "shapeeval": "genrl.rewards.shapeeval",
    "jpeg_compressibility": "genrl.rewards.simple",
    "jpeg_incompressibility": "genrl.rewards.simple",
    "brightness": "genrl.rewards.simple",
    "multi": "genrl.rewards.multi",
    "pickscore": "genrl.rewards.clip_rewards",
    "clip_score": "genrl.rewards.clip_rewards",
    "aesthetic": "genrl.rewards.clip_rewards",
    "hpsv2": "genrl.rewards.hpsv2",
    "hpsv3": "genrl.rewards.hpsv3",
    "imagereward": "genrl.rewards.imagereward",
    "tiny-random-pickscore": "genrl.models.random_tiny",
    "tiny-random-clip_score": "genrl.models.random_tiny",
    "tiny-random-hpsv2": "genrl.models.random_tiny",
    "tiny-random-hpsv3": "genrl.models.random_tiny",
    "tiny-random-imagereward": "genrl.models.random_tiny",
}

RewardFn = Callable[[Tensor, Sequence[str]], Tensor]


class RewardError(ValueError):
    """A reward returned something unusable (wrong shape, NaN or inf)."""


def load(name: str, **options) -> RewardFn:
    if name not in REWARDS and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    return REWARDS.get(name)(**options)


def checked_call(reward: RewardFn, images: Tensor, prompts: Sequence[str], name: str | None = None) -> Tensor:
    """Call a reward under no_grad and reject a wrong shape or non-finite values, naming the culprit."""
    name = name or getattr(reward, "name", type(reward).__name__)
    with torch.no_grad():
        scores = reward(images, prompts)
    if not isinstance(scores, Tensor) or scores.shape != (len(prompts),):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise RewardError(f"reward {name!r} returned shape {shape}, expected ({len(prompts)},)")
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise RewardError(
            f"reward {name!r} returned {scores[i].item()} for prompt {prompts[i]!r} "
            f"({len(bad)} of {len(prompts)} scores are NaN or inf)"
        )
    return scores.float()


__all__ = ["REWARDS", "RewardError", "checked_call", "load", "register"]
