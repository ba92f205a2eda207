"""The benchmark harness on the toy model: equal budgets, results, table, plots, resume, the CI maths, the CLI."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from genrl import cli, trainer
from genrl.benchmarks import harness, stats, suite
from genrl.config import ConfigError

BUDGET = 200  # toy: 8 trajectories x 6 steps = 48 rollout NFE per update, plus training forwards


@pytest.fixture(autouse=True)
def _one_thread():
    """The toy's convolutions are tiny: a second thread only adds contention on a shared 2-core machine (5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy_suite(tmp_path, toy_overrides):
    """2 algorithms x 2 seeds on the toy model, a few updates each."""
    shared = [o for o in toy_overrides if not o.startswith(("run_dir=", "train.updates=", "prompts."))]
    prompts = tmp_path / "bench_prompts.txt"  # not ShapeWorld grammar, so evaluation scores with the toy reward
    prompts.write_text("a bright day\na dark night\n")
    shared += [f"prompts.train={prompts}", f"prompts.eval={prompts}"]
    path = tmp_path / "toy_suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy", "description": "toy model, brightness reward",
        "overrides": shared + ["log.sample_every=0", "log.checkpoint_every=2"],
        "algorithms": {"flow_grpo": {}, "chunk_grpo": {"grouping": "per_step"}},
        "seeds": [0, 1], "budget_nfe": BUDGET, "eval_every": 1, "target_score": 0.0,
        "dry_run_overrides": ["sampling.eval_steps=2"],
    }, sort_keys=False))
    return path


def run(toy_suite, out, **kw):
    return harness.run_suite(toy_suite, out, **kw)


def test_suite_runs_every_algorithm_and_seed_under_one_budget(toy_suite, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    results = run(toy_suite, out)
    assert [(r["label"], r["seed"]) for r in results["runs"]] == [
        ("flow_grpo", 0), ("chunk_grpo", 0), ("flow_grpo", 1), ("chunk_grpo", 1)]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["suite"]["budget_nfe"] == BUDGET and on_disk["suite"]["seeds"] == [0, 1]
    assert {"commit", "dirty"} <= set(on_disk["git"])
    assert {"cpu_count", "torch_version", "device", "date"} <= set(on_disk["machine"])
    for r in on_disk["runs"]:
        assert r["status"] == "finished"
        metrics = [json.loads(x) for x in (out / "runs" / f"{r['label']}__{r['seed']}" / "metrics.jsonl").read_text().splitlines()]
        per_update = max(b["nfe"] - a["nfe"] for a, b in zip([{"nfe": 0}] + metrics, metrics))
        assert BUDGET <= r["nfe"] < BUDGET + per_update  # stopped by the budget, within one update of it
        curve = r["curve"]
        assert curve[0]["nfe"] == 0 and curve[0]["score"] == r["base_score"]
        assert curve[-1]["nfe"] == r["nfe"] and curve[-1]["score"] == r["final_score"]
        assert len(curve) == len(metrics) + 1  # base, every update but the last (eval_every=1), final
        assert all(a["nfe"] < b["nfe"] and a["wall_s"] <= b["wall_s"] for a, b in zip(curve, curve[1:]))
        assert r["nfe_to_target"] == 0 and r["wall_s_to_target"] == 0.0  # brightness >= 0 from the start
        assert r["images_per_s"] > 0 and r["peak_mem_mb"] > 0
    assert on_disk["complete"] and on_disk["planned_runs"] == 4
    agg = on_disk["aggregate"]["flow_grpo"]
    scores = [r["final_score"] for r in on_disk["runs"] if r["label"] == "flow_grpo"]
    lo, hi = stats.bootstrap_ci(scores)
    assert agg["final_scores"] == scores and agg["final_mean"] == pytest.approx(sum(scores) / 2)
    assert agg["final_ci95"] == pytest.approx([lo, hi]) and agg["final_iqm"] is None  # 2 seeds: no IQM
    pair = on_disk["comparison"]["pairs"][0]
    assert pair["seeds"] == [0, 1] and {"ci95", "p", "p_holm", "mdd"} <= set(pair)
    table = (out / "table.md").read_text()
    assert f"{agg['final_mean']:.3f} [{lo:.3f}, {hi:.3f}]" in table
    assert "**" in table and "Noise:" in table and ("Within noise" in table or "beyond noise" in table.lower())
    for name in ("score_vs_nfe.png", "score_vs_wall.png", "final_scores.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # A second call reruns nothing: no trainer is built, no summary rewritten, the same numbers reported.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    built = []

    class CountingTrainer(trainer.Trainer):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(trainer, "Trainer", CountingTrainer)
    again = run(toy_suite, out)
    assert not built and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert [r["final_score"] for r in again["runs"]] == [r["final_score"] for r in results["runs"]]

    # A run killed after a checkpoint resumes from it and ends exactly where the uninterrupted run did.
    run_dir = out / "runs" / "chunk_grpo__1"
    expected = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "summary.json").unlink()
    earlier = sorted(p.name for p in (run_dir / "checkpoints").glob("update_*"))[0]
    (run_dir / "checkpoints" / "latest").write_text(earlier + "\n")
    resumed = run(toy_suite, out)
    assert len(built) == 1
    strip = lambda text: [{k: v for k, v in json.loads(x).items() if k not in ("wall_s", "images_per_s", "peak_mem_mb")}
                          for x in text.splitlines()]  # noqa: E731
    assert strip((run_dir / "metrics.jsonl").read_text()) == strip(expected)
    assert resumed["runs"][3]["final_score"] == results["runs"][3]["final_score"]


def test_dry_run_is_one_update_per_run_and_a_changed_config_is_refused(toy_suite, tmp_path):
    out = tmp_path / "dry"
    results = run(toy_suite, out, dry_run=True)
    assert all(r["updates"] == 1 for r in results["runs"]) and results["dry_run"]
    config = yaml.safe_load((out / "runs" / "flow_grpo__0" / "config.yaml").read_text())
    assert config["sampling"]["eval_steps"] == 2 and config["log"]["eval_seeds"] == 1
    with pytest.raises(ConfigError, match="different config"):
        run(toy_suite, out)  # a full run must not reuse dry-run results


def test_suite_errors_name_the_key(toy_suite, tmp_path):
    with pytest.raises(ConfigError, match="benchmark controls"):
        run(toy_suite, tmp_path / "x", overrides=["train.updates=5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithms: {flow_grpo: {}}\nbudget_nfe: 0\n")
    with pytest.raises(ConfigError, match="budget_nfe=0"):
        suite.load_suite(bad)
    bad.write_text("algorithms: {flow_grpo: {}}\nbudget_nfe: 10\nbudget: 3\n")
    with pytest.raises(ConfigError, match="unknown suite key"):
        suite.load_suite(bad)
    with pytest.raises(ConfigError, match="not found"):
        suite.load_suite("no-such-suite")


def test_time_left_counts_a_resumed_run_as_a_whole_run():
    # resumed at update 60 of 120: 300 s in this invocation, 590 s of training over both
    assert harness._run_cost(elapsed=300.0, wall_s=590.0) == 590.0
    # a run from the start: its elapsed time also holds the evaluations, which wall_s leaves out
    assert harness._run_cost(elapsed=640.0, wall_s=590.0) == 640.0


def test_bundled_suites_resolve():
    grpo = {"flow_grpo", "dance_grpo", "chunk_grpo"}
    for name, algorithms, seeds in (("smoke", grpo, [0, 1]), ("tiny", grpo | {"diffusion_nft", "awm"}, [0, 1, 2, 3, 4])):
        spec = suite.load_suite(name)
        plans = suite.plan_runs(spec)
        assert {p.algorithm for p in plans} == algorithms and spec.seeds == seeds
        assert all(p.cfg.train.nfe_budget == spec.budget_nfe for p in plans)
        assert len({yaml.safe_dump(p.cfg.log.__dict__) for p in plans}) == 1  # the same eval for every run


def test_cli_bench_returns_zero(toy_suite, tmp_path, capsys):
    assert cli.main(["bench", str(toy_suite), "--out", str(tmp_path / "cli"), "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert "[1/4] flow_grpo seed 0" in printed.out + printed.err
    assert "| flow_grpo |" in printed.out
    assert (tmp_path / "cli" / "table.md").exists()


# ------------------------------------------------------------------------------------- chunk-ablation suite

ABLATION_ARMS = ("step_level", "uniform_2", "uniform_4", "sequence", "fixed", "dynamic", "fixed_ws")


def _chunk_sizes(row: torch.Tensor) -> list[int]:
    """Sizes of the trained chunks of one trajectory, from its [K] unit assignment (−1: not trained)."""
    units = row[row >= 0].tolist()
    return [units.count(u) for u in sorted(set(units))]


def test_chunk_ablation_arms_are_the_papers_partitions_of_8_trained_steps():
    from genrl.build import build_algorithm

    spec = suite.load_suite("chunk-ablation")
    plans = suite.plan_runs(spec)
    assert tuple(spec.algorithms) == ABLATION_ARMS and len(spec.seeds) >= 5
    assert all(p.cfg.train.nfe_budget == spec.budget_nfe and p.algorithm == "chunk_grpo" for p in plans)
    first = {p.label: p for p in plans if p.seed == spec.seeds[0]}
    # the arms differ in the timestep grouping only
    flat = {k: harness._flatten(yaml.safe_load(yaml.safe_dump(p.cfg.to_dict()))) for k, p in first.items()}
    differing = {key for cfg in flat.values() for key in cfg if cfg[key] != flat["fixed"].get(key)}
    assert differing - {"run_dir"} and all(k.startswith(("chunk_grpo.grouping", "chunk_grpo.unit_"))
                                           for k in differing - {"run_dir"})
    # a decaying L1rel profile, as rollouts show: large steps first
    jitter = 0.01 * torch.rand(6, 10, generator=torch.Generator().manual_seed(0))
    l1 = torch.linspace(0.3, 0.05, 10).expand(6, -1) + jitter
    sizes = {}
    for label, plan in first.items():
        algorithm = build_algorithm(plan.cfg)
        assert algorithm.stochastic_steps().tolist() == [True] * 8 + [False] * 2
        units = algorithm.units(l1, 0, torch.Generator().manual_seed(0))
        sizes[label] = [_chunk_sizes(row) for row in units.assignment]
    assert sizes["step_level"][0] == [1] * 8 and sizes["uniform_2"][0] == [2, 2, 2, 2]
    assert sizes["uniform_4"][0] == [4, 4] and sizes["sequence"][0] == [8] and sizes["fixed"][0] == [1, 1, 2, 4]
    assert all(sum(s) == 8 and max(s) <= 4 for s in sizes["dynamic"])
    # weighted chunk sampling: 2 of the 4 fixed chunks of each trajectory
    ws = build_algorithm(first["fixed_ws"].cfg).units(l1, 0, torch.Generator().manual_seed(0))
    for row in ws.assignment:
        assert len(set(row[row >= 0].tolist())) == 2 and set(_chunk_sizes(row)) <= {1, 2, 4}


def test_one_seed_gives_every_arm_the_same_prompts_rollout_noises_and_eval_noises():
    from genrl import evaluation, keys
    from genrl.build import build

    plans = suite.plan_runs(suite.load_suite("chunk-ablation"))
    draws = {}
    for plan in [p for p in plans if p.seed in (0, 1) and p.label in ("step_level", "sequence", "fixed_ws")]:
        env = build(plan.cfg).env
        resets = [env.reset() for _ in range(3)]
        draws[plan.label, plan.seed] = [
            (td.get(keys.PROMPT_INDEX).tolist(), td.get(keys.NOISE_SEED).tolist(), td.get(keys.STEP_SEED).tolist(),
             td.get(keys.LATENTS)) for td in resets]
    for seed in (0, 1):
        ref = draws["step_level", seed]
        for label in ("sequence", "fixed_ws"):
            for (p, n, s, x), (p2, n2, s2, x2) in zip(ref, draws[label, seed]):
                assert p == p2 and n == n2 and s == s2 and torch.equal(x, x2)
    assert draws["step_level", 0][0][1] != draws["step_level", 1][0][1]  # another seed, other noises
    # evaluation noises depend on the prompt alone: the same for every run
    prompts = ["a red circle", "a blue square"]
    assert evaluation.evaluation_seeds(prompts, 2) == evaluation.evaluation_seeds(prompts, 2)


def _shrunk_ablation(tmp_path, arms=ABLATION_ARMS, seeds=(0,)):
    """The bundled chunk-ablation suite with its arms and settings, shrunk to seconds a run: 4 trajectories per
    update, 3 updates, evaluation on 4 of the held-out prompts, one image each with 2 ODE steps."""
    from genrl.prompts import load_prompts

    eval_prompts = tmp_path / "eval_prompts.txt"
    eval_prompts.write_text("\n".join(load_prompts("shapeworld:eval")[:4]) + "\n")
    data = yaml.safe_load((suite.SUITES_DIR / "chunk-ablation.yaml").read_text())
    data["overrides"] += ["train.prompts_per_update=2", "train.group_size=2", "train.minibatches=1",
                          f"prompts.eval={eval_prompts}", "sampling.eval_steps=2", "log.eval_seeds=1",
                          "log.checkpoint_every=1", "log.progress=false"]
    data["algorithms"] = {k: v for k, v in data["algorithms"].items() if k in arms}
    if data.get("reference") not in data["algorithms"]:  # the reference arm (step_level) may be left out
        data.pop("reference", None)
    data.update(seeds=list(seeds), budget_nfe=150, eval_every=2)  # 72 NFE per update (56 with ws): 3 updates
    data.pop("dry_run_overrides")
    path = tmp_path / f"ablation_{len(arms)}x{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _metrics(run_dir):
    timing = ("wall_s", "images_per_s", "peak_mem_mb")
    return [{k: v for k, v in json.loads(x).items() if k not in timing}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_shrunk_chunk_ablation_stops_on_sigterm_and_resumes(tmp_path, monkeypatch):
    import signal

    path, out = _shrunk_ablation(tmp_path), tmp_path / "bench"
    handler = signal.getsignal(signal.SIGTERM)
    real_iteration = trainer.Trainer.iteration

    def iteration_then_sigterm(self):
        metrics = real_iteration(self)
        if self.run_dir.name == "fixed__0" and self.progress.update == 2:
            signal.raise_signal(signal.SIGTERM)  # `kill PID` from outside, in the middle of the 5th run
        return metrics

    monkeypatch.setattr(trainer.Trainer, "iteration", iteration_then_sigterm)
    with pytest.raises(KeyboardInterrupt):
        harness.run_suite(path, out)
    partial = json.loads((out / "results.json").read_text())
    assert not partial["complete"] and partial["planned_runs"] == 7
    assert [(r["label"], r["status"]) for r in partial["runs"]] == [
        ("step_level", "finished"), ("uniform_2", "finished"), ("uniform_4", "finished"), ("sequence", "finished"),
        ("fixed", "interrupted")]
    assert "in progress: 4 of 7 runs finished" in (out / "table.md").read_text()
    interrupted = out / "runs" / "fixed__0"
    assert (interrupted / "checkpoints" / "latest").read_text().strip() == "update_000002"
    assert signal.getsignal(signal.SIGTERM) is handler  # the suite put the handler back

    monkeypatch.setattr(trainer.Trainer, "iteration", real_iteration)
    built = []

    class CountingTrainer(trainer.Trainer):
        def __init__(self, *a, **k):
            built.append(Path(k["run_dir"]).name)
            super().__init__(*a, **k)

    monkeypatch.setattr(trainer, "Trainer", CountingTrainer)
    results = harness.run_suite(path, out)
    assert built == ["fixed__0", "dynamic__0", "fixed_ws__0"]  # the 4 finished runs are kept, not rebuilt
    assert results["complete"] and all(r["status"] == "finished" for r in results["runs"])
    assert [m["update"] for m in _metrics(interrupted)] == [1, 2, 3]
    assert all(150 <= r["nfe"] < 150 + 72 for r in results["runs"])
    table = (out / "table.md").read_text()
    assert "in progress" not in table and "| fixed_ws |" in table and "seeds to detect Δ" in table

    # the resumed run ends exactly where an uninterrupted one does
    alone = harness.run_suite(_shrunk_ablation(tmp_path, arms=("fixed",), seeds=(0,)), tmp_path / "alone")
    assert _metrics(interrupted) == _metrics(tmp_path / "alone" / "runs" / "fixed__0")
    assert alone["runs"][0]["final_score"] == results["runs"][4]["final_score"]


@pytest.mark.slow
def test_runs_side_by_side_match_one_by_one_and_resume_after_ctrl_c(tmp_path):
    import os
    import signal
    import threading

    path = _shrunk_ablation(tmp_path, arms=("fixed_ws",), seeds=(0, 1))  # two runs started together
    reference = harness.run_suite(path, tmp_path / "one_by_one")
    out = tmp_path / "side_by_side"

    def ctrl_c_at_first_checkpoint():
        while not list((out / "runs").glob("*/checkpoints/latest")):
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_at_first_checkpoint, daemon=True).start()
    assert cli.main(["bench", str(path), "--out", str(out), "--jobs", "2"]) == 130  # interrupted
    partial = json.loads((out / "results.json").read_text())
    assert not partial["complete"] and sum(r["status"] == "finished" for r in partial["runs"]) < 2
    results = harness.run_suite(path, out, jobs=2)
    assert results["complete"] and results["jobs"] == 2
    assert [(r["label"], r["seed"]) for r in results["runs"]] == [(r["label"], r["seed"]) for r in reference["runs"]]
    for ours, theirs in zip(results["runs"], reference["runs"]):
        assert ours["status"] == "finished" and ours["nfe"] == theirs["nfe"]
        assert ours["final_score"] == theirs["final_score"]  # one thread each, in a child or here
        assert _metrics(Path(ours["run_dir"])) == _metrics(Path(theirs["run_dir"]))
    with pytest.raises(ConfigError, match="--jobs=0"):
        harness.run_suite(path, out, jobs=0)
    with pytest.raises(ConfigError, match="different config"):  # refused before any process starts
        harness.run_suite(path, out, overrides=["train.lr=1e-3"], jobs=2)
