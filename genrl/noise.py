"""Seeded noise shared by the env's rollouts and the held-out evaluation.

A trajectory's initial noise is a function of its seed alone, so the same seed gives the same
starting latent in a training rollout, in an evaluation and in any process of a multi-process run.
"""

from __future__ import annotations

from typing import Sequence

import torch


def initial_noise(seeds: torch.Tensor, latent_shape: Sequence[int]) -> torch.Tensor:
    """x_0 ~ N(0, I), one generator per trajectory seed, so a trajectory is reproducible from its seed alone."""
    return torch.stack(
        [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    )
