"""A run directory, the one place that writes it: who may start in it, what a restart clears, its files.

    RUN_DIR/config.yaml           the resolved config, written once
    RUN_DIR/metrics.jsonl         one JSON object per update
    RUN_DIR/samples/update_*.png  the rollout's final images with their prompts (a video run: filmstrips,
                                  and samples/update_*_group_*.gif, one animated GIF per group)
    RUN_DIR/eval/{tag}.{json,png} held-out evaluations (a video run: also eval/{tag}.gif)
    RUN_DIR/checkpoints/          genrl.checkpoint (its state: genrl.train_state)
    RUN_DIR/summary.json          written when the run finishes
    RUN_DIR/.genrl-run            the outputs the run claims, written first
    RUN_DIR/.genrl.lock           the writer's lock (genrl.dirlock), held while the run runs

`RunDir` writes them from the main process only (on the others its writes do nothing).

A run directory is genrl's only if it says so: before anything else, a run writes
RUN_DIR/.genrl-run, which names the outputs it may create (each absent when it started, so whatever
stands under those names later is the run's). While it runs it holds RUN_DIR/.genrl.lock
(genrl.dirlock): one writer per run directory; a second run is refused, naming the holder's PID.

A fresh run starts only in an empty (or absent) directory. A directory whose record says it holds
a genrl run that never wrote a checkpoint nor finished is cleared of the recorded outputs and
started again: nothing of value is lost and its half-written logs would mix with the new run's.
Anything else (a run with a checkpoint, a finished run, files genrl did not write) is refused
unless the user passes `--overwrite` (then the recorded outputs are deleted; other files are left
alone). Files that carry genrl's names but that no record claims (someone else's `eval/`, a run of
a genrl from before the record) are never deleted: the run is refused, naming them. A resumed run
keeps everything up to its checkpoint.
"""

from __future__ import annotations

import contextlib
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

from genrl import checkpoint, dirlock
from genrl.config import Config
from genrl.errors import RunDirError
from genrl.grids import clip_frames, save_grid, save_samples
from genrl.video_outputs import DEFAULT_FPS, save_sample_gifs

# What a run writes into its directory (the trackers: tensorboard's event files, wandb's local copy).
OUTPUTS = ("config.yaml", "metrics.jsonl", "summary.json", "eval", "samples", "checkpoints", "tensorboard", "wandb")
RECORD = ".genrl-run"  # JSON: {"genrl": "run", "format": 1, "outputs": [the names above that the run claims]}
# What a resume of a run from before the record rewrites, and so may claim: its config, log and checkpoints.
RESUME_CLAIMS = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints")


@dataclass(frozen=True)
class Start:
    """How a run begins in its directory: new (empty), restart (a run that never checkpointed),
    overwrite (--overwrite), or resume (from a checkpoint)."""

    kind: str
    note: str = ""

    @property
    def clears(self) -> bool:
        return self.kind in ("restart", "overwrite")


def plan_start(run_dir: str | Path, resumed: bool, overwrite: bool = False, check_lock: bool = True) -> Start:
    """Decide, without writing anything, how a run starts in `run_dir` (every process decides alike).
    `check_lock`: first refuse a directory another run holds, naming its PID (the writer only: two
    processes checking at once would see each other)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} is a file, not a directory; choose another run_dir")
    if check_lock and (run_dir / dirlock.LOCK_NAME).is_file():  # in use? (takes the lock and drops it at once)
        dirlock.hold(run_dir, "run directory").release()
    if resumed:
        return Start("resume")
    claimed = recorded(run_dir)
    entries = sorted(p.name for p in run_dir.iterdir() if not _is_genrl_own(p.name)) if run_dir.is_dir() else []
    if not entries:
        return Start("new")
    unclaimed = [name for name in entries if _is_output(name) and not _claims(claimed, name)]
    if unclaimed:
        raise RunDirError(f"run directory {str(run_dir)!r} holds {_shown(unclaimed)}, which no genrl run recorded writing "
                          f"(no {RECORD} names them: someone else's files, or a run of an older genrl); genrl deletes "
                          "only what it recorded, so move or delete them yourself, or choose another run_dir")
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
        raise RunDirError(f"run directory {str(run_dir)!r} is not empty and is not a genrl run (it holds {_shown(foreign)}); "
                          "choose another run_dir, or pass --overwrite to write this run beside those files")
    return Start("restart", f"{run_dir} holds a run that stopped before its first checkpoint: starting it again")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _is_output(name: str) -> bool:
    """One of a run's outputs, or a temporary file of one left by a kill (.summary.json.x1y2, .write_test)."""
    return name in OUTPUTS or name == ".write_test" or any(name.startswith(f".{output}.") for output in OUTPUTS)


def _claims(claimed: set[str], name: str) -> bool:
    """Whether the record claims `name`: a claimed output, or a temporary file of one."""
    return name in claimed or any(name.startswith(f".{output}.") for output in claimed)


def _is_genrl_own(name: str) -> bool:
    """genrl's bookkeeping in any run directory: the lock, the record and a killed write of the record."""
    return name in (dirlock.LOCK_NAME, RECORD) or name.startswith(f".{RECORD}.")


def recorded(run_dir: str | Path) -> set[str]:
    """The outputs RUN_DIR/.genrl-run claims; empty when there is no record (a foreign directory, or a
    run of a genrl from before the record)."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return set()
    try:
        record = json.loads(path.read_text())
        names = set(record["outputs"]) if isinstance(record, dict) and record.get("genrl") == "run" else None
    except (OSError, ValueError, KeyError, TypeError):
        names = None
    if names is None or not names <= set(OUTPUTS):
        raise RunDirError(f"{path} is not a genrl run record; delete it (genrl then treats the directory's files "
                          "as not its own) or choose another run_dir")
    return names


def _write_record(run_dir: Path, outputs: Sequence[str]) -> None:
    write_atomic(run_dir / RECORD, json.dumps({"genrl": "run", "format": 1, "outputs": sorted(outputs)}) + "\n")


def prepare(run_dir: str | Path, start: Start, config_text: str) -> None:
    """Create (or clear, or tidy for a resume) the run directory, record what the run claims, and write
    config.yaml: main process only, holding the directory's lock."""
    run_dir = Path(run_dir)
    if start.note:
        print(f"genrl: {start.note}", file=sys.stderr)
    if start.clears:  # only what the record claims (plan_start refused anything else under genrl's names)
        claimed = recorded(run_dir)
        for path in [p for p in run_dir.iterdir() if _claims(claimed, p.name) or p.name.startswith(f".{RECORD}.")]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if start.kind != "resume":  # before anything else: the run's claim on what it is about to write
            _write_record(run_dir, [name for name in OUTPUTS if not (run_dir / name).exists()])
        elif not (run_dir / RECORD).exists():  # a run from before the record: claim what this resume rewrites
            _write_record(run_dir, [n for n in OUTPUTS if n in RESUME_CLAIMS or not (run_dir / n).exists()])
    except RunDirError:
        raise
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
    with disk_full_named(path.parent, path):
        checkpoint.write_text_atomic(path, text)


def append_metrics(path: str | Path, metrics: dict) -> None:
    """One JSON line; a kill can tear only this last line, which a resume drops."""
    with disk_full_named(Path(path).parent, Path(path)):
        with open(path, "a") as f:
            f.write(json.dumps(metrics) + "\n")


@contextlib.contextmanager
def disk_full_named(run_dir: Path, target: Path):
    """A full disk while writing `target` of `run_dir` becomes one line (a RunDirError, errno ENOSPC) naming
    the file and what to do next: resume from the last checkpoint, or run again if there is none yet."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        try:
            resumable = bool(checkpoint.candidates(run_dir))
        except checkpoint.CheckpointError:
            resumable = False
        then = (f"resume with `genrl train --resume {run_dir}` (its last checkpoint is kept)" if resumable
                else "run the same command again (the run has no checkpoint yet)")
        where = getattr(err, "written", None) or target  # named by an inner write (e.g. eval/base.json)
        error = RunDirError(f"no space left on device while writing {where}; free some space, then {then}")
        error.errno, error.written = errno.ENOSPC, where  # errno only: str(error) stays the one line
        raise error from None


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
        self.lock: dirlock.DirLock | None = None  # held by the writer from `begin` to `close`
        self._truncate_to: int | None = None
        self.fps = DEFAULT_FPS  # of the animated GIFs of a video run: log.fps, set by `begin`

    def begin(self, cfg: Config, resumed: bool, overwrite: bool, barrier: Callable[[], None]) -> tuple[Start, bool]:
        """(how the run starts, whether eval/base.json is still to be written): planned by every process
        alike (`plan_start` may refuse, before anything is written), then the writer locks the directory,
        plans again under the lock (another run may have started in between) and creates it (or clears
        it, or tidies it for a resume) and writes config.yaml unless it is there, between barriers."""
        start = plan_start(self.path, resumed, overwrite, check_lock=self.writes)
        self.fps = cfg.log.fps
        base_missing = start.clears or not (self.path / "eval" / "base.json").exists()  # before anyone writes it
        barrier()  # every process has looked at the directory before it changes
        if self.writes:
            self._hold()
            start = plan_start(self.path, resumed, overwrite, check_lock=False)
            prepare(self.path, start, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if self._truncate_to is not None:  # a resume's metrics, cut back to its checkpoint under the lock
                with self.writing("metrics.jsonl"):
                    truncate_metrics(self.path / "metrics.jsonl", self._truncate_to)
        barrier()
        return start, base_missing

    def _hold(self) -> None:
        if self.lock is None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunDirError(f"run directory {str(self.path)!r} is not writable: {err.strerror}") from None
            self.lock = dirlock.hold(self.path, "run directory")

    def close(self) -> None:
        """Release the run directory (the end of the run, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def writing(self, relative: str):
        """A full disk while writing RUN_DIR/`relative`: one line naming it and how to go on."""
        return disk_full_named(self.path, self.path / relative)

    def append_metrics(self, metrics: dict) -> None:
        if self.writes:
            with self.writing("metrics.jsonl"):
                append_metrics(self.path / "metrics.jsonl", metrics)

    def truncate_metrics(self, update: int) -> None:
        """On resume: keep the metric lines up to `update`; done by `begin`, once the directory is locked."""
        self._truncate_to = update

    def write_json(self, relative: str, data: dict) -> None:
        if self.writes:
            with self.writing(relative):
                (self.path / relative).parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path / relative, json.dumps(data, indent=2))

    def write_grid(self, relative: str, images: Tensor, prompts: Sequence[str], columns: int) -> None:
        if self.writes:
            with self.writing(relative):
                save_grid(images, prompts, self.path / relative, columns=columns)

    def write_samples(self, relative: str, images: Tensor, prompts: Sequence[str], rewards: Tensor, advantages: Tensor,
                      group_id: Tensor, title: str) -> None:
        """A rollout's final images with their prompts, rewards and advantages (grids.save_samples); clips
        also as one GIF per group beside it (genrl.video_outputs), inside samples/ as the grid is."""
        if self.writes:
            with self.writing(relative):
                save_samples(self.path / relative, images, prompts, rewards, advantages, group_id, title=title)
                if clip_frames(images) > 1:
                    save_sample_gifs(self.path / relative, images, prompts, rewards, advantages, group_id, title,
                                     self.fps)

    def write_eval(self, record, tag: str, title: str, comparison_title: str) -> None:
        """eval/{tag}.{json,pt,png} of an evaluation record (genrl.evaluation.EvalRecord), and after the
        final one eval/base_vs_final.png."""
        if self.writes:
            with self.writing(f"eval/{tag}"):
                record.write(self.path / "eval", tag, title, comparison_title, self.fps)
