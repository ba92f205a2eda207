"""The reward interface: a registry, and the check every reward's output goes through.

A reward is a callable `reward(images [N,3,H,W] in [0,1], prompts) -> Tensor [N]`,
run under no_grad on the trainer's device. `checked_call` validates what it returns.
A groupwise reward (class attribute `groupwise = True`, e.g. `pairwise`) scores a prompt's
group together: `reward(images, prompts, group_ids [N]) -> [N]`; it is given whole groups.
A reward of clips [N, F, 3, H, W] (a video model's) says `reads = "clips"`; "any" takes either
(`multi`, whose parts say for themselves); see `reads` and genrl.rewards.video.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from genrl.advantages import combine_rewards
from genrl.errors import RewardError
from genrl.registry import Registry

REWARDS: Registry = Registry("reward")
register = REWARDS.register

RewardFn = Callable[[Tensor, Sequence[str]], Tensor]
FRAMES_HINT = ("give the image reward a reduction over frames, the reward option frames: mean | first | every_k "
               "(every_k with frame_stride: k); in a multi, in each image reward's options")


def load(name: str, **options) -> RewardFn:
    """The reward registered as `name`, built with its options (`genrl.rewards.load` also takes a reduction over
    frames, genrl.rewards.video)."""
    return REWARDS.get(name)(**options)


def reads(reward) -> str | None:
    """What a reward judges, its `reads`: "images" [N, 3, H, W] or "clips" [N, F, 3, H, W]. genrl's own rewards
    (classes in genrl.rewards, and their subclasses) read images unless they say otherwise; None for a user's
    reward that does not say."""
    declared = getattr(reward, "reads", None)
    if declared is not None:
        return declared
    ours = any(cls.__module__.startswith("genrl.rewards.") for cls in type(reward).__mro__)
    return "images" if ours else None


def check_input(reward, images: Tensor, name: str | None = None) -> None:
    """A RewardError when an image reward is handed clips or a clip reward images."""
    what, name = reads(reward), name or getattr(reward, "name", type(reward).__name__)
    if what == "images" and images.dim() == 5:
        raise RewardError(f"reward {name!r} judges images [N, 3, H, W] but was given clips {list(images.shape)}: "
                          f"{FRAMES_HINT}")
    if what == "clips" and images.dim() != 5:
        raise RewardError(f"reward {name!r} judges clips [N, F, 3, H, W] but was given {list(images.shape)}: "
                          "use it with a video model (e.g. model.name=tiny_video), or an image reward")


def is_groupwise(reward) -> bool:
    """Whether `reward` scores a prompt's group together (`reward(images, prompts, group_ids)`)."""
    return bool(getattr(reward, "groupwise", False))


def groups_of_prompts(prompts: Sequence[str]) -> Tensor:
    """Group ids [N] when none are given (an evaluation, a gym env): the images of one prompt are a group."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(p, len(ids)) for p in prompts], dtype=torch.int64)


def score(reward: RewardFn, images: Tensor, prompts: Sequence[str], group_id: Tensor, normalize: str = "none",
          name: str | None = None) -> Tensor:
    """The rewards [N] of a batch, checked; a reward of several `components` (multi) is their weighted sum,
    each z-scored within its prompt group first when normalize="group" (genrl.advantages.combine_rewards).
    A groupwise reward is given `group_id` (the trainer's batches hold whole groups)."""
    if hasattr(reward, "components"):
        return combine_rewards(reward.components(images, prompts, group_id), reward.weights, group_id, normalize)
    return checked_call(reward, images, prompts, name, group_id)


def checked_call(reward: RewardFn, images: Tensor, prompts: Sequence[str], name: str | None = None,
                 group_ids: Tensor | None = None) -> Tensor:
    """Call a reward under no_grad and reject a wrong shape or non-finite values, naming the culprit.
    A groupwise reward gets `group_ids` (default: one group per distinct prompt)."""
    name = name or getattr(reward, "name", type(reward).__name__)
    if isinstance(images, Tensor):
        check_input(reward, images, name)
    with torch.no_grad():
        if is_groupwise(reward):
            scores = reward(images, prompts, groups_of_prompts(prompts) if group_ids is None else group_ids)
        else:
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
