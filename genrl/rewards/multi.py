"""`multi`: a weighted combination of several rewards.

    reward: {name: multi, options: {rewards: [{name: pickscore, weight: 1.0}, {name: jpeg_compressibility, weight: 0.1}]}, normalize: group}

With `reward.normalize: group` the trainer z-scores each reward within its
prompt group before the weighted sum (`components` gives the raw columns).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from genrl.errors import ConfigError
from genrl.rewards import base as registry
from genrl.rewards.video import load


@registry.register("multi")
class MultiReward:
    name = "multi"
    reads = "any"  # its parts check what they are given (genrl.rewards.base.reads)

    def __init__(self, rewards: list[dict] | None = None):
        if not rewards:
            raise ConfigError("reward.options.rewards must list at least one {name, weight, options} entry for 'multi'")
        self.names, self.parts, weights = [], [], []
        for i, entry in enumerate(rewards):
            unknown = set(entry) - {"name", "weight", "options"}
            if "name" not in entry or unknown:
                raise ConfigError(f"reward.options.rewards[{i}]={entry!r}: expected keys name, weight, options")
            self.names.append(entry["name"])
            self.parts.append(load(entry["name"], **entry.get("options", {})))  # an image reward's options may reduce frames
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ConfigError(f"reward.options.rewards[{i}].weight={weight!r} is not allowed: expected a finite number")
            weights.append(float(weight))
        if sum(weights) == 0:  # all 0: no reward at all; opposite weights: almost surely a sign typo
            raise ConfigError(f"reward.options.rewards: the weights {weights} sum to 0, so the rewards cancel; "
                              "give weights whose sum is not 0 (e.g. 1 and 0.1)")
        self.weights = torch.tensor(weights)
        self.groupwise = any(registry.is_groupwise(part) for part in self.parts)  # then its parts get the group ids

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError for a prompt one of the rewards cannot score."""
        for part in self.parts:
            if hasattr(part, "check_prompt"):
                part.check_prompt(prompt)

    def components(self, images: Tensor, prompts: Sequence[str], group_ids: Tensor | None = None) -> Tensor:
        """[N, M]: each reward, checked (a groupwise one given `group_ids`)."""
        return torch.stack([registry.checked_call(part, images, prompts, name, group_ids)
                            for part, name in zip(self.parts, self.names)], dim=1)

    def __call__(self, images: Tensor, prompts: Sequence[str], group_ids: Tensor | None = None) -> Tensor:
        return self.components(images, prompts, group_ids) @ self.weights
