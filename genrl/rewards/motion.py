"""`shapeworld_motion`: the ShapeWorld-Motion judge as a reward of clips (docs/video.md, "Video rewards").

The reward of the video main job, as `shapeeval` is the image main job's: "partial" (the default, for
training) is the fraction of the prompt's constraints a clip meets, "strict" is 1 only when all are met
(the evaluation's metric), "frames" the per-frame checks a clip meets, averaged over frames (denser:
it still ranks clips whose objects flicker out of a frame or two); the constraints of each category are those of
`genrl.shapeworld_motion.judging`. It reads clips [N, F, 3, H, W] in [0, 1] (`reads = "clips"`), and a
prompt outside the motion grammar fails before the run, naming the word.

    reward: {name: multi, options: {rewards: [{name: shapeworld_motion, weight: 0.5, options: {mode: strict}},
                                              {name: shapeworld_motion, weight: 0.5, options: {mode: partial}}]}}
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from genrl.errors import ConfigError
from genrl.rewards.base import check_input, register
from genrl.shapeworld_motion import parse, score_clips

MODES = ("partial", "strict", "frames")


@register("shapeworld_motion")
class MotionReward:
    name = "shapeworld_motion"
    reads = "clips"

    def __init__(self, mode: str = "partial"):
        if mode not in MODES:
            raise ConfigError(f"shapeworld_motion reward: mode={mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode

    def check_prompt(self, prompt: str) -> None:
        """Only ShapeWorld-Motion prompts can be judged: a PromptError names the word the grammar rejects."""
        parse(prompt)

    def __call__(self, clips: Tensor, prompts: Sequence[str]) -> Tensor:
        check_input(self, clips)
        return score_clips(clips, prompts)[self.mode]  # [N], on the clips' device

    def __repr__(self) -> str:
        return f"MotionReward(mode={self.mode!r})"
