"""Rewards of clips: image rewards reduced over frames, the temporal-flicker reward, and the checks that a
reward is given what it reads (docs/video.md, "Video rewards").

A video model's `decode` returns clips [N, F, 3, H, W] in [0, 1]. What a reward reads is its `reads`
attribute, "images" or "clips"; genrl's own rewards (classes in genrl.rewards) read images unless they
say "clips", and a user's reward that says neither is handed whatever the model decodes, unchecked.

Any image reward scores clips through a reduction over frames, given as a reward option that
`genrl.rewards.load` takes off before building the reward and applies by wrapping it (`FrameReduced`):

    reward: {name: pickscore, options: {frames: mean}}                        # every frame, then the mean
    reward: {name: pickscore, options: {frames: first}}                       # the first frame only
    reward: {name: pickscore, options: {frames: every_k, frame_stride: 4}}    # frames 0, 4, 8, ..., then the mean

It is an option of the reward, not a key of the reward section, because a `multi` mixes clip rewards
and image rewards, each of its entries built by `load` with its own options: `{name: shapeeval,
options: {mode: strict, frames: first}}` next to `{name: shapeworld_motion}`.

`flicker` is model-free: minus the mean absolute difference of consecutive frames, over frames,
channels and pixels. A reward is higher for better clips, so the still clip scores the best value, 0;
a clip alternating two frames a, b scores −mean|a − b|; the range is [−1, 0]. Alone it rewards clips
that do not move: use it in a `multi` next to a reward of the motion asked for.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from genrl.errors import ConfigError, RewardError
from genrl.rewards import base as registry
from genrl.rewards.base import FRAMES_HINT, check_input, reads

FRAME_REDUCTIONS = ("mean", "first", "every_k")


def load(name: str, frames: str | None = None, frame_stride: int | None = None, **options):
    """The reward registered as `name`, built with its options, reduced over frames when `frames` is given:
    `genrl.rewards.load`, and what `multi` builds each of its entries with."""
    return with_reduction(registry.load(name, **options), frames, frame_stride)


def reward_name(reward) -> str:
    return getattr(reward, "name", type(reward).__name__)


def check_reward_inputs(reward, latent_shape: Sequence[int], model_name: str) -> None:
    """Before anything is written: a model whose latents are [C, F, H, W] decodes clips, one of [C, H, W]
    images; a ConfigError names the reward (a multi's entry) that cannot read them."""
    clips = len(latent_shape) >= 4
    parts = zip(reward.names, reward.parts) if hasattr(reward, "parts") and hasattr(reward, "names") else [(None, reward)]
    for name, part in parts:
        name = name or reward_name(part)
        what = reads(part)
        if clips and what == "images":
            raise ConfigError(f"reward {name!r} judges images but model.name={model_name!r} makes clips (latents "
                              f"{list(latent_shape)}): {FRAMES_HINT}")
        if not clips and what == "clips":
            raise ConfigError(f"reward {name!r} judges clips [N, F, 3, H, W] but model.name={model_name!r} makes images "
                              f"(latents {list(latent_shape)}): use a video model (e.g. model.name=tiny_video) or an image reward")


def frame_indices(frames: int, mode: str, stride: int | None) -> list[int]:
    """The frames a reduction scores, of a clip of `frames` frames."""
    if mode == "first":
        return [0]
    return list(range(0, frames, 1 if mode == "mean" else stride))


def check_reduction(mode: str, stride) -> None:
    if mode not in FRAME_REDUCTIONS:
        raise ConfigError(f"reward option frames={mode!r} is not allowed: choose one of {', '.join(FRAME_REDUCTIONS)}")
    if mode == "every_k":
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"reward option frames=every_k needs frame_stride, a whole number >= 1, got {stride!r}")
    elif stride is not None:
        raise ConfigError(f"reward option frame_stride={stride!r} applies to frames=every_k only, not frames={mode!r}")


class FrameReduced:
    """An image reward applied to clips: its score of each chosen frame, averaged over those frames.

    Each chosen frame is scored as one batch of N images with the clips' prompts (and group ids, for a
    groupwise reward, which then compares the clips' k-th frames among themselves)."""

    reads = "clips"

    def __init__(self, reward, mode: str, stride: int | None = None):
        check_reduction(mode, stride)
        self.reward, self.mode, self.stride = reward, mode, stride
        self.name = reward_name(reward)
        self.groupwise = registry.is_groupwise(reward)
        if hasattr(reward, "check_prompt"):
            self.check_prompt = reward.check_prompt

    def __call__(self, clips: Tensor, prompts: Sequence[str], group_ids: Tensor | None = None) -> Tensor:
        check_input(self, clips)
        scores = [registry.checked_call(self.reward, clips[:, k], prompts, self.name, group_ids)
                  for k in frame_indices(clips.shape[1], self.mode, self.stride)]
        return torch.stack(scores, dim=1).mean(1)

    def __repr__(self) -> str:
        stride = f", frame_stride={self.stride}" if self.stride is not None else ""
        return f"FrameReduced({self.reward!r}, frames={self.mode!r}{stride})"


def with_reduction(reward, mode: str | None, stride: int | None):
    """`reward` reduced over frames when a reduction is given (what `genrl.rewards.load` does with the options)."""
    if mode is None:
        if stride is not None:
            raise ConfigError(f"reward option frame_stride={stride!r} needs frames=every_k")
        return reward
    if hasattr(reward, "components"):
        raise ConfigError(f"reward {reward_name(reward)!r}: give frames on each image reward of reward.options.rewards, "
                          "not on the multi (a clip reward in it takes none)")
    if reads(reward) == "clips":
        raise ConfigError(f"reward {reward_name(reward)!r} judges clips already: it takes no frames option")
    return FrameReduced(reward, mode, stride)


@registry.register("flicker")
class FlickerReward:
    """−mean |x[t+1] − x[t]| of clips [N, F ≥ 2, 3, H, W] in [0, 1]: 0 for a still clip, −1 at worst."""

    name = "flicker"
    reads = "clips"

    def __call__(self, clips: Tensor, prompts: Sequence[str]) -> Tensor:
        check_input(self, clips)
        if clips.shape[1] < 2:
            raise RewardError(f"reward 'flicker' needs clips of 2 frames or more, got {list(clips.shape)}")
        return -(clips[:, 1:].float() - clips[:, :-1].float()).abs().flatten(1).mean(1)

    def __repr__(self) -> str:
        return "FlickerReward()"


__all__ = ["FRAME_REDUCTIONS", "FlickerReward", "FrameReduced", "check_reward_inputs", "frame_indices", "load",
           "with_reduction"]
