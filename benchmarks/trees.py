"""Model calls and rollout bytes of the tree structures against their chain equivalents (docs/trees.md).

For each tree algorithm's structure, one prompt's rollout on the shipped tiny model: the model
evaluations it makes and the distinct bytes it holds (genrl.benchmarks.memory's `storage_bytes`),
against G independent chains of the same K steps, G the tree's leaves. The ratio is the point: a
tree computes a shared prefix once; its rollout stores every leaf's path (the trainer reads a tree
like chains) plus three id tensors, so its bytes are the chains' plus those ids.

    python -m genrl.benchmarks.trees
"""

from __future__ import annotations

import torch

from genrl import build, config
from genrl.benchmarks.memory import storage_bytes

COMMON = ["train.prompts_per_update=1", "train.minibatches=1", "device=cpu", "seed=0"]
CASES = [  # (label, algorithm, steps, leaves, overrides)
    ("mix_grpo, window at 0 of 25", "mix_grpo", 25, 12, ["mix_grpo.structure_options={start: 0}"]),
    ("mix_grpo, window at 10 of 25", "mix_grpo", 25, 12, ["mix_grpo.structure_options={start: 10}"]),
    ("branch_grpo, forks 0,3,6,9 of 20", "branch_grpo", 20, 16, []),
    ("tempflow_grpo, 6 children, K 10", "tempflow_grpo", 10, 55, []),
]


def measure(algorithm: str, steps: int, leaves: int, overrides: list[str]) -> tuple[int, int]:
    """(model calls, rollout bytes) of one prompt's rollout."""
    cfg = config.load(overrides=COMMON + [f"algorithm={algorithm}", f"sampling.num_steps={steps}",
                                          f"train.group_size={leaves}", *overrides])
    parts = build.build(cfg)
    parts.calls.take()
    with torch.no_grad():
        rollout = parts.env.rollout(policy=parts.policy, keep_tail=True)
    return parts.calls.take(), storage_bytes([rollout])


def main() -> None:
    print(f"{'structure':34} {'calls':>6} {'chains':>6} {'ratio':>6} {'KiB':>8} {'chains':>8} {'ratio':>6}")
    for label, algorithm, steps, leaves, overrides in CASES:
        calls, nbytes = measure(algorithm, steps, leaves, overrides)
        chain = ["dance_grpo.sde_window=null", "dance_grpo.shared_noise=true"]
        chain_calls, chain_bytes = measure("dance_grpo", steps, leaves, chain)
        print(f"{label:34} {calls:6d} {chain_calls:6d} {calls / chain_calls:6.2f} {nbytes / 1024:8.0f} "
              f"{chain_bytes / 1024:8.0f} {nbytes / chain_bytes:6.2f}")


if __name__ == "__main__":
    main()
