"""Bytes of a rollout and of the training rows of a minibatch, against the least they can be.

- Rollout: distinct storages (a view costs nothing) of `env.rollout(...)` with `keys.ADVANTAGE` set
  as the trainer sets it, against the minimum of K + 1 latents and one context per trajectory.
- Minibatch: what the trainer holds of a minibatch's training rows at once: its index rows (trajectory,
  step, unit) and the largest pass copied out of the rollout (`StepRows.gather`), against what its
  trained steps need: x_k and x_{k+1} and the scalars the objective reads per row, one context per
  trajectory. A pass copies its rows' context per row (the model's input batch), a few calls' worth.

The main job is measured on the shipped tiny model. The GPU configs' shapes are computed: their
algorithms, steps, SDE windows and objectives are built from the configs and run with a stand-in
adapter of the real model's latent and context shapes and dtypes (zero velocity) on one group,
whose bytes per trajectory scale to the config's batch; the minibatch's units and passes are those
its algorithm draws at the full batch (genrl.benchmarks.packing). "before" is the layout this
replaced, computed: latents, action and μ_θ stored per step, a minibatch row holding four latents
(latents, action, loc, next latents) and the context twice (context, next context).

    python -m genrl.benchmarks.memory
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase

from genrl import build, config, keys
from genrl.benchmarks.packing import minibatch_passes
from genrl.benchmarks.suite import load_suite, plan_runs
from genrl.models.base import ModelAdapter
from genrl.passes import unit_passes
from genrl.training_batch import UpdateContext

SUITES = ("sd35m-geneval-like", "flux-hps", "wan")  # flux-pickscore has flux-hps's shapes (another reward)
ALGORITHMS = ("chunk_grpo", "flow_grpo", "dance_grpo")
SMALL = ["train.prompts_per_update=1", "train.group_size=2", "train.minibatches=1", "prompts.train=shapeworld:train",
         "prompts.eval=shapeworld:eval", "device=cpu", "seed=0"]


def storage_bytes(tds: Sequence[TensorDictBase]) -> int:
    """Bytes of the distinct storages behind the tensors of `tds` (views of one storage count once)."""
    seen = {}
    for td in tds:
        for value in td.values(include_nested=True, leaves_only=True):
            seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(seen.values())


class ShapeAdapter(ModelAdapter):
    """A model's latent (of any rank: an image's [C, H, W], a video's [C, F, H, W]) and context shapes and
    dtypes (as its adapter's `encode` returns them) and a zero velocity: what a rollout stores does not
    depend on the weights."""

    def __init__(self, latent_shape: tuple, context: dict):
        super().__init__()
        self.latent_shape, self.context = latent_shape, context
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, prompts):
        return TensorDict({k: torch.zeros(len(prompts), *shape, dtype=dtype) for k, (shape, dtype) in self.context.items()},
                          batch_size=[len(prompts)])

    def _velocity(self, x, sigma, cond):
        return torch.zeros_like(x) * self.weight


def stand_in_adapter(cfg: config.Config) -> ShapeAdapter:
    """genrl.models.sd3 / flux at the config's resolution and text length: latents [16, side, side]
    (VAE factor 8), bf16 prompt embeddings (SD3: 77 CLIP + T5 tokens × 4096, pooled 2048; FLUX: T5
    tokens × 4096, pooled 768); genrl.models.wan: clip latents [16, F', H/8, W/8], UMT5 tokens × 4096."""
    if cfg.model.name == "wan":
        from genrl.benchmarks.wan_shapes import latent_shape, option

        tokens = option(cfg.model.options, "max_sequence_length")
        return ShapeAdapter(latent_shape(cfg.model.options), {keys.PROMPT_EMBEDS: ((tokens, 4096), torch.bfloat16)})
    o, side = cfg.model.options, cfg.model.options["resolution"] // 8
    tokens, pooled = (77 + o["max_sequence_length"], 2048) if cfg.model.name == "sd3" else (o["max_sequence_length"], 768)
    return ShapeAdapter((16, side, side), {keys.PROMPT_EMBEDS: ((tokens, 4096), torch.bfloat16),
                                           keys.POOLED_EMBEDS: ((pooled,), torch.bfloat16)})


def mean_pixel(images: torch.Tensor, prompts) -> torch.Tensor:
    """A stand-in reward [N] of images [N, 3, H, W] or clips [N, F, 3, H, W]: the bytes do not depend on it."""
    return images.flatten(1).mean(1)


def rollout_and_batch(parts: build.Components):
    """A rollout with its advantages, and its training batch as the trainer makes them."""
    with torch.no_grad():
        rollout = parts.env.rollout(policy=parts.policy)
    n = rollout.batch_size[0]
    rollout.set(keys.ADVANTAGE, torch.zeros(n)[:, None].expand(rollout.batch_size))
    ctx = UpdateContext(0, torch.Generator().manual_seed(0), slice(0, n), n, in_keys=parts.objective.in_keys)
    return rollout, parts.algorithm.training_batch(rollout, ctx)


def sizes(rollout: TensorDictBase) -> tuple[int, int, int]:
    """Bytes of one latent, of one trajectory's context, and K."""
    latent = rollout.get(keys.LATENTS)[0, 0]
    context = rollout.get(keys.CONTEXT)[0, 0]
    return latent.numel() * latent.element_size(), storage_bytes([context.clone()]), rollout.get(keys.L1_REL).shape[-1]


def row(label: str, n: int, k: int, r: int, rollout_bytes: float, latent: int, context: int, minibatch: dict) -> dict:
    minimum = n * ((k + 1) * latent + context)
    return {"setting": label, "trajectories": n, "K": k, "rows": r, "rollout": rollout_bytes, "rollout_minimum": minimum,
            "rollout_before": n * (3 * k * latent + context), **minibatch}


def measured_main_job() -> dict:
    """The main job on the shipped tiny model: a real rollout and the first minibatch's passes."""
    cfg = config.load(None, ["device=cpu"])
    parts = build.build(cfg, env_reward=False)
    rollout, batch = rollout_and_batch(parts)
    latent, context, k = sizes(rollout)
    n = rollout.batch_size[0]
    groups = rollout.get(keys.GROUP_ID)[:, 0]
    trajectories = torch.isin(groups, groups.unique()[: len(groups.unique()) // cfg.train.minibatches]).nonzero().flatten()
    rows = batch.rows(trajectories)
    largest = max((batch.gather(p.rows()) for p in unit_passes(rows, cfg.sampling.micro_batch)),
                  key=lambda td: td.batch_size[0])
    per_row = storage_bytes([largest]) / largest.batch_size[0]
    minibatch = minibatch_bytes(rows.batch_size[0], len(trajectories), storage_bytes([rows]) / rows.batch_size[0],
                                largest.batch_size[0], per_row, latent, context)
    return row("main job (tiny, measured)", n, k, rollout.batch_size[1], storage_bytes([rollout]), latent, context, minibatch)


def minibatch_bytes(steps: int, trajectories: int, index_per_row: float, largest_pass: int, gathered_per_row: float,
                    latent: int, context: int) -> dict:
    scalars = gathered_per_row - 2 * latent - context  # per row: log-prob, σ, step, seeds, advantage, unit
    return {"minibatch_steps": steps, "minibatch_peak": steps * index_per_row + largest_pass * gathered_per_row,
            "minibatch_need": steps * (2 * latent + scalars) + trajectories * context,
            "minibatch_before": steps * (4 * latent + 2 * context + scalars)}


def computed(suite: str, algorithm: str) -> dict:
    """A GPU suite's shapes: bytes per trajectory from a one-group rollout of the stand-in adapter, scaled."""
    plan = next(p for p in plan_runs(load_suite(suite)) if p.algorithm == algorithm)
    cfg = plan.cfg
    small = config.from_dict(config.apply_overrides(cfg.to_dict(), SMALL))
    adapter = stand_in_adapter(cfg)
    parts = build.build(small, adapter=adapter, reward=mean_pixel, env_reward=False)
    rollout, batch = rollout_and_batch(parts)
    latent, context, k = sizes(rollout)
    n_small, n = rollout.batch_size[0], cfg.train.prompts_per_update * cfg.train.group_size
    rows = batch.rows(torch.arange(n_small))
    gathered = batch.gather(rows)
    # the largest minibatch and pass the algorithm's draws make at the full batch (one process)
    drawn = [m["now"][0] for u in range(3) for m in minibatch_passes(cfg, u, 1, torch.Generator().manual_seed(u))]
    steps = max(sum(p) for p in drawn)
    per_traj = n // cfg.train.minibatches
    minibatch = minibatch_bytes(steps, per_traj, storage_bytes([rows]) / rows.batch_size[0], max(max(p) for p in drawn),
                                storage_bytes([gathered]) / gathered.batch_size[0], latent, context)
    return row(f"{suite} {algorithm}", n, k, rollout.batch_size[1], storage_bytes([rollout]) / n_small * n, latent, context,
               minibatch)


def measure(suites: Sequence[str] = SUITES) -> list[dict]:
    return [measured_main_job()] + [computed(s, a) for s in suites for a in ALGORITHMS]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    mb = 2**20
    print(f"{'setting':<33} {'N':>4} {'K':>3} {'R':>3} | {'rollout MiB':>11} {'min':>9} {'ratio':>6} {'before':>6} |"
          f" {'rows':>5} {'minibatch MiB':>13} {'need':>9} {'ratio':>6} {'before MiB':>10}")
    for r in measure():
        print(f"{r['setting']:<33} {r['trajectories']:>4} {r['K']:>3} {r['rows']:>3} | {r['rollout'] / mb:>11.1f}"
              f" {r['rollout_minimum'] / mb:>9.1f} {r['rollout'] / r['rollout_minimum']:>6.3f}"
              f" {r['rollout_before'] / r['rollout_minimum']:>6.2f} | {r['minibatch_steps']:>5}"
              f" {r['minibatch_peak'] / mb:>13.1f} {r['minibatch_need'] / mb:>9.1f}"
              f" {r['minibatch_peak'] / r['minibatch_need']:>6.3f} {r['minibatch_before'] / mb:>10.1f}")


if __name__ == "__main__":
    main()
