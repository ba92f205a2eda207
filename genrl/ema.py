"""An exponential moving average of the trained parameters, for evaluation (flow_grpo's `train.ema`).

GRPO's updates are noisy: the policy after the last update is one draw around where training is
heading. The average over the last ~1/(1 - decay) updates is what the run evaluates, checkpoints
beside the live weights, and what `genrl eval RUN_DIR` / `genrl sample RUN_DIR` load. Rollouts
always use the live weights (the optimiser's policy), so the average does not change training.

The same class keeps an algorithm's "old" policy (DiffusionNFT's sampler, AWM's KL anchor), whose
decay follows a schedule: `update(decay)` with each update's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from genrl import sharding
from genrl.models.base import ModelAdapter


class ParameterEMA:
    """An average of the adapter's trainable parameters: `train.ema`'s, or an algorithm's "old" policy."""

    def __init__(self, adapter: ModelAdapter, decay: float | None, settle: Callable[[], None] | None = None):
        """`decay`: of every update, or None when each `update(decay)` names its own (a schedule).
        `settle` puts the parameters in the layout the average keeps; by default sharding.reshard, which
        under FSDP brings back the shards a forward left gathered and does nothing to an unsharded model."""
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"the decay of an average must be in (0, 1) (train.ema: 0 for none), got {decay}")
        self.adapter = adapter
        self.decay = decay
        self.settle = settle if settle is not None else (lambda: sharding.reshard(adapter))
        self.settle()
        self.average = adapter.trainable_state_dict()  # copies; sharded like the parameters under FSDP

    @torch.no_grad()
    def update(self, decay: float | None = None) -> None:
        """average ← decay·average + (1 − decay)·live, with this update's `decay` or the average's own."""
        decay = self.decay if decay is None else decay
        if decay is None or not 0.0 <= decay < 1.0:
            raise ValueError(f"an update of the average needs a decay in [0, 1), got {decay}")
        self.settle()
        live = dict(self.adapter.named_parameters())
        for name, average in self.average.items():
            average.lerp_(live[name].detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within this context the adapter holds the averaged weights; the live ones come back after.

        The parameters are pointed at the average's storage and back (no copy, no second set of weights
        in memory: DiffusionNFT enters this at every rollout step and training pass). Sharded
        parameters are copied instead: FSDP gathers from its own shard buffers, which a parameter's
        `.data` is only a view of. Within the context nothing may train the parameters or update the
        average (they share storage)."""
        self.settle()
        params = dict(self.adapter.named_parameters())
        if any(sharding.is_sharded(params[name]) for name in self.average):
            with self._copied(params):
                yield
            return
        live = {name: params[name].data for name in self.average}
        for name, average in self.average.items():
            params[name].data = average  # the same storage: the parameter reads the average
        try:
            yield
        finally:
            for name, tensor in live.items():
                params[name].data = tensor

    @contextlib.contextmanager
    def _copied(self, params: dict) -> Iterator[None]:
        live = {name: params[name].detach().clone() for name in self.average}
        self.adapter.load_trainable_state_dict(self.average)
        try:
            yield
        finally:
            self.settle()
            self.adapter.load_trainable_state_dict(live)

    def load(self, average: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in average.items():
                self.average[name].copy_(tensor)
