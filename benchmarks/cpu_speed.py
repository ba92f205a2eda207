"""What makes the main job faster on a CPU, measured: the process layout, and bf16 autocast.

**Process layout.** A tiny denoiser's matrix products are too small to keep several threads busy (on 2 cores one
process is 1.6× faster with 2 threads than with 1, not 2×), so N processes of one thread each,
data-parallel (`genrl train --num-processes N`, gloo), may do the same work sooner. Data-parallel
processes meet at every optimizer step, so a process holding more of a minibatch's groups keeps
the others waiting: the random minibatch draw is timed beside the balanced one
(`train.minibatch_draw`), which gives every process as many groups of every minibatch.

Each layout runs the main job (`genrl train`, no evaluations, no grids or checkpoints) for
`--updates` updates in a process of its own; its time per update is the mean after `--warmup`
updates, read from metrics.jsonl. Repetitions go round the layouts (A, B, C, D, A, B, ...) so that
load on the machine falls on all of them, and the median is reported with its ratio to the first
layout. A data-parallel run draws the same global batch as one process with the same draw, so its
metrics are compared with that run's: "same metrics" means reward and gradient norm agree at every
update to float tolerance (the sum of gradients across processes is not bitwise the one-process sum).

**bf16 autocast.** The shipped denoiser called at the main job's micro-batch on prompts of the
training set, in fp32 and under `torch.autocast("cpu", bfloat16)`, alternating: a forward without
gradients (a rollout or evaluation step) and a forward and backward (a training pass). Beside the
ratios, what autocast costs in precision: the velocity's relative error against fp32, and whether
the forward with gradients gives the same bits as the one without. Bit equality is what makes a
training pass re-evaluate a rollout's log-probs exactly (ratio 1 on policy); the PPO clip range of
the main job is 5e-5, so a log-ratio off by rounding is clipped, not learned from.

    python -m genrl.benchmarks.cpu_speed [--updates 20] [--warmup 5] [--repeats 3] [--processes 2]
    python -m genrl.benchmarks.cpu_speed --autocast [--repeats 3]
    python -m genrl.benchmarks.cpu_speed --compile [--updates 10] [--config shapeworld_motion]  # compiled vs eager
    python -m genrl.benchmarks.cpu_speed --ratio [cpu_ratio's options]   # the denoiser's FLOP/s against a matmul's

**torch.compile** (`--compile`): the main job in one process, eager and with `model.compile=true`, alternating; besides
the time per update after the warm-up, the first update's time (the compile is in it: the rollout's graph and the
training pass's) and the whole run's, so what compiling costs is counted.

**Ratio to the limit** (`--ratio`, genrl.benchmarks.cpu_ratio): the denoiser's achieved FLOP/s in rollout calls and
training passes as a fraction of this CPU's fp32 and bf16 matmul rates, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

QUIET = ["log.eval_at_start=false", "log.eval_at_end=false", "log.sample_every=0",  # no evaluations or grids,
         "log.checkpoint_every=100000", "log.progress=false"]  # one checkpoint, at the end


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int  # per process
    draw: str  # train.minibatch_draw
    compiled: bool | None = None  # model.compile; None: as the config and the overrides give it

    @property
    def name(self) -> str:
        compiled = ", compiled" if self.compiled else ""
        return f"{self.processes} process{'es' if self.processes > 1 else ''} × {self.threads} thread(s), {self.draw} draw{compiled}"


def layouts(cores: int, processes: int) -> list[Layout]:
    """The default (one process, every core) first, then `processes` processes sharing the cores."""
    return [Layout(1, cores, draw) for draw in ("random", "balanced")] + \
           [Layout(processes, max(1, cores // processes), draw) for draw in ("random", "balanced")]


def compile_layouts(cores: int) -> list[Layout]:
    """One process on every core, eager then compiled."""
    return [Layout(1, cores, "random", compiled=False), Layout(1, cores, "random", compiled=True)]


def command(layout: Layout, updates: int, run_dir: str, overrides: list[str], config: str | None = None) -> list[str]:
    """`config`: a bundled config's name or a file (the main job's when None)."""
    launch = ["--num-processes", str(layout.processes)] if layout.processes > 1 else []
    return [sys.executable, "-m", "genrl", "train", *([config] if config else []), *launch, f"train.updates={updates}",
            f"train.minibatch_draw={layout.draw}", *QUIET, *overrides,
            *([] if layout.compiled is None else [f"model.compile={str(layout.compiled).lower()}"]), f"run_dir={run_dir}"]


def run(layout: Layout, updates: int, run_dir: str, overrides: list[str], config: str | None = None) -> list[dict]:
    """One run of the layout; its metrics.jsonl rows."""
    env = dict(os.environ, OMP_NUM_THREADS=str(layout.threads))
    done = subprocess.run(command(layout, updates, run_dir, overrides, config), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{layout.name}: genrl train exited {done.returncode}:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def seconds_per_update(metrics: list[dict], warmup: int) -> float:
    """Mean time of the updates after the first `warmup` (wall_s is cumulative)."""
    if len(metrics) <= warmup:
        raise ValueError(f"{len(metrics)} updates leave none after {warmup} warm-up updates")
    first = metrics[warmup - 1]["wall_s"] if warmup else 0.0
    return (metrics[-1]["wall_s"] - first) / (len(metrics) - warmup)


def same_metrics(a: list[dict], b: list[dict], rel: float = 1e-4) -> bool:
    """Reward and gradient norm equal at every update to float tolerance (the same global batch trained alike)."""
    keys = ("reward_mean", "grad_norm")
    return len(a) == len(b) and all(math.isclose(x[k], y[k], rel_tol=rel, abs_tol=1e-7)
                                    for x, y in zip(a, b) for k in keys)


def measure(updates: int, warmup: int, repeats: int, processes: int, cores: int,
            overrides: list[str] = (), compiled: bool = False, config: str | None = None) -> list[dict]:
    """`compiled`: eager against model.compile=true in one process (compile_layouts), else the process layouts."""
    candidates = compile_layouts(cores) if compiled else layouts(cores, processes)
    times: dict[Layout, list[float]] = {c: [] for c in candidates}
    first: dict[Layout, list[float]] = {c: [] for c in candidates}  # the first update, a compiled run's compile in it
    total: dict[Layout, list[float]] = {c: [] for c in candidates}
    metrics: dict[Layout, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for i, layout in enumerate(candidates):
                rows = run(layout, updates, f"{tmp}/{rep}-{i}", list(overrides), config)
                times[layout].append(seconds_per_update(rows, warmup))
                first[layout].append(rows[0]["wall_s"])
                total[layout].append(rows[-1]["wall_s"])
                metrics.setdefault(layout, rows)
    reference = statistics.median(times[candidates[0]])
    results = []
    for layout in candidates:
        twin = next(c for c in candidates if c.processes == 1 and c.draw == layout.draw)
        median = statistics.median(times[layout])
        results.append({"layout": layout.name, "processes": layout.processes, "threads": layout.threads,
                        "draw": layout.draw, "compiled": layout.compiled, "s_per_update": median, "times": times[layout],
                        "first_update_s": statistics.median(first[layout]), "run_s": statistics.median(total[layout]),
                        "speedup": reference / median,
                        "same_metrics_as": None if twin == layout else (twin.name if same_metrics(
                            metrics[layout], metrics[twin]) else False)})
    return results


def autocast_check(micro_batch: int = 16, repeats: int = 3, calls: int = 20) -> dict:
    """Times (median of `repeats`, each `calls` calls) and precision of the shipped denoiser in fp32 and bf16."""
    from genrl import models
    from genrl.prompts import load_prompts

    torch.manual_seed(0)
    adapter = models.load("tiny", finetune="full")
    prompts = load_prompts("shapeworld:train")[:micro_batch]
    cond = adapter.encode(prompts)
    x, sigma = torch.randn(micro_batch, *adapter.latent_shape), torch.rand(micro_batch)

    def velocity(bf16: bool, grad: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(grad):
            v = adapter.velocity(x, sigma, cond).float()
        if grad:
            v.square().mean().backward()
        return v.detach()

    times = {(bf16, grad): [] for grad in (False, True) for bf16 in (False, True)}
    for _ in range(repeats):
        for bf16, grad in times:
            velocity(bf16, grad)  # warm-up
            start = time.perf_counter()
            for _ in range(calls):
                velocity(bf16, grad)
            times[bf16, grad].append((time.perf_counter() - start) / calls)
    median = {k: statistics.median(v) for k, v in times.items()}
    fp32, bf16 = velocity(False, False), velocity(True, False)
    return {"forward": median[True, False] / median[False, False],
            "forward_backward": median[True, True] / median[False, True],
            "ms": {f"{'bf16' if b else 'fp32'} {'forward+backward' if g else 'forward'}": 1e3 * t
                   for (b, g), t in median.items()},
            "relative_error": float((bf16 - fp32).norm() / fp32.norm()),
            "grad_equals_no_grad": bool(torch.equal(velocity(True, True), bf16))}


def main() -> None:
    if "--ratio" in sys.argv[1:]:
        from genrl.benchmarks import cpu_ratio

        return cpu_ratio.main([a for a in sys.argv[1:] if a != "--ratio"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--autocast", action="store_true", help="time the denoiser in fp32 and bf16 autocast instead")
    parser.add_argument("--compile", action="store_true", help="the main job eager and with model.compile=true instead "
                        "of the process layouts")
    parser.add_argument("--config", help="a bundled config's name or a file (default: the main job's), e.g. "
                        "shapeworld_motion for the video main job")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value passed to every run")
    args = parser.parse_args()
    if args.autocast:
        r = autocast_check(repeats=args.repeats)
        print(f"the shipped denoiser at micro-batch 16, median of {args.repeats}, {torch.get_num_threads()} thread(s)")
        print("\n".join(f"  {k}: {v:.2f} ms" for k, v in r["ms"].items()))
        print(f"bf16 / fp32 time: forward ×{r['forward']:.2f}, forward+backward ×{r['forward_backward']:.2f}\n"
              f"bf16 velocity's relative error against fp32: {r['relative_error']:.2e}\n"
              f"bf16 forward with gradients gives the bits of the one without: {r['grad_equals_no_grad']}")
        return
    results = measure(args.updates, args.warmup, args.repeats, args.processes, args.cores, args.overrides, args.compile,
                      args.config)
    print(f"{args.config or 'the main job'}'s updates {args.warmup + 1}-{args.updates}, median of {args.repeats} runs, "
          f"{args.cores} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print("| layout | s / update | runs | speed-up | first update s | run s (updates) | metrics |\n|---|---|---|---|---|---|---|")
    twin = "eager" if args.compile else "1 process"  # compiled numbers are not bitwise eager's: compared to tolerance
    for r in results:
        same = r["same_metrics_as"]
        check = "reference" if same is None else (f"same as {twin}" if same else f"DIFFERENT from {twin}")
        print(f"| {r['layout']} | {r['s_per_update']:.3f} | {', '.join(f'{t:.3f}' for t in r['times'])}"
              f" | ×{r['speedup']:.2f} | {r['first_update_s']:.2f} | {r['run_s']:.1f} | {check} |")


if __name__ == "__main__":
    main()
