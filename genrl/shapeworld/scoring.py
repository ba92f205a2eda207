"""ShapeEval: GenEval-style programmatic scoring of images against ShapeWorld prompts.

Per image:
1. After a light denoising, each pixel takes the colour whose background-to-colour
   RGB segment is nearest, when it is close to that segment and at least halfway
   along it; otherwise it is background. A blurred edge is cut halfway, whatever the colour's brightness, its
   hue is judged against the background mix, and murky pixels fall back to background.
2. Same-colour pixels form 4-connected components; components smaller than
   `MIN_AREA_32` px (scaled by H*W/1024 for other sizes) are noise and dropped.
3. Each component's shape comes from two features of its bounding box (`classify_shape`):
   the height of its centroid within the box (an upright triangle's mass sits low:
   2/3 of the way down; circles and squares 1/2) and its fill ratio (square 1,
   circle π/4). Elongated, sparse or top-heavy components are "other" objects: they
   count as objects but match no prompt. Thresholds leave room for blur and noise:
   renders blurred twice by a 3×3 binomial kernel, or with Gaussian noise of
   std 0.1 per pixel, still score 1.0 strict.

Constraints, one per line, for a prompt whose objects are A (and B):
    single_object  "a red circle"        A present; exactly 1 object
    two_objects    "a A and a B"         A present; B present; exactly 2 objects
    color_attr     "a A and a B"         A present; B present; exactly 2 objects
    counting       "two A"               A present; exactly 2 A; exactly 2 objects
    position       "a A left of a B"     A present; B present; relation holds for
                                         some (A, B) pair; exactly 2 objects
"present" means a component of that colour and shape exists. The relation is judged
on centroids along the dominant axis (`relation_holds`, margin 1 px per 32 px).
strict = 1 when every constraint is met, partial = the fraction met.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from genrl.shapeworld.grammar import COLORS, Constraints, parse, relation_holds
from genrl.shapeworld.rendering import PALETTE

COLOR_TOLERANCE = 0.3  # RGB distance from a colour's background-to-colour segment
MIN_COLOR_FRACTION = 0.5  # how far from the background towards the colour a pixel must be
MIN_AREA_32 = 12  # px at 32×32; the smallest rendered object (a 7 px triangle) has 25
RELATION_MARGIN_32 = 1.0  # px at 32 px width
# Shape thresholds sit between the ranges measured on renders (7-12 px, all colours),
# sharp or blurred once or twice by a 3×3 binomial kernel, after `denoise`:
#   centroid height  triangles 0.557-0.664, circles 0.484-0.516, squares 0.486-0.514
#   fill ratio       triangles 0.50-0.84,   circles 0.76-0.88,   squares 0.92-1.0
MAX_ASPECT = 2.0  # a bounding box longer than this in either direction is no ShapeWorld shape
MIN_FILL = 0.45  # sparser components (rings, strokes, speckle) are no ShapeWorld shape
TRIANGLE_MIN_HEIGHT = 0.535  # centroid height (0 top, 1 bottom) above which the mass sits low
TOP_HEAVY_MAX_HEIGHT = 0.465  # e.g. an upside-down triangle
SQUARE_MIN_FILL = 0.90


@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str  # circle, square, triangle or "other"
    centroid: tuple[float, float]  # (x, y) in pixels
    area: int


def denoise(images: np.ndarray) -> np.ndarray:
    """A light 3×3 smoothing ([1, 4, 1] / 6 per axis, separable) of [N, 3, H, W].

    It halves per-pixel noise, which would otherwise flip pixels of orange, the
    colour between red and yellow, and punch holes in shapes; it is light enough
    that already-blurred renders keep their corners and triangle tips.
    """
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")  # [N, 3, H+2, W+2]
    rows = (padded[..., :-2, :] + 4 * padded[..., 1:-1, :] + padded[..., 2:, :]) / 6  # [N, 3, H, W+2]
    return (rows[..., :-2] + 4 * rows[..., 1:-1] + rows[..., 2:]) / 6  # [N, 3, H, W]


def classify_pixels(images: Tensor) -> np.ndarray:
    """[N, 3, H, W] -> [N, H, W] int: 0 for background, i + 1 for COLORS[i].

    Blur mixes a colour with the background, so each colour is the segment from the
    background to it in RGB: a pixel takes the colour of the nearest segment when it
    lies within `COLOR_TOLERANCE` of it and at least `MIN_COLOR_FRACTION` of the way
    along. A dark yellow edge then stays yellow instead of turning orange.
    Runs in numpy: for these small elementwise steps torch's thread pool only adds overhead.
    """
    n, _, h, w = images.shape
    pixels = denoise(images.detach().float().cpu().numpy())  # [N, 3, H, W]
    background = np.asarray(PALETTE["background"], dtype=np.float32)  # [3]
    directions = np.asarray([PALETTE[c] for c in COLORS], dtype=np.float32) - background  # [6, 3]
    offsets = pixels.transpose(1, 0, 2, 3).reshape(3, -1) - background[:, None]  # [3, N*H*W]
    # Three broadcast products instead of a matmul: BLAS threads only add overhead here.
    projections = sum(directions[:, c, None] * offsets[c] for c in range(3))  # [6, N*H*W]
    lengths_sq = np.square(directions).sum(-1)[:, None]  # [6, 1]
    along = projections / lengths_sq  # [6, N*H*W]: 0 at the background, 1 at the colour
    clamped = np.clip(along, 0, 1)
    # |offset - clamped * direction|², expanded so that no [6, 3, N*H*W] array is built
    residual_sq = (offsets * offsets).sum(0) + clamped * (clamped * lengths_sq - 2 * projections)  # [6, N*H*W]
    best = residual_sq.argmin(axis=0)  # [N*H*W]
    best_residual_sq = np.take_along_axis(residual_sq, best[None], axis=0)[0]
    best_along = np.take_along_axis(along, best[None], axis=0)[0]
    colored = (best_residual_sq < COLOR_TOLERANCE**2) & (best_along >= MIN_COLOR_FRACTION)
    return np.where(colored, best + 1, 0).reshape(n, h, w)


def label_components(classes: np.ndarray) -> np.ndarray:
    """[N, H, W] classes -> [N, H, W] labels: for each non-background pixel, the flat index
    (into the [N, H, W] array) of the first pixel of its 4-connected same-class component;
    -1 for background. Min-label propagation with pointer jumping, vectorised over the batch."""
    size = classes.size
    foreground = classes > 0
    labels = np.where(foreground, np.arange(size).reshape(classes.shape), size)  # background: a sentinel above all
    linked_right = foreground[:, :, :-1] & (classes[:, :, :-1] == classes[:, :, 1:])  # [N, H, W-1]
    linked_down = foreground[:, :-1, :] & (classes[:, :-1, :] == classes[:, 1:, :])  # [N, H-1, W]
    while True:
        new = labels.copy()
        np.minimum(new[:, :, :-1], np.where(linked_right, labels[:, :, 1:], size), out=new[:, :, :-1])
        np.minimum(new[:, :, 1:], np.where(linked_right, labels[:, :, :-1], size), out=new[:, :, 1:])
        np.minimum(new[:, :-1, :], np.where(linked_down, labels[:, 1:, :], size), out=new[:, :-1, :])
        np.minimum(new[:, 1:, :], np.where(linked_down, labels[:, :-1, :], size), out=new[:, 1:, :])
        # Every label points at a pixel of the same component whose own label is no larger:
        # following it once more shortens long chains in one step.
        flat = new.reshape(-1)
        flat[foreground.reshape(-1)] = flat[flat[foreground.reshape(-1)]]
        if np.array_equal(new, labels):
            return np.where(foreground, labels, -1)
        labels = new


def classify_shape(fill: float, centroid_height: float, aspect: float) -> str:
    """circle / square / triangle / other from the bounding-box features of one component."""
    if aspect > MAX_ASPECT or aspect < 1 / MAX_ASPECT or fill < MIN_FILL:
        return "other"
    if centroid_height > TRIANGLE_MIN_HEIGHT:
        return "triangle"
    if centroid_height < TOP_HEAVY_MAX_HEIGHT:
        return "other"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def detect_objects(images: Tensor) -> list[list[DetectedObject]]:
    """The coloured objects in each image of [N, 3, H, W] (see the module docstring)."""
    n, _, h, w = images.shape
    classes = classify_pixels(images)  # [N, H, W]
    labels = label_components(classes).reshape(-1)
    pixels = np.flatnonzero(labels >= 0)
    detected: list[list[DetectedObject]] = [[] for _ in range(n)]
    if pixels.size == 0:
        return detected
    roots, component = np.unique(labels[pixels], return_inverse=True)
    ys, xs = (pixels // w) % h, pixels % w
    area = np.bincount(component)
    sum_x, sum_y = np.bincount(component, xs), np.bincount(component, ys)
    y_min, x_min = np.full(len(roots), h), np.full(len(roots), w)
    y_max, x_max = np.full(len(roots), -1), np.full(len(roots), -1)
    np.minimum.at(y_min, component, ys)
    np.minimum.at(x_min, component, xs)
    np.maximum.at(y_max, component, ys)
    np.maximum.at(x_max, component, xs)
    min_area = MIN_AREA_32 * h * w / 1024
    for i in np.flatnonzero(area >= min_area):
        height, width = y_max[i] - y_min[i] + 1, x_max[i] - x_min[i] + 1
        cx, cy = sum_x[i] / area[i] + 0.5, sum_y[i] / area[i] + 0.5  # pixel centres
        shape = classify_shape(area[i] / (height * width), (cy - y_min[i]) / height, width / height)
        color = COLORS[classes.reshape(-1)[roots[i]] - 1]
        detected[roots[i] // (h * w)].append(DetectedObject(color, shape, (float(cx), float(cy)), int(area[i])))
    return detected


def constraints_met(constraints: Constraints, objects: list[DetectedObject], relation_margin: float) -> list[bool]:
    """One bool per constraint of the prompt (the table in the module docstring)."""
    matches = [[o for o in objects if (o.color, o.shape) == (spec.color, spec.shape)] for spec in constraints.objects]
    met = [len(found) > 0 for found in matches]
    met += [len(found) == spec.count for spec, found in zip(constraints.objects, matches) if spec.count > 1]
    rel = constraints.relation
    if rel is not None:
        met.append(
            any(
                relation_holds(s.centroid, o.centroid, rel.relation, relation_margin)
                for s in matches[rel.subject]
                for o in matches[rel.object]
            )
        )
    met.append(len(objects) == sum(spec.count for spec in constraints.objects))
    return met


def _check_inputs(images: Tensor, prompts: Sequence[str]) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"score expects images as a Tensor [N, 3, H, W] in [0, 1], got {shape}")
    if images.shape[0] != len(prompts):
        raise ValueError(f"score got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")


def score(images: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
    """{"strict": [N] 0/1, "partial": [N] fraction of constraints met}, on the images' device."""
    _check_inputs(images, prompts)
    constraints = [parse(prompt) for prompt in prompts]  # fail on a bad prompt before any work
    relation_margin = RELATION_MARGIN_32 * images.shape[-1] / 32
    detected = detect_objects(images.detach())
    met = [constraints_met(c, objects, relation_margin) for c, objects in zip(constraints, detected)]
    strict = torch.tensor([float(all(m)) for m in met], device=images.device)
    partial = torch.tensor([sum(m) / len(m) for m in met], dtype=torch.float32, device=images.device)
    return {"strict": strict, "partial": partial}


def evaluate(images: Tensor, prompts: Sequence[str]) -> dict:
    """Scores summarised as {"score", "partial", "per_category", "per_prompt"} (plain floats).

    `per_category` maps each category present to its strict mean; `per_prompt` maps each
    prompt to {"strict", "partial", "n"}, averaged over the images of that prompt.
    """
    return summarise(score(images, prompts), prompts)


def summarise(scores: dict[str, Tensor], prompts: Sequence[str], parse=parse) -> dict:
    """`evaluate`'s summary of per-image scores already computed by `score` (ShapeWorld-Motion's
    judge passes its own `parse`, whose constraints name the category)."""
    strict, partial = scores["strict"].tolist(), scores["partial"].tolist()
    by_category: dict[str, list[float]] = defaultdict(list)
    by_prompt: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for prompt, s, p in zip(prompts, strict, partial):
        by_category[parse(prompt).category].append(s)
        by_prompt[prompt].append((s, p))
    n = max(len(prompts), 1)
    return {
        "score": sum(strict) / n,
        "partial": sum(partial) / n,
        "per_category": {name: sum(values) / len(values) for name, values in by_category.items()},
        "per_prompt": {
            prompt: {
                "strict": sum(s for s, _ in values) / len(values),
                "partial": sum(p for _, p in values) / len(values),
                "n": len(values),
            }
            for prompt, values in by_prompt.items()
        },
    }
