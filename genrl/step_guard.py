"""The optimizer step, undone when it leaves a trainable weight non-finite.

A finite loss and gradient can still make non-finite weights: a learning rate of 1e39 is finite
in Python and inf in float32, and an update that overflows is no better. Such a step is taken
back whole, the weights and the optimizer's state (AdamW's moments and step count) as they were
before it, so that the run goes on from finite weights and counts the update as skipped, like
one with a non-finite loss (train.max_bad_updates). The copy covers only the trainable
parameters (a LoRA's on a real model) and their optimizer state, and lives for one step.
"""

from __future__ import annotations

import torch

from genrl.distributed import Dist
from genrl.errors import TrainingStopped


class StepGuard:
    def __init__(self, optimizer: torch.optim.Optimizer, dist: Dist):
        self.optimizer, self.dist = optimizer, dist

    def step(self) -> bool:
        """`optimizer.step()`; True if every trainable weight is finite after it (on every process),
        else the step is undone and False."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        weights = [p.detach().clone() for p in params]
        state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in self.optimizer.state[p].items()}
                 for p in params if p in self.optimizer.state}
        self.optimizer.step()
        if self.dist.max(int(not all_finite(params))) == 0:  # a sharded weight is finite only if every shard is
            return True
        with torch.no_grad():
            for p, before in zip(params, weights):
                p.copy_(before)
        for p in params:
            if p in state:
                self.optimizer.state[p] = state[p]
            else:  # the first step made this state: without it the optimizer starts afresh, as before
                self.optimizer.state.pop(p, None)
        return False


def all_finite(params: list[torch.Tensor]) -> bool:
    """Every element of every tensor (this process's shard of a sharded one) finite, in one device sync."""
    if not params:
        return True
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
    return bool(torch.stack([torch.isfinite(t.detach()).all() for t in local]).all())


def count_bad_update(trainer, metrics: dict) -> None:
    """Count an update with a skipped step (`metrics["skipped"]` > 0) in the trainer's `progress.bad_in_a_row`;
    at train.max_bad_updates in a row, checkpoint and stop the run with a message saying what to do."""
    progress, limit = trainer.progress, trainer.cfg.train.max_bad_updates
    progress.bad_in_a_row = progress.bad_in_a_row + 1 if metrics["skipped"] > 0 else 0
    if progress.bad_in_a_row >= limit:
        trainer.save_checkpoint()
        raise TrainingStopped(
            f"{progress.bad_in_a_row} updates in a row had a non-finite loss or gradient, or a step that made "
            f"the weights non-finite (undone) (train.max_bad_updates={limit}); lower train.lr or check the "
            f"reward. Metrics and the last checkpoint are in {trainer.run_dir}"
        )
