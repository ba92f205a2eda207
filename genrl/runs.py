"""A finished (or interrupted) run as Python objects: its config and its model with the trained weights.

    import genrl
    adapter = genrl.load_run("runs/my_run")              # the latest checkpoint; the EMA weights if the run kept them
    adapter = genrl.load_run("runs/my_run/checkpoints/update_000100")   # a given checkpoint

This is what `genrl eval RUN_DIR`, `genrl sample RUN_DIR` and `genrl export RUN_DIR` load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genrl import checkpoint, config
from genrl.errors import RunNotFoundError
from genrl.models.base import ModelAdapter


@dataclass
class Run:
    config: config.Config
    adapter: ModelAdapter  # with the checkpoint's weights (its average when the run kept one)
    checkpoint: Path
    averaged: bool  # True when the weights are the run's EMA (train.ema > 0), as its evaluations used


def locate(run: str | Path) -> tuple[Path, Path | None]:
    """(run directory, checkpoint directory or None for "its latest") of a run or checkpoint directory."""
    path = Path(run)
    if (path / "trainable.safetensors").is_file():  # a checkpoint directory: RUN_DIR/checkpoints/update_N
        return path.parent.parent, path
    if not (path / "config.yaml").is_file():
        raise RunNotFoundError(f"{str(run)!r} is neither a run directory (with config.yaml) nor a checkpoint directory")
    return path, None


def open_run(run: str | Path, device: str | None = None) -> Run:
    """The run's config and model; `device` overrides the run's own (e.g. a GPU run inspected on a CPU)."""
    from genrl.build import build_model

    from genrl.resume import fixed_config

    run_dir, ckpt = locate(run)
    if not (run_dir / "config.yaml").is_file():
        raise RunNotFoundError(f"checkpoint {str(ckpt)!r} is not inside a run directory: {run_dir / 'config.yaml'} not found")
    data = config.load_yaml(run_dir / "config.yaml")
    if device is not None:
        data["device"] = device
    cfg = config.from_dict(data)
    fingerprint = fixed_config(cfg)  # a checkpoint copied in from another experiment is refused
    if ckpt is not None:
        trainable, state = checkpoint.load(ckpt, fingerprint)
    else:  # the newest checkpoint that verifies (falls back past a corrupt `latest`)
        ckpt, trainable, state = checkpoint.load_latest(run_dir, fingerprint)
    adapter = build_model(cfg)
    averaged = "ema" in state
    adapter.load_trainable_state_dict(state["ema"] if averaged else trainable)
    return Run(cfg, adapter, ckpt, averaged)


def load_run(run: str | Path, device: str | None = None) -> ModelAdapter:
    """The model of a run directory (latest checkpoint) or checkpoint directory, with its trained weights.

    The weights are the run's exponential moving average when it kept one (`train.ema`), which is what
    the run's own evaluations and `genrl eval RUN_DIR` use; otherwise the trained weights themselves.
    """
    return open_run(run, device).adapter
