"""A run directory, the one place that writes it: who may start in it, what a restart clears, its files.

    RUN_DIR/config.yaml           the resolved config, written once
    RUN_DIR/metrics.jsonl         one JSON object per update
    RUN_DIR/samples/update_*.png  the rollout's final images with their prompts
    RUN_DIR/eval/{tag}.{json,png} held-out evaluations
    RUN_DIR/checkpoints/          genrl.checkpoint (its state: genrl.train_state)
    RUN_DIR/summary.json          written when the run finishes

`RunDir` writes them from the main process only (on the others its writes do nothing).

A fresh run starts only in an empty (or absent) directory. A directory holding a genrl run
that never wrote a checkpoint nor finished is cleared and started again: nothing of value is
lost and its half-written logs would mix with the new run's. Anything else (a run with a
checkpoint, a finished run, files genrl did not write) is refused unless the user passes
`--overwrite` (then genrl's own outputs are deleted; other files are left alone). A resumed run
keeps everything up to its checkpoint.
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml
from torch import Tensor

from genrl import checkpoint
from genrl.config import Config
from genrl.errors import RunDirError
from genrl.grids import save_grid, save_samples

# What a run writes into its directory; all of it belongs to the run.
# What a run writes into its directory (the trackers: tensorboard's event files, wandb's local copy).
OUTPUTS = ("config.yaml", "metrics.jsonl", "summary.json", "eval", "samples", "checkpoints", "tensorboard", "wandb")


@dataclass(frozen=True)
class Start:
    """How a run begins in its directory: new (empty), restart (a run that never checkpointed),
    overwrite (--overwrite), or resume (from a checkpoint)."""

    kind: str
    note: str = ""

    @property
    def clears(self) -> bool:
        return self.kind in ("restart", "overwrite")


def plan_start(run_dir: str | Path, resumed: bool, overwrite: bool = False) -> Start:
    """Decide, without writing anything, how a run starts in `run_dir` (every process decides alike)."""
    run_dir = Path(run_dir)
    if resumed:
        return Start("resume")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} is a file, not a directory; choose another run_dir")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if not entries:
        return Start("new")
    if overwrite:
        return Start("overwrite", f"--overwrite: deleting the previous run's outputs in {run_dir}")
    how = (f"resume it with `genrl train --resume {run_dir}`, choose another run_dir, "
           f"or pass --overwrite to delete it and start again")
    saved = checkpoint.candidates(run_dir)
    if saved:
        raise RunDirError(f"run directory {str(run_dir)!r} already holds a run (checkpoint {saved[0].name}); {how}")
    if (run_dir / "summary.json").exists():
        raise RunDirError(f"run directory {str(run_dir)!r} holds a finished run (summary.json); "
                          "choose another run_dir, or pass --overwrite to delete it and start again")
    foreign = [name for name in entries if not _is_output(name)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirError(f"run directory {str(run_dir)!r} is not empty and is not a genrl run (it holds {shown}); "
                          "choose another run_dir, or pass --overwrite to write this run beside those files")
    return Start("restart", f"{run_dir} holds a run that stopped before its first checkpoint: starting it again")


def _is_output(name: str) -> bool:
    """One of a run's outputs, or a temporary file of one left by a kill (.summary.json.x1y2, .write_test)."""
    return name in OUTPUTS or name == ".write_test" or any(name.startswith(f".{output}.") for output in OUTPUTS)


def prepare(run_dir: str | Path, start: Start, config_text: str) -> None:
    """Create (or clear, or tidy for a resume) the run directory and write config.yaml: main process only."""
    run_dir = Path(run_dir)
    if start.note:
        print(f"genrl: {start.note}", file=sys.stderr)
    if start.clears:
        for path in [p for p in run_dir.iterdir() if _is_output(p.name)]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run directory {str(run_dir)!r} is not writable: {err.strerror}") from None
    if start.kind == "resume":
        checkpoint.remove_orphans(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        write_atomic(config_path, config_text)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a whole file or nothing (a kill mid-write leaves the previous version); names the path on a full disk."""
    path = Path(path)
    try:
        checkpoint.write_text_atomic(path, text)
    except OSError as err:
        _raise_disk_full(err, path)
        raise


def append_metrics(path: str | Path, metrics: dict) -> None:
    """One JSON line; a kill can tear only this last line, which a resume drops."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
    except OSError as err:
        _raise_disk_full(err, Path(path))
        raise


def _raise_disk_full(err: BaseException, path: Path) -> None:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        raise OSError(errno.ENOSPC, f"no space left on device while writing {path}") from None


def read_metrics(path: str | Path) -> list[dict]:
    """The metric records of a run; a torn last line (a kill mid-write) is dropped with a warning,
    any other unreadable line is an error naming the file and line."""
    return [record for record, _ in _metric_lines(Path(path))]


def _metric_lines(path: Path) -> list[tuple[dict, str]]:
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("update"), int):
                raise ValueError("no integer 'update' field")
        except ValueError as err:
            if all(not rest.strip() for rest in lines[number:]):
                print(f"genrl: warning: {path} line {number} is incomplete (the run was killed while writing it); "
                      "dropped", file=sys.stderr)
                break
            raise checkpoint.CheckpointError(f"{path} line {number} is not a metrics record ({err}); "
                                             "fix or delete that line to resume") from None
        records.append((record, line))
    return records


def truncate_metrics(path: str | Path, update: int) -> None:
    """Keep the metric lines up to the checkpoint's update, so a resumed run's log equals an uninterrupted one."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for record, line in _metric_lines(path) if record["update"] <= update]
    write_atomic(path, "".join(line + "\n" for line in kept))


def read_json(path: str | Path) -> dict | None:
    """A JSON result the run wrote earlier (e.g. eval/base.json on resume); None if absent or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        print(f"genrl: warning: {path} cannot be read ({err}); it is left out of the summary", file=sys.stderr)
        return None


def default_run_dir(cfg: Config) -> Path:
    """cleanrl-style run name: {algorithm}__{prompts}__{seed}__{time}."""
    prompts = cfg.prompts.train.replace(":", "-").replace("/", "_")
    return Path("runs") / f"{cfg.algorithm}__{prompts}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """The run's directory, written by the main process (`writes`) only."""

    def __init__(self, path: str | Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes

    def begin(self, cfg: Config, resumed: bool, overwrite: bool, barrier: Callable[[], None]) -> tuple[Start, bool]:
        """(how the run starts, whether eval/base.json is still to be written): planned by every process
        alike (`plan_start` may refuse, before anything is written), then the directory is created (or
        cleared, or tidied for a resume) and config.yaml written unless it is there, between barriers."""
        start = plan_start(self.path, resumed, overwrite)
        base_missing = start.clears or not (self.path / "eval" / "base.json").exists()  # before anyone writes it
        barrier()  # every process has looked at the directory before it changes
        if self.writes:
            prepare(self.path, start, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        barrier()
        return start, base_missing

    def append_metrics(self, metrics: dict) -> None:
        if self.writes:
            append_metrics(self.path / "metrics.jsonl", metrics)

    def truncate_metrics(self, update: int) -> None:
        if self.writes:
            truncate_metrics(self.path / "metrics.jsonl", update)

    def write_json(self, relative: str, data: dict) -> None:
        if self.writes:
            (self.path / relative).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path / relative, json.dumps(data, indent=2))

    def write_grid(self, relative: str, images: Tensor, prompts: Sequence[str], columns: int) -> None:
        if self.writes:
            save_grid(images, prompts, self.path / relative, columns=columns)

    def write_samples(self, relative: str, images: Tensor, prompts: Sequence[str], rewards: Tensor, advantages: Tensor,
                      group_id: Tensor, title: str) -> None:
        """A rollout's final images with their prompts, rewards and advantages (grids.save_samples)."""
        if self.writes:
            save_samples(self.path / relative, images, prompts, rewards, advantages, group_id, title=title)

    def write_eval(self, record, tag: str, title: str, comparison_title: str) -> None:
        """eval/{tag}.{json,pt,png} of an evaluation record (genrl.evaluation.EvalRecord), and after the
        final one eval/base_vs_final.png."""
        if self.writes:
            record.write(self.path / "eval", tag, title, comparison_title)
