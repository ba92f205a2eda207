"""`multi`: a weighted combination of several rewards.

    reward: {name: multi, options: {rewards: [{name: pickscore, weight: 1.0}, {name: jpeg_compressibility, weight: 0.1}]}, normalize: group}

With `reward.normalize: group` the trainer z-scores each reward within its
prompt group before the weighted sum (`components` gives the raw columns).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from genrl.errors import ConfigError
from genrl.rewards import base as registry


@registry.register("multi")
class MultiReward:
    name = "multi"

    def __init__(self, rewards: list[dict] | None = None):
        if not rewards:
            raise ConfigError("reward.options.rewards must list at least one {name, weight, options} entry for 'multi'")
        self.names, self.parts, weights = [], [], []
        for i, entry in enumerate(rewards):
            unknown = set(entry) - {"name", "weight", "options"}
            if "name" not in entry or unknown:
                raise ConfigError(f"reward.options.rewards[{i}]={entry!r}: expected keys name, weight, options")
            self.names.append(entry["name"])
            self.parts.append(registry.load(entry["name"], **entry.get("options", {})))
            weights.append(float(entry.get("weight", 1.0)))
        self.weights = torch.tensor(weights)

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError for a prompt one of the rewards cannot score."""
        for part in self.parts:
            if hasattr(part, "check_prompt"):
                part.check_prompt(prompt)

    def components(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """[N, M]: each reward, checked."""
        return torch.stack(
            [registry.checked_call(part, images, prompts, name) for part, name in zip(self.parts, self.names)], dim=1
        )

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.components(images, prompts) @ self.weights
