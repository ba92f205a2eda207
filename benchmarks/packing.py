"""Padding rows of the training passes: whole units packed into full model calls (genrl.passes)
against the rule before (a pass closed before the unit that would take it past `micro_batch` rows),
on the main job's and the GPU configs' shapes.

The model runs in calls of exactly `sampling.micro_batch` rows (genrl.policy), so the rows of a
pass that are not a multiple of it are padding, computed in full. This replays the unit draws of
each algorithm (its own grouping and draw, the trainer's minibatch split, on random L1rel) for a
few updates and packs them with the trainer's code; no model is run. With `--processes P` each
process packs its own trajectories; with `--sharded` too, the passes run in lockstep
(genrl.passes.in_lockstep: every process calls the model as often as the busiest), and the filler
calls count as padding. `--draw balanced` draws the minibatches so that every process holds as many
groups of each (`train.minibatch_draw`, genrl.training_batch.minibatch_groups), which is what removes
most fillers; by default each config's own draw.

    python -m genrl.benchmarks.packing [--updates 5] [--processes 1 [--sharded]] [--draw random|balanced]
"""

from __future__ import annotations

import argparse

import torch
from tensordict import TensorDict

import genrl.algorithms  # noqa: F401  (registers the algorithms)
from genrl import config
from genrl.algorithms.grpo import StepRows
from genrl.build import build_algorithm
from genrl.passes import model_rows, unit_passes
from genrl.training_batch import minibatch_groups

EVERY_STEP = ["flow_grpo.sde_window=null", "dance_grpo.sde_window=null", "chunk_grpo.sde_window=null"]
# label -> (config name, overrides); None: the default config, the main job (SDE window of 4 steps)
CONFIGS = {"main job": (None, []), "main, 9 steps": (None, EVERY_STEP), "flux.yaml": ("flux", []),
           "sd35m.yaml": ("sd35m", [])}
ALGORITHMS = ("chunk_grpo", "flow_grpo", "dance_grpo")


def previous_rule(sizes: list[int], micro_batch: int) -> list[int]:
    """Pass sizes under the rule before packing: units in order, a pass closed before the unit that
    would take it past `micro_batch` rows."""
    passes, rows = [], 0
    for size in sizes:
        if rows and rows + size > micro_batch:
            passes.append(rows)
            rows = 0
        rows += size
    return passes + ([rows] if rows else [])


def minibatch_passes(cfg: config.Config, update: int, processes: int, generator: torch.Generator) -> list[dict]:
    """For each minibatch of one update: per process, the pass sizes now and before."""
    algorithm = build_algorithm(cfg)
    prompts, group = cfg.train.prompts_per_update, cfg.train.group_size
    n, k = prompts * group, cfg.sampling.num_steps
    group_id = torch.arange(prompts).repeat_interleave(group)
    assignment = algorithm.units(torch.rand(n, k, generator=generator), update, generator).assignment  # [N, K]
    out = []
    for minibatch in minibatch_groups(prompts, cfg.train.minibatches, cfg.train.minibatch_draw, generator):  # as Trainer.optimise
        now, before = [], []
        for rank in range(processes):
            local = slice(rank * n // processes, (rank + 1) * n // processes)
            trajectories = torch.isin(group_id[local], minibatch).nonzero().flatten()
            batch = StepRows(TensorDict({}, batch_size=[n // processes, k]), assignment[local])
            rows = batch.rows(trajectories)
            now.append([p.size for p in unit_passes(rows, cfg.sampling.micro_batch)])
            sizes = torch.unique(rows["unit"], return_counts=True)[1].tolist()
            before.append(previous_rule(sizes, cfg.sampling.micro_batch))
        out.append({"now": now, "before": before})
    return out


def total_rows(per_process: list[list[int]], micro_batch: int, lockstep: bool) -> int:
    """Model rows of all processes; in lockstep (as genrl.passes.in_lockstep) every process makes as many
    passes as the busiest, largest first, and as many calls in each as the process with the most rows."""
    if not lockstep:
        return sum(model_rows(p, micro_batch) for p in per_process)
    per_process = [sorted(p, reverse=True) for p in per_process]
    passes = max(len(p) for p in per_process)
    padded = [p + [p[-1] if p else 1] * (passes - len(p)) for p in per_process]  # fillers: the smallest pass again
    return len(per_process) * model_rows([max(column) for column in zip(*padded)], micro_batch)


def measure(updates: int = 5, processes: int = 1, sharded: bool = False, configs: dict = CONFIGS,
            draw: str | None = None) -> list[dict]:
    results = []
    for label, (name, overrides) in configs.items():
        for algorithm in ALGORITHMS:
            cfg = config.load(name, [*overrides, f"algorithm={algorithm}", *([f"train.minibatch_draw={draw}"] if draw else [])])
            generator = torch.Generator().manual_seed(0)
            trained = rows_now = rows_before = 0
            for update in range(updates):
                for minibatch in minibatch_passes(cfg, update, processes, generator):
                    trained += sum(sum(p) for p in minibatch["now"])
                    rows_now += total_rows(minibatch["now"], cfg.sampling.micro_batch, sharded)
                    rows_before += total_rows(minibatch["before"], cfg.sampling.micro_batch, sharded)
            results.append({"config": label, "algorithm": algorithm, "processes": processes,
                            "draw": cfg.train.minibatch_draw,
                            "micro_batch": cfg.sampling.micro_batch, "trained_rows": trained,
                            "model_rows": rows_now, "padding": 1 - trained / rows_now,
                            "model_rows_before": rows_before, "padding_before": 1 - trained / rows_before})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1, help="processes sharing each update")
    parser.add_argument("--sharded", action="store_true", help="the processes' passes in lockstep (--sharding)")
    parser.add_argument("--draw", choices=("random", "balanced"), help="train.minibatch_draw (default: each config's)")
    args = parser.parse_args()
    print(f"training rows over {args.updates} updates, {args.processes} process(es)"
          f"{' in lockstep' if args.sharded else ''}; padding = 1 - trained / model rows")
    print(f"{'config':<13} {'algorithm':<11} {'draw':<8} {'micro-batch':>11} {'trained':>8} {'model rows':>10} {'padding':>8}"
          f" {'before':>10} {'padding':>8}")
    for r in measure(args.updates, args.processes, args.sharded, draw=args.draw):
        print(f"{r['config']:<13} {r['algorithm']:<11} {r['draw']:<8} {r['micro_batch']:>11} {r['trained_rows']:>8} {r['model_rows']:>10}"
              f" {r['padding']:>8.2%} {r['model_rows_before']:>10} {r['padding_before']:>8.2%}")


if __name__ == "__main__":
    main()
