"""The rollout's layout, shared by chains (genrl.envs.denoising) and trees (genrl.envs.tree):
docs/architecture.md, "The rollout"."""

from __future__ import annotations

from tensordict import TensorDictBase
from torch import Tensor

from genrl import keys


def attach_latents(out: TensorDictBase, once: TensorDictBase, x: Tensor) -> TensorDictBase:
    """The rollout [N, R] from its per-step entries `out`: the latents x [N, R + 1, ...] as the views
    `latents`, `action`, ("next", "latents"), and the per-trajectory entries `once` [N] seen along R."""
    out.set(keys.LATENTS, x[:, :-1])
    out.set(keys.ACTION, x[:, 1:])
    out.set((keys.NEXT, keys.LATENTS), x[:, 1:])
    shared = once.unsqueeze(1).expand(*once.batch_size, out.batch_size[1])
    out.update(shared)
    out.set(keys.NEXT, out.get(keys.NEXT).update(shared))
    return out
