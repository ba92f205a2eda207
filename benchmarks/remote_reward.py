"""Overhead of a reward scored through `genrl serve-reward` on localhost against the same reward in-process
(issue 32's benchmark; docs/rewards_remote.md).

A server is started in a subprocess (as a user would), the same batch is scored in-process and through
`reward: {name: remote}` with each image encoding, repetitions alternate the sides, and the ratio of
median times per image is printed: what the HTTP round trip, the safetensors encoding and the server's
decoding add. The default reward (ShapeWorld's programmatic score on 32×32 images) is cheap, so the
ratio is close to the worst case; a reward model costs far more per image and hides the overhead.

    python -m genrl.benchmarks.remote_reward [--batch 64] [--repeats 7] [--size 32] [--reward shapeeval]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from genrl.rewards import load, score
from genrl.shapeworld import render, train_prompts


def batch(n: int, size: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """n ShapeWorld images (groups of 8 per prompt), upsampled to size×size when size > 32."""
    prompts = [p for p in train_prompts()[: max(1, n // 8)] for _ in range(8)][:n]
    images = torch.stack([render(p, seed=i) for i, p in enumerate(prompts)]).float()
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="nearest")
    return images, prompts, torch.arange(n) // 8


def start_server(reward: str) -> tuple[subprocess.Popen, str]:
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "genrl", "serve-reward", f"reward.name={reward}", "reward.options={}",
                             "--port", "0", "--max-batch", "4096"], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if "serving reward" not in line:
        proc.kill()
        raise SystemExit(f"the reward server did not start: {line}")
    return proc, line.split(" on ")[1].split()[0]


def seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per call (default 64)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per side (default 7)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32, ShapeWorld's)")
    parser.add_argument("--reward", default="shapeeval", help="a reward without options (default shapeeval)")
    args = parser.parse_args(argv)
    images, prompts, groups = batch(args.batch, args.size)
    proc, url = start_server(args.reward)
    try:
        local = load(args.reward)
        sides = {"in-process": local} | {f"remote {e}": load("remote", url=url, encoding=e) for e in ("float32", "uint8")}
        for reward in sides.values():  # warm up: first calls load and allocate
            score(reward, images, prompts, groups)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):  # alternate, so that load on the machine falls on every side alike
            for name, reward in sides.items():
                times[name] += seconds(lambda r=reward: score(r, images, prompts, groups), 1)
    finally:
        proc.terminate()
        proc.wait()
    per_image = {name: statistics.median(t) / args.batch * 1e3 for name, t in times.items()}
    base = per_image["in-process"]
    print(f"reward {args.reward!r}, {args.batch} images of {args.size}x{args.size}, median of {args.repeats} calls, "
          f"server on localhost")
    for name, ms in per_image.items():
        extra = "" if name == "in-process" else f"  ratio {ms / base:.2f}x, +{ms - base:.3f} ms/image"
        print(f"  {name:16s} {ms:8.3f} ms/image{extra}")


if __name__ == "__main__":
    main()
