"""Time of one update (rollout, decode, reward, training) against its shape, and a linear cost model.

The main job (Chunk-GRPO on ShapeWorld's tiny model, SDE and training on the first T steps) is timed
at shapes around its own: group size G, prompts per update P (rows = P·G trajectories), trained
steps T and sampling steps K, one at a time, and at one large corner. The times are fitted by least
squares with

    time ≈ a·rows·K + b·rows·T + c

(a: a rollout row-step, with its share of decoding and scoring; b: a training row, forward and
backward; c: what does not grow with the batch) and each shape's residual is printed: a cost that
grows faster than rows × steps shows up as residuals that grow with the shape, largest at the corner.
A second fit adds d·rows (decoding and scoring an image, which does not grow with K or T), whose
residuals show how much of the first fit's misfit that term is.
Each shape gets its own trainer; repetitions go round the shapes (A, B, C, A, B, C, ...) so that load
on the machine spreads over all of them, and the median of each is fitted.

    python -m genrl.benchmarks.scaling [--repeats 3]

`--main-jobs` instead times one update of each bundled main job at its own settings — the image
one (`shapeworld`) and the video one (`shapeworld_motion`) — alternately in one process, and prints
each one's median and the video / image ratio (the per-update cost of clips, measured in one run):

    python -m genrl.benchmarks.scaling --main-jobs [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from genrl import config
from genrl.trainer import Trainer

CENTER = dict(prompts=4, group=8, trained=4, steps=10)
SHAPES = [CENTER, *[dict(CENTER, **{key: value}) for key, values in (
    ("group", (4, 16)), ("prompts", (2, 8)), ("trained", (2, 8)), ("steps", (6, 14))) for value in values],
    dict(prompts=8, group=16, trained=8, steps=14)]


@dataclass
class Fit:
    a: float  # seconds per rows·K
    b: float  # seconds per rows·T
    c: float  # seconds
    predicted: list[float]
    residuals: list[float]  # measured − predicted
    d: float = 0.0  # seconds per row, with `per_row`


def fit(rows: list[int], sampled: list[int], trained: list[int], seconds: list[float], per_row: bool = False) -> Fit:
    """Least squares of seconds ≈ a·rows·sampled + b·rows·trained + c (+ d·rows with `per_row`)."""
    r, k, t = (torch.tensor(v, dtype=torch.float64) for v in (rows, sampled, trained))
    design = torch.stack([r * k, r * t, torch.ones_like(r), *([r] if per_row else [])], dim=1)
    y = torch.tensor(seconds, dtype=torch.float64)
    coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.flatten()
    predicted = (design @ coef).tolist()
    a, b, c, *d = coef.tolist()
    return Fit(a, b, c, predicted, [m - p for m, p in zip(seconds, predicted)], d[0] if d else 0.0)


def trainer(shape: dict, run_dir: str) -> Trainer:
    overrides = [f"train.prompts_per_update={shape['prompts']}", f"train.group_size={shape['group']}",
                 f"sampling.num_steps={shape['steps']}", f"chunk_grpo.sde_window=[0, {shape['trained']}]",
                 "train.minibatches=2", "device=cpu", "log.progress=false", f"run_dir={run_dir}"]
    return Trainer(config.load(None, overrides))


def timed_updates(trainers: list[Trainer], repeats: int) -> list[list[float]]:
    """Seconds of `repeats` updates of each trainer after one warm-up, round-robin (load spreads over all)."""
    for t in trainers:
        t.iteration()  # warm-up
    times = [[] for _ in trainers]
    for _ in range(repeats):
        for i, t in enumerate(trainers):
            start = time.perf_counter()
            t.iteration()
            times[i].append(time.perf_counter() - start)
    return times


def measure(repeats: int = 3, shapes: list[dict] = SHAPES) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        times = timed_updates([trainer(s, f"{tmp}/{i}") for i, s in enumerate(shapes)], repeats)
    return [dict(shape, rows=shape["prompts"] * shape["group"], seconds=statistics.median(ts), times=ts)
            for shape, ts in zip(shapes, times)]


MAIN_JOBS = ("shapeworld", "shapeworld_motion")  # the bundled image and video main jobs


def main_jobs(repeats: int = 3, names: tuple[str, ...] = MAIN_JOBS) -> dict[str, list[float]]:
    """Seconds per update of each bundled main job, at its own config (on the CPU, no progress bar)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = [Trainer(config.load(name, ["device=cpu", "log.progress=false", f"run_dir={tmp}/{name}"]))
                    for name in names]
        return dict(zip(names, timed_updates(trainers, repeats)))


def print_main_jobs(times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"one update of each main job at its own settings, median of {len(next(iter(times.values())))}, "
          f"{torch.get_num_threads()} thread(s)\n| config | median s | every update s |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    if set(MAIN_JOBS) <= set(medians):
        print(f"video / image per update: {medians['shapeworld_motion'] / medians['shapeworld']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--main-jobs", action="store_true", help="time the bundled image and video main jobs instead")
    args = parser.parse_args()
    if args.main_jobs:
        return print_main_jobs(main_jobs(args.repeats))
    results = measure(args.repeats)
    columns = ([r["rows"] for r in results], [r["steps"] for r in results], [r["trained"] for r in results],
               [r["seconds"] for r in results])
    f, g = fit(*columns), fit(*columns, per_row=True)
    print(f"one update, median of {args.repeats}, {torch.get_num_threads()} thread(s)\n"
          f"fit:           time = {f.a * 1e3:.3f} ms·rows·K + {f.b * 1e3:.3f} ms·rows·T + {f.c:.3f} s\n"
          f"with d·rows:   time = {g.a * 1e3:.3f} ms·rows·K + {g.b * 1e3:.3f} ms·rows·T + {g.d * 1e3:.2f} ms·rows"
          f" + {g.c:.3f} s")
    print("| P | G | rows | K | T | measured s | fit s | residual | residual with d·rows |\n|---|---|---|---|---|---|---|---|---|")
    for r, p, e, e2 in zip(results, f.predicted, f.residuals, g.residuals):
        print(f"| {r['prompts']} | {r['group']} | {r['rows']} | {r['steps']} | {r['trained']} | {r['seconds']:.3f}"
              f" | {p:.3f} | {e:+.3f} s ({e / p:+.1%}) | {e2:+.3f} s |")


if __name__ == "__main__":
    main()
