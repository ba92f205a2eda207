"""An update's metrics and schedule: rollout statistics, diagnostics merged over passes, minibatches and
processes, the learning rate of an update, warnings, memory."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase

from genrl import keys
from genrl.config import Config, TrainConfig
from genrl.dynamics import relative_l1


def l1_rel(rollout: TensorDictBase) -> torch.Tensor:
    """‖x_{k+1} − x_k‖₁ / ‖x_k‖₁ per trajectory and row of `rollout` [N, K] (its latents and actions): the
    temporal dynamics Chunk-GRPO groups by. A DenoisingEnv rollout carries it for every step as
    `rollout.get(keys.L1_REL)[:, 0]`, computed while sampling."""
    return relative_l1(rollout.get(keys.LATENTS), rollout.get(keys.ACTION), batch_dims=2)


def learning_rate(train: TrainConfig, update: int) -> float:
    """The learning rate of update `update` (0-based), from the update index alone so a resumed run
    continues the schedule without scheduler state."""
    factor = min(1.0, (update + 1) / (train.warmup + 1)) if train.warmup else 1.0
    if train.lr_schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(update, train.updates) / max(train.updates, 1)))
    return train.lr * factor


def merge_stats(stats: list[dict], weight_key: str | None = None) -> dict:
    """Weighted mean of each diagnostic (by `weight_key`, else by num_units); min / max for
    `*_min` / `*_max`; sums for the counters num_units and skipped."""
    if not stats:
        return {}
    weights = [s.get(weight_key, 1.0) if weight_key else s.get("num_units", 1.0) for s in stats]
    total = sum(weights) or 1.0
    merged = {}
    for key in stats[0]:
        if key == weight_key:
            continue
        values = [s[key] for s in stats if key in s]
        if key.endswith("_min"):
            merged[key] = min(values)
        elif key.endswith("_max"):
            merged[key] = max(values)
        elif key in ("num_units", "skipped"):
            merged[key] = sum(values)
        else:
            merged[key] = sum(v * w for v, w in zip(values, weights)) / total
    return merged


class StabilityMonitor:
    """Warns when clip fraction or approx KL stays out of a sane range: the usual sign of
    reward hacking or a too-large learning rate."""

    def __init__(self, cfg: Config):
        self.limits = {"clip_frac": cfg.log.warn_clip_frac, "approx_kl": cfg.log.warn_approx_kl}
        self.patience = cfg.log.warn_patience
        self.streak = {k: 0 for k in self.limits}

    def check(self, metrics: dict) -> list[str]:
        warnings = []
        for key, limit in self.limits.items():
            self.streak[key] = self.streak[key] + 1 if metrics.get(key, 0.0) > limit else 0
            if self.streak[key] == self.patience:
                warnings.append(
                    f"{key} has been above {limit} for {self.patience} updates (now {metrics[key]:.3g}): "
                    "the learning rate may be too large or the reward is being hacked; look at the sample grids"
                )
        return warnings


def peak_memory_mb(device: str) -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of the process (CPU), in MiB."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="update", dynamic_ncols=True)
