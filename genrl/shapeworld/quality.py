"""An image-quality guard for ShapeWorld: texture where a clean render is flat.

ShapeWorld renders are flat colours with hard edges, so every pixel pair inside the
background, or inside one shape, is identical. A policy trained on the colour-segmentation
score can add a checkerboard or noise texture that the scorer never sees (its light
denoising averages it away before pixels are classified) — reward hacking that no score
shows. This module measures it.

Texture energy of an image region: the mean absolute difference between horizontally or
vertically adjacent pixels (a high-pass filter; per channel, averaged over RGB) over the
pairs whose two pixels both lie in the region:
    texture_bg  the background, eroded by one pixel (every pixel of its 3×3 neighbourhood
                is background), so that shape edges and their blur do not count;
    texture_fg  the insides of the segmented shapes, eroded the same way (both pixels of
                a pair in the same colour class).
Regions come from the scorer's own pixel classification (`scoring.classify_pixels`).
A checkerboard of amplitude a (±a on alternate pixels) adds 2a to a flat region's energy.

`texture_summary` reports both over a batch of generated images, beside the same measures
of clean renders of the same prompts and seeds (`texture_bg_clean`, `texture_fg_clean`: 0
for today's hard-edged renderer, and the right reference if the renderer ever draws
anti-aliased or textured shapes).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from genrl.shapeworld.rendering import render_batch
from genrl.shapeworld.scoring import classify_pixels

TEXTURE_KEYS = ("texture_bg", "texture_fg")


def _eroded_same_class(classes: np.ndarray) -> np.ndarray:
    """[N, H, W] bool: pixels whose whole 3×3 neighbourhood (clipped at the border) has their class."""
    padded = np.pad(classes, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = classes.shape[1:]
    same = np.ones(classes.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[:, dy:dy + h, dx:dx + w] == classes
    return same


def texture_energy(images: Tensor) -> dict[str, Tensor]:
    """Per image of [N, 3, H, W] in [0, 1]: {"texture_bg", "texture_fg"} [N] float32 (see the module
    docstring); NaN for an image with no such pixel pair (e.g. no shape found)."""
    pixels = images.detach().float().cpu().numpy()  # [N, 3, H, W]
    classes = classify_pixels(images)  # [N, H, W]: 0 background, k > 0 colour k
    interior = _eroded_same_class(classes)
    diffs = (np.abs(np.diff(pixels, axis=-1)).mean(1), np.abs(np.diff(pixels, axis=-2)).mean(1))  # [N,H,W-1], [N,H-1,W]
    pairs = (  # both pixels interior and of one class, per direction
        interior[..., :-1] & interior[..., 1:] & (classes[..., :-1] == classes[..., 1:]),
        interior[:, :-1] & interior[:, 1:] & (classes[:, :-1] == classes[:, 1:]),
    )
    background = (classes[..., :-1] == 0, classes[:, :-1] == 0)  # the pair's first pixel decides, both share a class
    out = {}
    for key, want_background in (("texture_bg", True), ("texture_fg", False)):
        total, count = np.zeros(len(pixels)), np.zeros(len(pixels))
        for diff, pair, bg in zip(diffs, pairs, background):
            mask = pair & (bg if want_background else ~bg)
            total += (diff * mask).sum((1, 2))
            count += mask.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[key] = torch.from_numpy(np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32))
    return out


def nanmean(values: Tensor) -> float | None:
    """The mean of the finite values; None when there is none."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None


def texture_summary(images: Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> dict[str, float | None]:
    """{texture_bg, texture_fg, texture_bg_clean, texture_fg_clean}: means over the images (those where the
    region exists) of the generated `images` and of clean renders of the same prompts and seeds."""
    generated = texture_energy(images)
    clean = texture_energy(render_batch(list(prompts), [int(s) for s in seeds]))
    summary = {key: nanmean(generated[key]) for key in TEXTURE_KEYS}
    summary |= {f"{key}_clean": nanmean(clean[key]) for key in TEXTURE_KEYS}
    return {k: (None if v is None or math.isnan(v) else round(v, 6)) for k, v in summary.items()}
