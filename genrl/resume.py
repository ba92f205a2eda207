"""Resuming a run: its saved config, with only budget-like keys open to change."""

from __future__ import annotations

from pathlib import Path

from genrl import config
from genrl.checkpoint import CheckpointError

# Changing anything else would make the resumed run a different experiment.
RESUMABLE_PREFIXES = ("train.updates", "log.", "device")


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
    data = config.apply_overrides(config.load_yaml(path), overrides)
    data["run_dir"] = str(run_dir)
    return config.from_dict(data)
