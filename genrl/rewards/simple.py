"""Cheap image-only rewards: DDPO's JPEG (in)compressibility and mean brightness.

JPEG compressibility (Black et al. 2023, "Training Diffusion Models with Reinforcement
Learning", §6): encode each image as a JPEG at quality 95 and reward minus its size in
kB (compressibility: favours flat, simple images) or plus it (incompressibility).
Brightness, the mean pixel value, is a trivially cheap reward for tests.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from genrl.rewards.base import register

JPEG_QUALITY = 95


def _check_images(images: Tensor, name: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"reward {name!r} expects images as a Tensor [N, 3, H, W] in [0, 1], got {shape}")


def jpeg_size_kb(images: Tensor) -> Tensor:
    """[N, 3, H, W] in [0, 1] -> [N]: JPEG size at quality 95, in kB (1000 bytes, as in DDPO)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, 3]
    sizes = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


@register("jpeg_compressibility")
class JpegCompressibility:
    """−(JPEG size in kB): higher for images that compress well."""

    name = "jpeg_compressibility"

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_images(images, self.name)
        return -jpeg_size_kb(images)


@register("jpeg_incompressibility")
class JpegIncompressibility:
    """+(JPEG size in kB): higher for detailed, noisy images."""

    name = "jpeg_incompressibility"

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_images(images, self.name)
        return jpeg_size_kb(images)


@register("brightness")
class Brightness:
    """Mean pixel value in [0, 1]."""

    name = "brightness"

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_images(images, self.name)
        return images.float().mean(dim=(1, 2, 3))
