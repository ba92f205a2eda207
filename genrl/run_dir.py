"""A run directory, the one place that writes it (the main process only; checkpoints: genrl.checkpoint).

    RUN_DIR/config.yaml           the resolved config, written once
    RUN_DIR/metrics.jsonl         one JSON object per update
    RUN_DIR/samples/update_*.png  the rollout's final images with their prompts
    RUN_DIR/eval/{tag}.{json,png} held-out evaluations
    RUN_DIR/checkpoints/          genrl.checkpoint
    RUN_DIR/summary.json          written when the run finishes
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import yaml
from torch import Tensor

from genrl.config import Config
from genrl.errors import RunDirError
from genrl.grids import save_grid


def default_run_dir(cfg: Config) -> Path:
    """cleanrl-style run name: {algorithm}__{prompts}__{seed}__{time}."""
    prompts = cfg.prompts.train.replace(":", "-").replace("/", "_")
    return Path("runs") / f"{cfg.algorithm}__{prompts}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    def __init__(self, path: str | Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes  # False on every process but the main one

    def prepare(self, cfg: Config) -> None:
        """Create the directory (checking it is writable) and write config.yaml unless it is there (a resume)."""
        if not self.writes:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise RunDirError(f"run directory {str(self.path)!r} is not writable: {err.strerror}") from None
        config_path = self.path / "config.yaml"
        if not config_path.exists():
            config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def append_metrics(self, metrics: dict) -> None:
        if self.writes:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")

    def truncate_metrics(self, update: int) -> None:
        """Drop metric lines written after update `update` (a resumed checkpoint), so the resumed
        run's log equals an uninterrupted one."""
        path = self.path / "metrics.jsonl"
        if not self.writes or not path.exists():
            return
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["update"] <= update]
        path.write_text("".join(line + "\n" for line in kept))

    def write_json(self, relative: str, data: dict) -> None:
        if self.writes:
            path = self.path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2))

    def write_grid(self, relative: str, images: Tensor, prompts: Sequence[str], columns: int) -> None:
        if self.writes:
            save_grid(images, prompts, self.path / relative, columns=columns)

    def exists(self, relative: str) -> bool:
        return (self.path / relative).exists()
