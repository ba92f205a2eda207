"""Held-out evaluation: ODE samples of fixed prompts and seeds, scored.

The same prompts and seeds for every algorithm and every run, so evaluation
scores are comparable. ShapeWorld prompts are scored GenEval-style (strict
correctness, per category); other prompts by the mean of the run's reward.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import Tensor

from genrl import dynamics
from genrl.models.base import ModelAdapter
from genrl.noise import initial_noise
from genrl.policy import fixed_shape_calls
from genrl.prompts import is_shapeworld
from genrl.rewards import checked_call


@torch.no_grad()
def sample_ode(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_steps: int = 20,
    shift: float = 1.0,
    micro_batch: int = 16,
) -> Tensor:
    """Images [N, 3, H, W] in [0, 1] for prompts[i] from initial-noise seed seeds[i], Euler ODE."""
    sigmas = dynamics.flow_sigmas(num_steps, shift)
    unique = sorted(set(prompts), key=list(prompts).index)
    encoded = adapter.encode(unique)
    cond = encoded[torch.tensor([unique.index(p) for p in prompts])]
    device = next(iter(encoded.values())).device
    x = initial_noise(torch.tensor(list(seeds)), adapter.latent_shape).to(device)
    names = list(cond.keys(include_nested=True, leaves_only=True))
    for k in range(num_steps):
        sigma = sigmas[k].expand(len(prompts)).to(device)

        def call(xs, s, *values):
            from tensordict import TensorDict

            return adapter.velocity(xs, s, TensorDict(dict(zip(names, values)), batch_size=[xs.shape[0]]))

        v = fixed_shape_calls(call, len(prompts), micro_batch, x, sigma, *[cond.get(n) for n in names])
        x = dynamics.step("ode", x, v, sigmas[k], sigmas[k + 1]).sample
    return adapter.decode(x).float().clamp(0, 1)


def sample_shared_out(dist, adapter: ModelAdapter, prompts: Sequence[str], seeds: Sequence[int], *args) -> Tensor:
    """sample_ode with each process of `dist` (genrl.distributed.Dist) taking an equal slice of rows
    (the last row repeated to fill), gathered in row order: every process calls the model equally often."""
    n, rank, world = len(prompts), dist.rank, dist.world
    per = -(-n // world)
    rows = [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]
    images = sample_ode(adapter, [prompts[i] for i in rows], [seeds[i] for i in rows], *args)
    return dist.gather(images)[:n]


def evaluation_seeds(prompts: Sequence[str], images_per_prompt: int) -> tuple[list[str], list[int]]:
    """Each prompt repeated `images_per_prompt` times, image j of prompt p from seed crc32(p)·1024 + j.

    Every prompt gets its own noises, fixed by its text alone (the same in every run,
    whatever else the prompt file holds). One shared set of seeds for all prompts would
    correlate the whole score with a few noises: on ShapeWorld the strict score of the
    same model ranged 0.17-0.41 over single shared seeds.
    """
    repeated = [p for p in prompts for _ in range(images_per_prompt)]
    return repeated, [zlib.crc32(p.encode()) * 1024 + j for p in prompts for j in range(images_per_prompt)]


def evaluate(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    images_per_prompt: int = 4,
    num_steps: int = 20,
    shift: float = 1.0,
    micro_batch: int = 16,
    reward=None,
    sampler=sample_ode,
) -> tuple[dict, Tensor, list[str]]:
    """({score, partial?, per_category?, per_prompt}, images, the prompt of each image).

    `sampler` has sample_ode's signature (the trainer passes one that shares rows out among processes).
    """
    repeated, seeds = evaluation_seeds(prompts, images_per_prompt)
    images = sampler(adapter, repeated, seeds, num_steps, shift, micro_batch)
    if is_shapeworld(list(prompts)):
        from genrl import shapeworld

        result = shapeworld.evaluate(images, repeated)
    else:
        if reward is None:
            raise ValueError("evaluating non-ShapeWorld prompts needs a reward")
        scores = checked_call(reward, images, repeated)
        per_prompt = {p: float(scores[[i for i, q in enumerate(repeated) if q == p]].mean()) for p in prompts}
        result = {"score": float(scores.mean()), "per_prompt": per_prompt}
    result["num_steps"] = num_steps
    result["images_per_prompt"] = images_per_prompt
    return result, images, repeated
