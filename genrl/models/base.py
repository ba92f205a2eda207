"""The interface between genrl and a text-to-image flow model (docs/architecture.md, "Models and rewards").

An adapter owns the model's modules and hides its conventions (timestep scale,
latent packing, CFG or guidance embedding, VAE). genrl only ever calls:

    cond = adapter.encode(prompts)              # TensorDict [N]: per-prompt conditioning
    v = adapter.velocity(x, sigma, cond)        # x [B, *latent_shape] float32, sigma [B] -> v float32
    images = adapter.decode(x)                  # [B, 3, H, W] in [0, 1]
    with adapter.reference(): ...               # the frozen base policy (for KL)
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from genrl.errors import CheckpointError
from genrl.registry import Registry

MODELS: Registry = Registry("model")  # adapters by name; genrl.models provides the built-in ones
register = MODELS.register


class ModelAdapter(nn.Module):
    """Base class; subclasses implement `encode`, `_velocity` and `decode`."""

    #: shape of one latent, e.g. (3, 32, 32) or (16, 90, 90)
    latent_shape: tuple[int, ...] = ()
    #: classifier-free guidance scale; 1.0 (or None) means a single conditional pass
    guidance_scale: float | None = None

    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """Per-prompt conditioning, batch size [len(prompts)], float32 or model dtype."""
        raise NotImplementedError

    def _velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        """The model's velocity for a batch, without guidance."""
        raise NotImplementedError

    def unconditional(self, batch_size: int) -> TensorDict:
        """Conditioning of the empty prompt, for CFG (adapters that use CFG override)."""
        return self.encode([""] * batch_size)

    def velocity(self, x: Tensor, sigma: Tensor, cond: TensorDict) -> Tensor:
        """v = v_u + w·(v_c − v_u) with one batched pass of [uncond; cond]; float32 out."""
        w = self.guidance_scale
        if w is None or w == 1.0:
            return self._velocity(x, sigma, cond).float()
        uncond = self.unconditional(x.shape[0]).to(x.device)
        both = self._velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([uncond, cond]))
        v_u, v_c = both.float().chunk(2)
        return v_u + w * (v_c - v_u)

    @property
    def nfe_per_velocity(self) -> int:
        """Model evaluations per `velocity` call and sample (CFG counts two)."""
        w = self.guidance_scale
        return 1 if (w is None or w == 1.0) else 2

    def decode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context `velocity` is the frozen base policy (LoRA disabled)."""
        raise NotImplementedError(f"{type(self).__name__} has no reference policy")
        yield  # pragma: no cover

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint needs to restore the trained policy."""
        names = {id(p) for p in self.trainable_parameters()}
        return {k: v.detach().clone() for k, v in self.named_parameters() if id(v) in names}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = [k for k in state if k not in params]
        if missing:
            raise CheckpointError(f"checkpoint holds parameters this model does not have: {missing[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
