"""Experiment trackers through accelerate's tracker integration: `log.trackers: [tensorboard]`.

accelerate's trackers (accelerate.tracking: TensorBoardTracker, WandBTracker, MLflowTracker,
TrackioTracker) already wrap each package and log on the main process only; genrl decides what
goes in them, the way cleanrl and TRL do:

- every update's metrics under namespaces (`train/reward_mean`, `loss/clip_frac`, `perf/images_per_s`,
  `eval/score`; see `NAMESPACED`), the update number as the step; metrics.jsonl keeps the flat names;
- the resolved config as hyper-parameters (dotted keys);
- the PNG grids the trainer writes (sample grids, evaluation grids) as images, at the update they
  appeared (trackers with `log_images`: tensorboard, wandb; trackio as trackio.Image through its `log`;
  mlflow stores them as artifacts);
- a video run's animated GIFs (samples/*.gif, eval/*.gif) as videos under video/... where the tracker
  shows them (genrl.video_outputs.log_video: tensorboard, wandb, trackio; mlflow as artifacts);
- the held-out evaluations before and after training (`eval/score`, `eval/partial`, `eval/<category>`).

A tracker whose package is not installed is a configuration error naming the pip command,
raised when the trainer is built, before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from genrl.config import ConfigError
from genrl.video_outputs import log_video, video_tag

# tracker name -> (module that must be importable, how to install it)
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'genrl[tensorboard]'"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "trackio": ("trackio", "pip install trackio"),
}
PROJECT = "genrl"  # wandb / trackio project and mlflow experiment (WANDB_PROJECT, TRACKIO_PROJECT, MLFLOW_EXPERIMENT_NAME override)

# metrics.jsonl name -> tracker name. Names not listed go to loss/ (loss_*) or train/.
NAMESPACED = {
    "reward_mean": "train/reward_mean", "reward_std": "train/reward_std", "adv_std": "train/adv_std",
    "zero_std_frac": "train/zero_std_frac", "num_units": "train/num_units", "skipped": "train/skipped",
    "units_per_trajectory": "train/units_per_trajectory", "lr": "train/lr",
    "loss_policy": "loss/policy", "loss_kl": "loss/kl_penalty", "kl": "loss/kl", "approx_kl": "loss/approx_kl",
    "clip_frac": "loss/clip_frac", "ratio_mean": "loss/ratio_mean", "ratio_min": "loss/ratio_min",
    "ratio_max": "loss/ratio_max", "grad_norm": "loss/grad_norm",
    "nfe": "perf/nfe", "wall_s": "perf/wall_s", "images_per_s": "perf/images_per_s", "peak_mem_mb": "perf/peak_mem_mb",
    "eval_score": "eval/score",
}  # fmt: skip
STEP_KEY = "update"
GRID_FOLDERS = ("samples", "eval")  # where the trainer writes its PNG grids (and a video run's GIFs)


def check(names: list[str]) -> None:
    """Unknown tracker names and missing packages, as one-line errors naming the key and the fix."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"log.trackers: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"log.trackers: {name!r} needs the {module} package, which is not installed: {install}")


def namespaced(metrics: dict) -> dict[str, float]:
    """One update's scalar metrics under tracker names (the step key and per-step lists such as l1_rel left out)."""
    out = {}
    for key, value in metrics.items():
        if key == STEP_KEY or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        default = f"loss/{key.removeprefix('loss_')}" if key.startswith("loss_") else f"train/{key}"
        out[NAMESPACED.get(key, default)] = float(value)
    return out


def hyperparameters(config: dict, prefix: str = "") -> dict:
    """A nested config as flat dotted keys; lists, mappings and None as JSON text (what every tracker accepts)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def evaluation_scalars(result: dict) -> dict[str, float]:
    """An evaluation result (eval/*.json) as eval/score, eval/partial and eval/<category>."""
    out = {f"eval/{k}": float(result[k]) for k in ("score", "partial") if k in result}
    out.update({f"eval/{category}": float(v) for category, v in result.get("per_category", {}).items()})
    return out


class Trackers:
    """The run's trackers. Constructed with the trainer (names checked), started once the run directory
    exists, then `log` per update and `finish` at the end; all of it only where `enabled` (the main process)."""

    def __init__(self, names: list[str], enabled: bool = True):
        check(names)
        self.names = list(dict.fromkeys(names))
        self.enabled = enabled and bool(self.names)
        self.trackers: list = []
        self._run_dir: Path | None = None
        self._seen: set[tuple[str, int]] = set()  # (PNG path, mtime) already logged

    def start(self, run_dir: str | Path, config: dict, step: int, base_eval: dict | None = None) -> None:
        """Open the trackers, store the config; at step 0 also the base evaluation and the grids written so far."""
        if not self.enabled:
            return
        from accelerate import PartialState

        PartialState()  # accelerate's trackers need its state (the trainer's has it; a script may not)
        self._run_dir = Path(run_dir)
        self.trackers = [_make(name, self._run_dir) for name in self.names]
        for tracker in self.trackers:
            tracker.start()
            tracker.store_init_configuration(hyperparameters(config))
        if step > 0:  # a resumed run: what is already there was logged by the first session
            self._new_images()
            self._new_images("gif")
            return
        if base_eval:
            self._log_scalars(evaluation_scalars(base_eval), step)
        self._log_images(step)

    def log(self, metrics: dict) -> None:
        """One update: its metrics (namespaced) and the PNG grids written since the last call."""
        if not self.enabled:
            return
        step = int(metrics[STEP_KEY])
        self._log_scalars(namespaced(metrics), step)
        self._log_images(step)

    def finish(self, step: int, final_eval: dict | None = None) -> None:
        if not self.enabled:
            return
        if final_eval:
            self._log_scalars(evaluation_scalars(final_eval), step)
        self._log_images(step)
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []

    # -- internals ---------------------------------------------------------------------------
    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def _new_images(self, suffix: str = "png") -> list[Path]:
        """PNG (or GIF) files the trainer wrote (RUN_DIR/*.png, samples/, eval/) not logged yet; a rewritten
        file counts as new. Not the trackers' own folders: wandb keeps copies of logged images in RUN_DIR/wandb."""
        found = []
        pattern = f"*.{suffix}"
        candidates = [*self._run_dir.glob(pattern), *(p for d in GRID_FOLDERS for p in (self._run_dir / d).glob(pattern))]
        for path in sorted(candidates):
            key = (str(path), path.stat().st_mtime_ns)
            if key not in self._seen and not path.name.endswith(f".tmp.{suffix}"):
                self._seen.add(key)
                found.append(path)
        return found

    def _log_images(self, step: int) -> None:
        for path in self._new_images():
            relative = path.relative_to(self._run_dir)
            for tracker in self.trackers:
                _log_image(tracker, image_tag(relative), path, relative.parent.as_posix(), step)
        for path in self._new_images("gif"):
            relative = path.relative_to(self._run_dir)
            for tracker in self.trackers:
                log_video(tracker, video_tag(relative), path, relative.parent.as_posix(), step)


def image_tag(relative: Path) -> str:
    """samples/update_000010.png -> samples/update; eval/base.png -> eval/base (the step carries the update)."""
    return (relative.parent / re.sub(r"_\d+$", "", relative.stem)).as_posix()


def _log_image(tracker, tag: str, path: Path, folder: str, step: int) -> None:
    if hasattr(tracker, "log_images"):
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))[None]  # [1, H, W, 3] uint8
        options = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
        tracker.log_images({tag: image}, step=step, **options)
    elif tracker.name == "trackio":  # accelerate's TrackioTracker has no log_images; trackio.log takes trackio.Image
        import trackio

        tracker.log({tag: trackio.Image(str(path))}, step=step)
    elif hasattr(tracker, "log_artifact"):  # mlflow: the file itself, in its run-directory folder
        tracker.log_artifact(str(path), artifact_path=folder)


def _make(name: str, run_dir: Path):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        return cls("tensorboard", run_dir)  # event files in RUN_DIR/tensorboard
    if name == "wandb":
        return cls(os.environ.get("WANDB_PROJECT", PROJECT), name=run_dir.name, dir=str(run_dir))
    if name == "mlflow":
        return cls(experiment_name=PROJECT, run_name=run_dir.name)
    return cls(os.environ.get("TRACKIO_PROJECT", PROJECT), name=run_dir.name)  # trackio
