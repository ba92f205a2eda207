"""Cheap stand-in video models for tests: latents [C=3, F=2, H=4, W=4] in Wan's layout, clips out.

`ToyVideoAdapter`: a small Conv3d velocity net conditioned on a prompt embedding, whose `decode`
returns clips [N, F, 3, H', W'] in [0, 1] (each frame enlarged ×2), the layout of tiny_video's and
ShapeWorld-Motion's clips. `FramesAsRows` is the same model seen through a 4-D latent [C, F·H, W]
(frames stacked along the height), and `OneFrame` an image model seen as a one-frame video: the
tests compare what genrl computes from each pair of views of one model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from genrl.models.base import ModelAdapter
from toy_adapter import ToyAdapter


class ToyVideoAdapter(ToyAdapter):
    """The toy image adapter's prompt embedding and reference, with a Conv3d net over [C, F, H, W]."""

    latent_shape = (3, 2, 4, 4)

    def __init__(self, guidance_scale: float | None = None, seed: int = 0, hidden: int = 8):
        super().__init__(guidance_scale, seed, hidden)
        self.net = nn.Sequential(nn.Conv3d(3 + 8 + 1, hidden, 3, padding=1), nn.SiLU(), nn.Conv3d(hidden, 3, 3, padding=1))
        self._reference = copy.deepcopy(self.net).requires_grad_(False)

    def _velocity(self, x, sigma, cond):
        b, _, f, h, w = x.shape
        e = cond["prompt_embeds"].reshape(b, -1, 1, 1, 1).expand(b, -1, f, h, w)
        s = sigma.reshape(b, 1, 1, 1, 1).expand(b, 1, f, h, w)
        net = self._reference if self._use_reference else self.net
        return net(torch.cat([x, e, s], dim=1))

    def decode(self, x):
        """Latents [N, 3, F, H, W] → clips [N, F, 3, 2H, 2W] in [0, 1]."""
        clips = ((x.float().transpose(1, 2) + 1) / 2).clamp(0, 1)
        return clips.repeat_interleave(2, -1).repeat_interleave(2, -2)


class _View(ModelAdapter):
    """Another adapter's model behind other latent and image layouts (`to_inner`, `from_inner`, `images`)."""

    def __init__(self, inner: ModelAdapter):
        super().__init__()
        self.inner = inner
        self.guidance_scale = inner.guidance_scale

    def encode(self, prompts):
        return self.inner.encode(prompts)

    def _velocity(self, x, sigma, cond):
        return self.from_inner(self.inner._velocity(self.to_inner(x), sigma, cond))

    def decode(self, x):
        return self.images(self.inner.decode(self.to_inner(x)))

    def reference(self):
        return self.inner.reference()


class FramesAsRows(_View):
    """A video model [C, F, H, W] seen as an image model [C, F·H, W]: the same numbers, one dim fewer.
    Its decode gives the inner model's clips, so a reward sees the same pixels."""

    def __init__(self, inner: ModelAdapter):
        super().__init__(inner)
        c, f, h, w = inner.latent_shape
        self.latent_shape = (c, f * h, w)

    def to_inner(self, x):
        return x.reshape(x.shape[0], *self.inner.latent_shape)

    def from_inner(self, x):
        return x.reshape(x.shape[0], *self.latent_shape)

    def images(self, clips):
        return clips


class OneFrame(_View):
    """An image model [C, H, W] seen as a one-frame video model [C, 1, H, W] whose decode gives clips
    [N, 1, 3, H', W']."""

    def __init__(self, inner: ModelAdapter):
        super().__init__(inner)
        c, h, w = inner.latent_shape
        self.latent_shape = (c, 1, h, w)

    def to_inner(self, x):
        return x.squeeze(2)

    def from_inner(self, x):
        return x.unsqueeze(2)

    def images(self, images):
        return images.unsqueeze(1)
