"""A cheap stand-in model for tests: latents [3, 8, 8], a small conv velocity net conditioned on a prompt embedding."""

from __future__ import annotations

import contextlib
import copy

import torch
from tensordict import TensorDict
from torch import nn

from genrl.models.base import ModelAdapter


class ToyAdapter(ModelAdapter):
    latent_shape = (3, 8, 8)

    def __init__(self, guidance_scale: float | None = None, seed: int = 0, hidden: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.guidance_scale = guidance_scale
        self.embed = nn.EmbeddingBag(128, 8, mode="mean")
        self.net = nn.Sequential(nn.Conv2d(3 + 8 + 1, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 3, 3, padding=1))
        self.embed.requires_grad_(False)
        self._reference = copy.deepcopy(self.net).requires_grad_(False)
        self._use_reference = False

    def encode(self, prompts):
        codes = [torch.tensor([ord(c) % 128 for c in p] or [0]) for p in prompts]
        offsets = torch.tensor([0] + [len(c) for c in codes[:-1]]).cumsum(0)
        with torch.no_grad():
            emb = self.embed(torch.cat(codes), offsets)
        return TensorDict({"prompt_embeds": emb}, batch_size=[len(prompts)])

    def _velocity(self, x, sigma, cond):
        b, _, h, w = x.shape
        e = cond["prompt_embeds"].reshape(b, -1, 1, 1).expand(b, -1, h, w)
        s = sigma.reshape(b, 1, 1, 1).expand(b, 1, h, w)
        net = self._reference if self._use_reference else self.net
        return net(torch.cat([x, e, s], dim=1))

    def decode(self, x):
        return ((x + 1) / 2).clamp(0, 1).repeat_interleave(4, -1).repeat_interleave(4, -2)

    @contextlib.contextmanager
    def reference(self):
        self._use_reference = True
        try:
            yield
        finally:
            self._use_reference = False


class TransformerToyAdapter(ToyAdapter):
    """The toy adapter with a real (tiny) diffusers SD3Transformer2DModel, whose kernels depend on batch shape."""

    def __init__(self, seed: int = 0, **kw):
        super().__init__(seed=seed, **kw)
        from diffusers import SD3Transformer2DModel

        torch.manual_seed(seed)
        self.transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=3, out_channels=3, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=8, caption_projection_dim=16, pooled_projection_dim=8,
            pos_embed_max_size=4,
        )

    def _velocity(self, x, sigma, cond):
        e = cond["prompt_embeds"]
        return self.transformer(x, e.unsqueeze(1).expand(-1, 2, -1), e, sigma * 1000).sample
