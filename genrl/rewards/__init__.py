"""Rewards by name: `genrl.rewards.load("shapeeval")` (docs/architecture.md, "Models and rewards").

A reward is a callable `reward(images [N,3,H,W] in [0,1], prompts) -> Tensor [N]`,
run under no_grad on the trainer's device (genrl.rewards.base). The built-in rewards
are imported when first asked for by name; a user's own registers with `@register`.
"""

from __future__ import annotations

from genrl.errors import RewardError
from genrl.rewards.base import REWARDS, RewardFn, checked_call, is_groupwise, register, score
from genrl.rewards.video import load  # the registry's load, with an optional reduction over frames

REWARDS.provide({
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
    "pairwise": "genrl.rewards.pairwise",
    "remote": "genrl.rewards.remote",
    "flicker": "genrl.rewards.video",
    "shapeworld_motion": "genrl.rewards.motion",
    "videoalign": "genrl.rewards.videoalign",
})

__all__ = ["REWARDS", "RewardError", "RewardFn", "checked_call", "is_groupwise", "load", "register", "score"]
