"""Overhead of the torchrl env + policy against a plain sampling loop (issue 3's benchmark).

Both sides sample the same batch for the same steps with the same adapter and
dynamics; the difference is the TensorDict / torchrl machinery (and, for the
default micro-batch, the fixed-shape calls that make log-probs batch-invariant).
Repetitions alternate A, B, A, B and the ratio of medians is reported, so
load on the machine affects both sides alike.

    python -m genrl.benchmarks.overhead [--batch 64] [--steps 10] [--repeats 5] [--micro-batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genrl import dynamics, models
from genrl.envs import DenoisingEnv, initial_noise
from genrl.policy import make_policy, stochastic_steps


def plain_loop(adapter, cond, seeds, sigmas, a: float, micro_batch: int | None) -> torch.Tensor:
    """What a user would write without genrl: noise, then velocity + one SDE step per timestep, log-probs kept."""
    x = initial_noise(seeds, adapter.latent_shape)
    n, k_steps = x.shape[0], len(sigmas) - 1
    log_probs = []
    for k in range(k_steps):
        sigma = sigmas[k].expand(n)
        if micro_batch is None:
            v = adapter.velocity(x, sigma, cond)
        else:
            v = torch.cat([adapter.velocity(x[i : i + micro_batch], sigma[i : i + micro_batch], cond[i : i + micro_batch])
                           for i in range(0, n, micro_batch)])
        kind, params = ("flow_sde", {"a": a, "sigma_1": float(sigmas[1])}) if k < k_steps - 1 else ("ode", {})
        out = dynamics.step(kind, x, v, sigmas[k], sigmas[k + 1], torch.randn_like(x), **params)
        log_probs.append(out.log_prob)
        x = out.sample
    return x


def measure(batch: int = 64, steps: int = 10, repeats: int = 5, micro_batch: int = 16, group_size: int = 8) -> dict:
    torch.manual_seed(0)
    adapter = models.load("tiny", pretrained=False).eval()
    from genrl import shapeworld

    prompts = shapeworld.train_prompts()
    sigmas = dynamics.flow_sigmas(steps)
    env = DenoisingEnv(adapter, prompts, sigmas, group_size=group_size, prompts_per_batch=batch // group_size)
    policy = make_policy(adapter, sigmas, stochastic_steps(steps), "flow_sde", micro_batch=micro_batch, a=0.7)
    td = env.reset()
    cond, seeds = td["context"], td["noise_seed"]

    def run_env():
        env.rollout(policy=policy)

    def run_plain(mb):
        plain_loop(adapter, cond, seeds, sigmas, 0.7, mb)

    timings: dict[str, list[float]] = {"env": [], "plain": [], "plain_micro": []}
    with torch.no_grad():
        run_env(), run_plain(None)  # warm-up
        for _ in range(repeats):
            for name, fn in (("env", run_env), ("plain", lambda: run_plain(None)), ("plain_micro", lambda: run_plain(micro_batch))):
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "batch": batch, "steps": steps, "micro_batch": micro_batch, "repeats": repeats,
        "threads": torch.get_num_threads(),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_env_vs_plain": round(med["env"] / med["plain"], 3),
        "ratio_env_vs_plain_same_micro_batch": round(med["env"] / med["plain_micro"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    result = measure(args.batch, args.steps, args.repeats, args.micro_batch)
    print(result)
    print(f"env+policy / plain loop (full-batch calls):      {result['ratio_env_vs_plain']:.3f}")
    print(f"env+policy / plain loop (same micro-batch calls): {result['ratio_env_vs_plain_same_micro_batch']:.3f}")


if __name__ == "__main__":
    main()
