"""Shared inputs of the parity tests: random latents and velocities on a schedule, in float64."""

from __future__ import annotations

import pytest
import torch

TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture
def random_step_inputs():
    """x, v, x' [B, 4, 6, 6] for every step k of a schedule (one row per step)."""

    def make(sigmas: torch.Tensor, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        steps = len(sigmas) - 1
        x = torch.randn(steps, 4, 6, 6, generator=g, dtype=torch.float64)
        v = torch.randn(steps, 4, 6, 6, generator=g, dtype=torch.float64)
        x_next = torch.randn(steps, 4, 6, 6, generator=g, dtype=torch.float64)
        s = sigmas.to(torch.float64)
        return x, v, x_next, s[:-1], s[1:]

    return make
