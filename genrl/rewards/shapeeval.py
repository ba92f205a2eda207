"""`shapeeval`: the ShapeWorld programmatic reward (docs/architecture.md, "ShapeWorld"), GenEval-style.

"partial" (the default, for training) is the fraction of the prompt's constraints an
image meets; "strict" is 1 only when all are met (the eval metric). The constraints of
each category are listed in `genrl.shapeworld.scoring`.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from genrl.errors import ConfigError
from genrl.rewards.base import register
from genrl.shapeworld import parse, score

MODES = ("partial", "strict")


@register("shapeeval")
class ShapeEvalReward:
    name = "shapeeval"

    def __init__(self, mode: str = "partial"):
        if mode not in MODES:
            raise ConfigError(f"shapeeval reward: mode={mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode

    def check_prompt(self, prompt: str) -> None:
        """Only ShapeWorld prompts can be scored: raise ValueError naming the word the grammar rejects."""
        parse(prompt)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return score(images, prompts)[self.mode]  # [N], on the images' device

    def __repr__(self) -> str:
        return f"ShapeEvalReward(mode={self.mode!r})"
