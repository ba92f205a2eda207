"""What a checkpoint holds beyond the trained weights, captured and restored as one.

`TrainState` is built from the objects that carry state across updates (the adapter, the
optimizer, the weight average, the env, the algorithm, the trainer's generator) and turns
them into (trainable weights, state) for `genrl.checkpoint.save`, and back. Everything
random is in it: the global torch RNG (rollout step noise), the trainer's generator (unit
draws, minibatch order), the env's `state_dict()` (noise seeds, prompt order), so a resumed
run continues exactly. Sharded runs (genrl.sharding) gather the weights whole to save them
and cut them back to shards to load them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from genrl import checkpoint, sharding
from genrl.errors import CheckpointError


@dataclass
class Progress:
    update: int = 0
    nfe: int = 0
    wall_s: float = 0.0
    bad_in_a_row: int = 0


class TrainState:
    def __init__(self, adapter, optimizer, ema, env, algorithm, generator: torch.Generator):
        self.adapter, self.optimizer, self.ema = adapter, optimizer, ema
        self.env, self.algorithm, self.generator = env, algorithm, generator

    def capture(self, progress: Progress, sharded: bool) -> tuple[dict, dict]:
        """(trainable weights, state); `sharded` (the denoiser is sharded): a collective, every process calls it."""
        trainable = self.adapter.trainable_state_dict()
        average = self.ema.average if self.ema is not None else None
        if sharded:  # gathered whole on every process (collectives)
            trainable = sharding.full_tensors(trainable)
            average = sharding.full_tensors(average) if average is not None else None
            optimizer = sharding.optimizer_state(self.adapter.transformer, self.optimizer)
        else:
            optimizer = self.optimizer.state_dict()
        state = {
            "update": progress.update,
            "progress": asdict(progress),
            "optimizer": optimizer,
            "sharded": sharded,  # the optimizer state's layout (by name, or by index)
            "torch_rng": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "env": self.env.state_dict(),
            "algorithm": _whole(self.algorithm.state_dict()),
        }
        if average is not None:  # what evaluation used and `genrl eval RUN_DIR` loads
            state["ema"] = {k: v.detach().cpu() for k, v in average.items()}
        return trainable, state

    def save(self, run_dir: Path, progress: Progress, sharded: bool, write: bool, fingerprint: dict) -> Path:
        """Capture (every process: a collective under sharding) and, where `write`, save checkpoint
        `progress.update` with the run's fixed config keys (genrl.resume.fixed_config)."""
        trainable, state = self.capture(progress, sharded)
        if not write:
            return Path(run_dir) / "checkpoints"
        return checkpoint.save(run_dir, progress.update, trainable, state, fingerprint=fingerprint)

    def restore(self, run_dir: Path, path: str | Path | None, sharded: bool, fingerprint: dict, warn=None) -> Progress:
        """Load checkpoint `path`, or the newest usable one of `run_dir`, into every object (a checkpoint
        of another experiment is refused, naming the key); returns the progress it was saved at."""
        if path is None:
            path, trainable, state = checkpoint.load_latest(run_dir, fingerprint, warn=warn)
        else:
            trainable, state = checkpoint.load(path, fingerprint)
        written_sharded = state.get("sharded", False)
        if written_sharded != sharded:  # the optimizer state's layout differs
            kind, how = ("sharded", "with --sharding zero2 or fsdp") if written_sharded else ("replicated", "without --sharding")
            raise CheckpointError(f"checkpoint {path} was written by a {kind} run: resume it {how}")
        if sharded:
            self.adapter.load_trainable_state_dict(sharding.shard_like(trainable, self.adapter))
            sharding.load_optimizer_state(self.adapter.transformer, self.optimizer, state["optimizer"])
        else:
            self.adapter.load_trainable_state_dict(trainable)
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            average = state["ema"]
            self.ema.load(sharding.shard_like(average, self.adapter) if sharded else average)
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["generator"])
        # checkpoints written before the env kept its own state_dict
        env = state.get("env") or {"rng": state["env_rng"], "prompt_sampler": state["prompt_sampler"]}
        self.env.load_state_dict(env)
        self.algorithm.load_state_dict(state.get("algorithm", {}))
        return Progress(**state["progress"])


def _whole(state):
    """Sharded tensors anywhere in a nested dict gathered whole (a collective), so a checkpoint holds
    full tensors whatever the layout; an algorithm loading them cuts them back (sharding.shard_like)."""
    if isinstance(state, dict):
        return {k: _whole(v) for k, v in state.items()}
    return state.full_tensor() if isinstance(state, torch.Tensor) and sharding.is_sharded(state) else state
