"""The ceiling the denoiser's own matrix shapes put on its FLOP rate, measured in one run.

    python -m genrl.benchmarks.matmul_ceiling [--micro-batches 16 64] [--threads 1 2] [--json OUT]
    python -m genrl.benchmarks.matmul_ceiling --quick      # seconds: a check of the script

`genrl.benchmarks.cpu_ratio` compares the denoiser's achieved FLOP/s with an n × n matmul (n = 1024).
That big product is not what the model runs: the tiny MMDiT's products have an inner dimension of
128 or 512 (its width and FFN), and a kernel reaches a smaller share of the machine's peak on them. So
this benchmark records every matrix product of one rollout call (forward, no gradients) and one
training pass (forward and backward) — their (M, K, N) shapes and counts, caught by a
TorchDispatchMode on aten.mm / addmm / bmm — times `torch.mm` alone at each shape (best of several),
and reports, per micro-batch, dtype (fp32; bf16 as autocast runs it) and thread count:

- the share of the call's FLOPs that are matrix products (FlopCounterMode's total is the rest's
  denominator: attention and elementwise work are the remainder);
- the **shape ceiling**: the rate at which the call's products run when each runs at its own shape's
  measured speed, with nothing else in between — what an ideal runtime (no Python, no elementwise
  work, no attention) would reach — as a fraction of the n × n matmul rate;
- the achieved rate of the whole call, as a fraction of the n × n rate and of the shape ceiling.

If the shape ceiling is below a target fraction of the n × n rate, no removal of overheads reaches the
target at these shapes: only larger products (a wider model, or fusing products) could.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from genrl.benchmarks.cpu_ratio import DTYPES, best_seconds, denoiser_call, matmul_rate

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class ProductShapes(TorchDispatchMode):
    """Counts (batch, M, K, N) of every aten matrix product run inside it."""

    def __init__(self):
        super().__init__()
        self.shapes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            a, b = (args[1], args[2]) if func is torch.ops.aten.addmm.default else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            self.shapes[(batch, a.shape[-2], a.shape[-1], b.shape[-1], str(a.dtype).removeprefix("torch."))] += 1
        return func(*args, **(kwargs or {}))


def product_seconds(batch: int, m: int, k: int, n: int, dtype: torch.dtype, calls: int, repeats: int) -> float:
    a, b = torch.randn(batch, m, k, dtype=dtype), torch.randn(batch, k, n, dtype=dtype)
    if batch == 1:
        a, b = a[0], b[0]
        return best_seconds(lambda: torch.mm(a, b), calls, repeats)
    return best_seconds(lambda: torch.bmm(a, b), calls, repeats)


@dataclass
class Ceiling:
    threads: int
    micro_batch: int
    dtype: str
    mode: str  # rollout | training
    call_gflop: float  # FlopCounterMode, one call
    product_share: float  # of the call's FLOPs, in matrix products
    shapes: int  # distinct product shapes
    ceiling: float  # FLOP/s of the products at their own shapes' speed
    square: float  # FLOP/s of the n × n product in this dtype
    achieved: float  # FLOP/s of the whole call

    @property
    def ceiling_fraction(self) -> float:
        return self.ceiling / self.square

    @property
    def achieved_fraction(self) -> float:
        return self.achieved / self.square


def measure(micro_batches=(16, 64), threads=(1, 2), dtypes=tuple(DTYPES), calls: int = 10, repeats: int = 3,
            matmul_n: int = 1024, adapter=None) -> list[Ceiling]:
    from genrl import models

    torch.manual_seed(0)
    adapter = adapter or models.load("tiny", finetune="full")
    out = []
    for t in threads:
        torch.set_num_threads(t)
        for dtype in dtypes:
            square = matmul_rate(dtype, matmul_n, repeats=max(repeats, 2))
            for mb in micro_batches:
                for mode in ("rollout", "training"):
                    call = denoiser_call(adapter, mb, dtype, mode)
                    with FlopCounterMode(display=False) as counter, ProductShapes() as recorded:
                        call()
                    seconds = best_seconds(call, calls, repeats)
                    product_flops = product_time = 0.0
                    for (batch, m, k, n, kind), count in recorded.shapes.items():
                        product_flops += count * 2 * batch * m * k * n
                        product_time += count * product_seconds(batch, m, k, n, getattr(torch, kind), calls, repeats)
                    total = counter.get_total_flops()
                    row = Ceiling(t, mb, dtype, mode, total / 1e9, product_flops / total, len(recorded.shapes),
                                  product_flops / product_time, square, total / seconds)
                    out.append(row)
                    print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    for p in adapter.parameters():
        p.grad = None
    return out


def table(rows: list[Ceiling]) -> str:
    lines = ["| threads | micro-batch | dtype | call | GFLOP | in products | shapes | shape ceiling GFLOP/s "
             "| n×n GFLOP/s | ceiling / n×n | achieved GFLOP/s | achieved / n×n | achieved / ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.threads} | {r.micro_batch} | {r.dtype} | {r.mode} | {r.call_gflop:.2f} | {r.product_share:.0%} "
                     f"| {r.shapes} | {r.ceiling / 1e9:.1f} | {r.square / 1e9:.1f} | {r.ceiling_fraction:.0%} "
                     f"| {r.achieved / 1e9:.1f} | {r.achieved_fraction:.0%} | {r.achieved / r.ceiling:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-n", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script in seconds")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    adapter = None
    if args.quick:
        from genrl import models

        args.micro_batches, args.threads, args.calls, args.repeats, args.matmul_n = [2], [1], 1, 1, 64
        adapter = models.load("tiny", finetune="full", pretrained=False, num_layers=1, attention_head_dim=8)
    rows = measure(args.micro_batches, args.threads, args.dtypes, args.calls, args.repeats, args.matmul_n, adapter)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the end")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"ceiling_fraction": r.ceiling_fraction, "achieved_fraction": r.achieved_fraction}
                       for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
