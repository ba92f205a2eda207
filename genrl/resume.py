"""Resuming a run: its saved config, with only budget-like keys open to change."""

from __future__ import annotations

import json
from pathlib import Path

from genrl import checkpoint, config
from genrl.checkpoint import CheckpointError

# Changing anything else would make the resumed run a different experiment (imports: where its code is found;
# model.compile, like device, how the same model is computed: a resumed run that changes either is not bitwise
# the straight run, but the same experiment).
RESUMABLE_PREFIXES = ("train.updates", "log.", "device", "imports", "model.compile")


def resume_config(run_dir: str | Path, overrides: list[str]) -> config.Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"cannot resume {str(run_dir)!r}: {path} not found (is it a genrl run directory?)")
    for text in overrides:
        key = text.split("=", 1)[0]
        if not key.startswith(RESUMABLE_PREFIXES):
            raise config.ConfigError(
                f"override {key!r} is not allowed on resume; only {', '.join(RESUMABLE_PREFIXES)}* may change"
            )
    saved = config.load_yaml(path)
    data = config.apply_overrides(saved, overrides)
    data["run_dir"] = str(run_dir)
    cfg = config.from_dict(data)
    _check_schedule_horizon(config.from_dict(saved).train, cfg.train)
    return cfg


def require_checkpoint(run_dir: str | Path) -> None:
    """A run to resume has a checkpoint; if not, say why (none written yet, or checkpoints/ emptied) and how
    to start the run again."""
    if checkpoint.candidates(run_dir):
        return
    run_dir, root = Path(run_dir), checkpoint.directory(run_dir)
    left = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if not root.is_dir() or any(name.startswith(".update_") for name in left):  # none yet, or the first one cut short
        why = "the run stopped before its first checkpoint"
    elif not left:
        why = f"{root} is empty (its checkpoints were deleted or moved), so there is nothing to resume from"
    else:
        why = f"{root} holds no checkpoint directory (update_NNNNNN), only {', '.join(left[:3])}"
    finished = (run_dir / "summary.json").exists()  # a fresh start in a finished run's directory needs --overwrite
    again = f"genrl train {run_dir / 'config.yaml'} run_dir={run_dir}" + (" --overwrite" if finished else "")
    raise CheckpointError(f"no checkpoint in {root}: {why}; start it again with `{again}`")


def _check_schedule_horizon(saved: config.TrainConfig, resumed: config.TrainConfig) -> None:
    """A cosine schedule decays to 0 at train.updates: moving its end would jump the learning rate mid-run."""
    if saved.lr_schedule == "cosine" and resumed.updates != saved.updates:
        raise config.ConfigError(
            f"train.updates={resumed.updates} on resume: this run's cosine learning-rate schedule ends at "
            f"train.updates={saved.updates}, and moving its end would jump the learning rate mid-run; "
            "start a new run (or a constant schedule) to train longer"
        )


def fixed_config(cfg: config.Config) -> dict:
    """The config keys a resumed run may not change, flattened (`train.lr`: 3e-4, ...): a checkpoint
    carries them so that loading it into another experiment is refused, naming the key."""
    flat = _flatten(json.loads(json.dumps(cfg.to_dict())))  # JSON values: tuples become lists, as in YAML
    return {k: v for k, v in flat.items() if k != "run_dir" and not k.startswith(RESUMABLE_PREFIXES)}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
