"""Ground-truth renders: flat, hard-edged shapes on a dark background that satisfy a prompt.

Each object sits in a square box of 7 to 12 px, fully inside the 32×32 image, with at
least two empty pixels between any two boxes. Circles are discs inscribed in their box,
squares fill it, triangles are upright isosceles (apex at the top centre, base along
the bottom edge). Sizes and positions come from `random.Random(seed)` alone, so a
(prompt, seed) pair always gives the same image. Layouts are drawn by rejection: a
position prompt's layout must satisfy its relation along the dominant axis with a
3 px margin (`relation_holds`), well above the scorer's 1 px.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from genrl.shapeworld.grammar import Constraints, parse, relation_holds

IMAGE_SIZE = 32
MIN_OBJECT_SIZE, MAX_OBJECT_SIZE = 7, 12
MIN_GAP = 2  # empty pixels between two objects' boxes; 2 so a blurred gap stays background
RENDER_RELATION_MARGIN = 3.0  # px; the scorer uses 1 px, so renders pass with room to spare
MAX_LAYOUT_ATTEMPTS = 10_000

# The one palette of ShapeWorld (RGB in [0, 1]); the scorer classifies pixels against it.
PALETTE: dict[str, tuple[float, float, float]] = {
    "background": (0.10, 0.10, 0.10),
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.88, 0.12),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.05),
}

# Pixel centres, shared by every mask: [H, W] each.
_PIXEL_Y, _PIXEL_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


@dataclass(frozen=True)
class Box:
    x0: int  # left column
    y0: int  # top row
    size: int

    def separated_from(self, other: "Box", gap: int = MIN_GAP) -> bool:
        return (
            self.x0 + self.size + gap <= other.x0
            or other.x0 + other.size + gap <= self.x0
            or self.y0 + self.size + gap <= other.y0
            or other.y0 + other.size + gap <= self.y0
        )


def shape_centroid(shape: str, box: Box) -> tuple[float, float]:
    """Centre of mass of the filled shape (a triangle's sits two thirds of the way down)."""
    cx = box.x0 + box.size / 2
    cy = box.y0 + box.size * (2 / 3 if shape == "triangle" else 1 / 2)
    return cx, cy


def shape_mask(shape: str, box: Box) -> np.ndarray:
    """[H, W] bool: the pixels whose centres fall inside the shape (hard edges, no anti-aliasing)."""
    half = box.size / 2
    cx, cy = box.x0 + half, box.y0 + half
    in_box = (np.abs(_PIXEL_X - cx) <= half) & (np.abs(_PIXEL_Y - cy) <= half)
    if shape == "square":
        return in_box
    if shape == "circle":
        return (_PIXEL_X - cx) ** 2 + (_PIXEL_Y - cy) ** 2 <= half**2
    if shape == "triangle":
        depth = (_PIXEL_Y - box.y0) / box.size  # 0 at the apex, 1 at the base
        return in_box & (np.abs(_PIXEL_X - cx) <= depth * half)
    raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")


def _scene_objects(constraints: Constraints) -> list[tuple[str, str]]:
    """(colour, shape) per object to draw, counted objects expanded."""
    return [(obj.color, obj.shape) for obj in constraints.objects for _ in range(obj.count)]


def _random_box(rng: random.Random) -> Box:
    size = rng.randint(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE)
    return Box(rng.randint(0, IMAGE_SIZE - size), rng.randint(0, IMAGE_SIZE - size), size)


def _layout_fits(constraints: Constraints, shapes: list[str], boxes: list[Box]) -> bool:
    for i, box in enumerate(boxes):
        if not all(box.separated_from(other) for other in boxes[:i]):
            return False
    rel = constraints.relation
    if rel is None:
        return True
    subject = shape_centroid(shapes[rel.subject], boxes[rel.subject])
    obj = shape_centroid(shapes[rel.object], boxes[rel.object])
    return relation_holds(subject, obj, rel.relation, RENDER_RELATION_MARGIN)


def sample_layout(constraints: Constraints, seed: int) -> list[Box]:
    """One box per object of `_scene_objects(constraints)`, drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    shapes = [shape for _, shape in _scene_objects(constraints)]
    for _ in range(MAX_LAYOUT_ATTEMPTS):
        boxes = [_random_box(rng) for _ in shapes]
        if _layout_fits(constraints, shapes, boxes):
            return boxes
    raise RuntimeError(f"no layout found for {constraints} with seed {seed} in {MAX_LAYOUT_ATTEMPTS} attempts")


def render(prompt: str, seed: int) -> Tensor:
    """A ground-truth image for `prompt`: float32 [3, 32, 32] in [0, 1]."""
    constraints = parse(prompt)
    objects = _scene_objects(constraints)
    boxes = sample_layout(constraints, seed)
    image = np.empty((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)  # [3, H, W]
    image[:] = np.asarray(PALETTE["background"], dtype=np.float32)[:, None, None]
    for (color, shape), box in zip(objects, boxes):
        image[:, shape_mask(shape, box)] = np.asarray(PALETTE[color], dtype=np.float32)[:, None]
    return torch.from_numpy(image)


def render_batch(prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
    """[N, 3, 32, 32]: `render(prompts[i], seeds[i])` stacked."""
    if len(prompts) != len(seeds):
        raise ValueError(f"render_batch got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    if len(prompts) == 0:
        return torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.stack([render(prompt, int(seed)) for prompt, seed in zip(prompts, seeds)])
