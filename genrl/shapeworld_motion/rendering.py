"""Ground-truth clips: ShapeWorld's flat shapes moving in straight lines, FRAMES frames of SIZE×SIZE.

4 frames of 32×32: the shapes keep ShapeWorld's look (the image scorer's shape classes need boxes of
7 px or more), and 4 frames at 2 or 4 px per frame move an object 6 or 12 px, twice the judge's
3 px threshold or more, within the frame. Why 4 frames and not 8: a clip whose frames are packed
into one token by the denoiser (temporal patch 4, as Wan's VAE packs 4 frames into one latent frame)
costs what an image costs in tokens, so the world's 3-hour pretraining budget buys a model whose
objects persist (docs/video.md, "The world" and "History"); the 8-frame world drew fragments that came and went.
Each object keeps a box of 7 to 10 px that stays inside the
frame with two empty pixels to every other box in every frame. A moving object moves 2 or 4 px per
frame along its direction; the subject of a relative motion moves along the axis on which the two
objects are farther apart, toward (or away from) the other, which stays still. Sizes, positions and
speeds come from `random.Random(seed)` alone, so a (prompt, seed) pair always gives the same clip.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from genrl.shapeworld.rendering import PALETTE, Box, shape_mask
from genrl.shapeworld_motion.grammar import MOTIONS, MotionConstraints, parse

FRAMES, SIZE = 4, 32
MIN_OBJECT_SIZE, MAX_OBJECT_SIZE = 7, 10
SPEEDS = (2, 4)  # px per frame
MIN_GAP = 2
MAX_LAYOUT_ATTEMPTS = 20_000


def _objects(c: MotionConstraints) -> list[tuple[str, str, str]]:
    return [(o.color, o.shape, o.motion) for o in c.objects for _ in range(o.count)]


def _boxes_in_frame(starts: list[Box], velocities: list[tuple[int, int]], frame: int) -> list[Box]:
    return [Box(b.x0 + vx * frame, b.y0 + vy * frame, b.size) for b, (vx, vy) in zip(starts, velocities)]


def _fits(boxes: list[Box]) -> bool:
    inside = all(0 <= b.x0 and 0 <= b.y0 and b.x0 + b.size <= SIZE and b.y0 + b.size <= SIZE for b in boxes)
    return inside and all(b.separated_from(o, MIN_GAP) for i, b in enumerate(boxes) for o in boxes[:i])


def _relative_velocity(c: MotionConstraints, starts: list[Box], speed: int) -> tuple[int, int]:
    (a, b) = starts
    dx = (b.x0 + b.size / 2) - (a.x0 + a.size / 2)
    dy = (b.y0 + b.size / 2) - (a.y0 + a.size / 2)
    sign = 1 if c.relative == "toward" else -1
    if abs(dx) >= abs(dy):
        return (sign * speed * (1 if dx > 0 else -1), 0)
    return (0, sign * speed * (1 if dy > 0 else -1))


def sample_motion(c: MotionConstraints, seed: int, frames: int = FRAMES) -> tuple[list[Box], list[tuple[int, int]]]:
    """Start boxes and per-frame velocities of every object, drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    objects = _objects(c)
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        starts = []
        for _ in objects:
            size = rng.randint(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE)
            starts.append(Box(rng.randint(0, SIZE - size), rng.randint(0, SIZE - size), size))
        speed = rng.choice(SPEEDS)
        if c.category == "relative_motion":
            velocities = [_relative_velocity(c, starts, speed), (0, 0)]
        else:
            velocities = [(MOTIONS[m][0] * speed, MOTIONS[m][1] * speed) for _, _, m in objects]
        if all(_fits(_boxes_in_frame(starts, velocities, f)) for f in range(frames)):
            return starts, velocities
    raise RuntimeError(f"no motion found for {c} with seed {seed} in {MAX_LAYOUT_ATTEMPTS} attempts")


def render_clip(prompt: str, seed: int, frames: int = FRAMES) -> Tensor:
    """A ground-truth clip for `prompt`: float32 [F, 3, 32, 32] in [0, 1]."""
    c = parse(prompt)
    starts, velocities = sample_motion(c, seed, frames)
    clip = np.empty((frames, 3, SIZE, SIZE), dtype=np.float32)
    clip[:] = np.asarray(PALETTE["background"], dtype=np.float32)[None, :, None, None]
    for f in range(frames):
        for (color, shape, _), box in zip(_objects(c), _boxes_in_frame(starts, velocities, f)):
            clip[f][:, shape_mask(shape, box)] = np.asarray(PALETTE[color], dtype=np.float32)[:, None]
    return torch.from_numpy(clip)


def render_clips(prompts: Sequence[str], seeds: Sequence[int], frames: int = FRAMES) -> Tensor:
    """[N, F, 3, 32, 32]: `render_clip(prompts[i], seeds[i])` stacked."""
    if len(prompts) != len(seeds):
        raise ValueError(f"render_clips got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    return torch.stack([render_clip(p, int(s), frames) for p, s in zip(prompts, seeds)])


__all__ = ["FRAMES", "SIZE", "render_clip", "render_clips", "sample_motion"]
