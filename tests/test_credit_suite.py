"""The credit suite (issue 31, item 5), prepared: its arms are what they claim, comparable (one budget, the same
prompts per update, one σ grid, one evaluation), each tree's structure fits its group, no arm is stopped below the
budget by the update cap, and `genrl bench credit --dry-run` runs every arm."""

import json
import math

import pytest
import torch
import yaml

from genrl import cli
from genrl.benchmarks import harness, suite
from genrl.build import build_algorithm

ARMS = ("step_level", "chunk_fixed", "mix_grpo", "branch_grpo", "tempflow_grpo", "awm")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def first_seed():
    spec = suite.load_suite("credit")
    plans = suite.plan_runs(spec)
    assert len(plans) == len(ARMS) * len(spec.seeds)
    return spec, {p.label: p for p in plans if p.seed == spec.seeds[0]}


def _chunk_sizes(row: torch.Tensor) -> list[int]:
    units = row[row >= 0].tolist()
    return [units.count(u) for u in sorted(set(units))]


def test_credit_arms_are_comparable(first_seed):
    spec, plans = first_seed
    assert tuple(plans) == ARMS and spec.reference == "step_level" and len(spec.seeds) >= 5
    for plan in plans.values():
        cfg = plan.cfg
        assert cfg.train.nfe_budget == spec.budget_nfe and cfg.train.prompts_per_update == 8
        assert cfg.sampling.num_steps == 10 and cfg.algo.schedule == "diffusers" and cfg.effective_shift == 1.0
        assert (cfg.train.lr, cfg.train.minibatches) == (6e-5, 2)
    logs = {yaml.safe_dump({k: v for k, v in vars(p.cfg.log).items()}) for p in plans.values()}
    assert len(logs) == 1  # one held-out evaluation for every arm
    # the chunk arms are chunk-ablation's step_level and fixed arms, setting for setting
    ablation = {p.label: p for p in suite.plan_runs(suite.load_suite("chunk-ablation")) if p.seed == spec.seeds[0]}
    for ours, theirs in (("step_level", "step_level"), ("chunk_fixed", "fixed")):
        mine = harness._flatten(yaml.safe_load(yaml.safe_dump(plans[ours].cfg.to_dict())))
        other = harness._flatten(yaml.safe_load(yaml.safe_dump(ablation[theirs].cfg.to_dict())))
        differ = {k for k in set(mine) | set(other) if mine.get(k) != other.get(k)}
        assert differ <= {"run_dir", "log.eval_every"}, differ


def test_credit_arms_train_what_they_claim(first_seed):
    _, plans = first_seed
    l1 = torch.linspace(0.3, 0.05, 10).expand(4, -1).contiguous()
    sizes = {}
    for label in ("step_level", "chunk_fixed"):
        units = build_algorithm(plans[label].cfg).units(l1, 0, torch.Generator().manual_seed(0))
        sizes[label] = _chunk_sizes(units.assignment[0])
    assert sizes == {"step_level": [1] * 8, "chunk_fixed": [1, 1, 2, 4]}
    trees = {}
    for label in ("mix_grpo", "branch_grpo", "tempflow_grpo"):
        cfg = plans[label].cfg
        structure = build_algorithm(cfg).rollout_structure(cfg.train.group_size)
        trees[label] = structure(0)
        assert trees[label].leaves == cfg.train.group_size
    assert trees["mix_grpo"].forks == [0] and trees["mix_grpo"].notes["window"] == [0, 4]
    assert trees["branch_grpo"].forks == [0, 2, 4] and trees["branch_grpo"].velocities() == 53
    assert trees["tempflow_grpo"].forks == list(range(8)) and trees["tempflow_grpo"].velocities() == 10 + 6 * 44


def test_no_credit_arm_is_capped_below_its_budget(first_seed):
    """train.updates is a safety cap: it must exceed the updates the budget pays for even when every rollout
    costs its fewest model calls (a tree shares its prefixes: G·K calls per prompt overstates it)."""
    spec, plans = first_seed
    for label, plan in plans.items():
        cfg = plan.cfg
        make = build_algorithm(cfg).rollout_structure(cfg.train.group_size)
        windows = range(0, 25 * 10, 25)  # every window start of a moving structure (mix_grpo's 9, then again)
        per_prompt = min(make(u).velocities() for u in windows) if make else cfg.train.group_size * 10
        fewest_rollout = cfg.train.prompts_per_update * per_prompt
        assert cfg.train.updates > math.ceil(spec.budget_nfe / fewest_rollout), label


def test_credit_dry_run_runs_every_arm(tmp_path, capsys):
    """`genrl bench credit --dry-run` on the bundled suite's arms and dry-run settings, one seed, the evaluation
    shrunk to 4 held-out prompts of 2 steps so that it takes seconds a run."""
    from genrl.prompts import load_prompts

    eval_prompts = tmp_path / "eval_prompts.txt"
    eval_prompts.write_text("\n".join(load_prompts("shapeworld:eval")[:4]) + "\n")
    data = yaml.safe_load((suite.SUITES_DIR / "credit.yaml").read_text())
    data["overrides"] += [f"prompts.eval={eval_prompts}", "log.eval_seeds=1", "log.progress=false"]
    data["dry_run_overrides"] += ["sampling.eval_steps=2"]
    data["seeds"] = [0]
    path = tmp_path / "credit.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    assert cli.main(["bench", str(path), "--dry-run", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == list(ARMS)
    assert all(r["status"] == "finished" and r["updates"] == 1 for r in results["runs"])
    assert "| tempflow_grpo |" in capsys.readouterr().out
