"""How close the tiny denoiser runs to this CPU's limit: its achieved FLOP/s as a fraction of a large matmul's.

    python -m genrl.benchmarks.cpu_ratio [--micro-batches 16 64] [--compile] [--processes 2] [--json OUT]
    python -m genrl.benchmarks.cpu_speed --ratio ...      # the same
    python -m genrl.benchmarks.cpu_ratio --quick          # seconds: a check of the script, not of the machine

In one run: the machine's fp32 and bf16 matmul rates (n × n products, n = 1024, best of several), and
the shipped denoiser's achieved rate, FLOPs counted by torch.utils.flop_counter.FlopCounterMode on one
call over the measured time of a call (best of `--repeats` timings of `--calls` calls): in rollout
calls (forward without gradients, `adapter.velocity` as the sampler calls it) and training passes
(forward and backward of a velocity loss), per micro-batch size, thread layout (threads of one
process; with `--processes N`, N processes of one thread each running the same measurements at the
same time, their rates summed), dtype (fp32; bf16 under torch.autocast with fp32 weights) and
compile setting (eager; `--compile`: torch.compile of the transformer, its compile time reported, at
the first micro-batch size and thread count). Each rate is printed as a fraction of the matmul rate of its dtype and
layout measured in the same run. A fraction is a ratio of two measurements taken minutes apart on
the same machine: state the machine's load (`uptime`) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_seconds(fn, calls: int, repeats: int) -> float:
    """Seconds per call: the best of `repeats` timings of `calls` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matmul_rate(dtype: str, n: int = 1024, calls: int = 10, repeats: int = 5) -> float:
    """FLOP/s of an n × n × n product (2n³ FLOPs) in `dtype`."""
    a, b = torch.randn(n, n, dtype=DTYPES[dtype]), torch.randn(n, n, dtype=DTYPES[dtype])
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), calls, repeats)


@dataclass
class Measurement:
    layout: str  # "P process(es) × T thread(s)"
    micro_batch: int
    dtype: str
    compiled: str  # eager | compiled | "failed: why"
    mode: str  # rollout | training
    flops: int  # one call, FlopCounterMode
    seconds: float  # one call
    achieved: float  # flops / seconds
    matmul: float  # the matmul rate of this dtype and layout
    fraction: float  # achieved / matmul
    compile_s: float | None = None


def denoiser_call(adapter, micro_batch: int, dtype: str, mode: str):
    """A rollout call or a training pass of the shipped denoiser on `micro_batch` training prompts."""
    from genrl.prompts import load_prompts

    prompts = (load_prompts("shapeworld:train") * micro_batch)[:micro_batch]
    cond = adapter.encode(prompts)
    x, sigma = torch.randn(micro_batch, *adapter.latent_shape), torch.rand(micro_batch)

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"), \
                torch.set_grad_enabled(mode == "training"):
            v = adapter.velocity(x, sigma, cond)
        if mode == "training":
            v.float().square().mean().backward()
    return call


def measure(micro_batches=(16, 64), threads=(1, None), compile_=False, calls: int = 10, repeats: int = 3,
            matmul_n: int = 1024, processes: int = 1, dtypes=tuple(DTYPES)) -> list[Measurement]:
    """The grid in this process (`threads`: thread counts, None for every core); `processes` > 1 labels
    the layout of N concurrent copies."""
    from genrl import models

    torch.manual_seed(0)
    adapter = models.load("tiny", finetune="full")
    out = []
    for t in threads:
        torch.set_num_threads(t or os.cpu_count())
        layout = f"{processes} process{'es' if processes > 1 else ''} × {torch.get_num_threads()} thread(s)"
        rates = {d: matmul_rate(d, matmul_n, repeats=max(repeats, 2)) for d in dtypes}
        for mb in micro_batches:
            for dtype in dtypes:
                for mode in ("rollout", "training"):
                    call = denoiser_call(adapter, mb, dtype, mode)
                    with FlopCounterMode(display=False) as counter:
                        call()
                    settings = [("eager", adapter, None)]
                    if compile_ and mb == micro_batches[0] and t == threads[0]:  # compiling costs minutes each
                        settings.append(compiled_setting(adapter, mb, dtype, mode))
                    for name, model, compile_s in settings:
                        seconds = best_seconds(denoiser_call(model, mb, dtype, mode), calls, repeats) if model else float("nan")
                        achieved = counter.get_total_flops() / seconds
                        out.append(Measurement(layout, mb, dtype, name, mode, counter.get_total_flops(), seconds, achieved,
                                               rates[dtype], achieved / rates[dtype], compile_s))
                        print(table(out[-1:]).splitlines()[-1], file=sys.stderr, flush=True)  # progress: minutes a row
    for p in adapter.parameters():
        p.grad = None
    return out


def compiled_setting(adapter, mb: int, dtype: str, mode: str):
    """("compiled", an adapter whose transformer is compiled, its compile seconds) or ("failed: why", None, None)."""
    import copy

    compiled = copy.deepcopy(adapter)
    compiled.transformer = torch.compile(compiled.transformer)
    start = time.perf_counter()
    try:
        denoiser_call(compiled, mb, dtype, mode)()  # compiles
    except Exception as err:  # noqa: BLE001 (no compiler, an unsupported op: reported, not raised)
        return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}", None, None
    return "compiled", compiled, time.perf_counter() - start


def in_processes(processes: int, micro_batches, calls: int, repeats: int, matmul_n: int) -> list[Measurement]:
    """`processes` copies of the one-thread grid, started together; rates summed over the copies."""
    command = [sys.executable, "-m", "genrl.benchmarks.cpu_ratio", "--worker", "--calls", str(calls),
               "--repeats", str(repeats), "--matmul-n", str(matmul_n), "--processes", str(processes),
               "--micro-batches", *map(str, micro_batches)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = [[Measurement(**m) for m in json.loads(w.communicate()[0])] for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError(f"a cpu_ratio worker exited {[w.returncode for w in workers]}")
    summed = []
    for rows in zip(*results):
        achieved, matmul = sum(r.achieved for r in rows), sum(r.matmul for r in rows)
        summed.append(Measurement(**(asdict(rows[0]) | dict(seconds=max(r.seconds for r in rows), achieved=achieved,
                                                             matmul=matmul, fraction=achieved / matmul))))
    return summed


def table(rows: list[Measurement]) -> str:
    lines = ["| layout | micro-batch | dtype | compile | call | GFLOP / call | ms / call | achieved GFLOP/s "
             "| matmul GFLOP/s | fraction |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        compiled = r.compiled + (f" ({r.compile_s:.0f} s to compile)" if r.compile_s else "")
        lines.append(f"| {r.layout} | {r.micro_batch} | {r.dtype}{' autocast' if r.dtype == 'bf16' else ''} | {compiled} "
                     f"| {r.mode} | {r.flops / 1e9:.2f} | {1e3 * r.seconds:.1f} | {r.achieved / 1e9:.1f} "
                     f"| {r.matmul / 1e9:.1f} | {r.fraction:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--compile", action="store_true", help="also torch.compile, at the first micro-batch size and thread count")
    parser.add_argument("--processes", type=int, default=1, help="also N processes × 1 thread, run together")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-n", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script in seconds")
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.micro_batches, args.calls, args.repeats, args.matmul_n = [2], 1, 1, 128
    if args.worker:
        rows = measure(args.micro_batches, (1,), False, args.calls, args.repeats, args.matmul_n, args.processes)
        print(json.dumps([asdict(r) for r in rows]))
        return
    rows = measure(args.micro_batches, (1, None), args.compile, args.calls, args.repeats, args.matmul_n)
    if args.processes > 1:
        rows += in_processes(args.processes, args.micro_batches, args.calls, args.repeats, args.matmul_n)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the end")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
