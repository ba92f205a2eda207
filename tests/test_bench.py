"""The benchmark harness on the toy model: equal budgets, results, table, plots, resume, the CI maths, the CLI."""

import json
import math

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
    agg = on_disk["aggregate"]["flow_grpo"]
    scores = [r["final_score"] for r in on_disk["runs"] if r["label"] == "flow_grpo"]
    mean, half = stats.mean_ci(scores)
    assert agg["final_scores"] == scores and agg["final_mean"] == pytest.approx(mean)
    assert agg["final_ci95"] == pytest.approx(half)
    table = (out / "table.md").read_text()
    assert f"{mean:.3f} ± {half:.3f}" in table
    assert "**" in table and "Noise:" in table and ("Within noise" in table or "beyond noise" in table.lower())
    for name in ("score_vs_nfe.png", "score_vs_wall.png"):
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


def test_bundled_suites_resolve():
    for name in ("smoke", "tiny"):
        spec = suite.load_suite(name)
        plans = suite.plan_runs(spec)
        assert {p.algorithm for p in plans} == {"flow_grpo", "dance_grpo", "chunk_grpo"}
        assert all(p.cfg.train.nfe_budget == spec.budget_nfe for p in plans)
        assert len({yaml.safe_dump(p.cfg.log.__dict__) for p in plans}) == 1  # the same eval for every run


def test_confidence_interval_and_welch_maths():
    mean, half = stats.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(0.975, 10) == pytest.approx(2.228, abs=1e-3)
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.960, abs=1e-3)
    assert stats.mean_ci([0.5]) == (0.5, None)
    test = stats.welch_test([1, 2, 3], [4, 5, 6, 7])  # scipy.stats.ttest_ind(equal_var=False): p = 0.01008
    assert test["t"] == pytest.approx(-4.0415, abs=1e-4) and test["p"] == pytest.approx(0.01008, abs=1e-4)
    assert stats.welch_test([1, 1], [1, 1])["p"] == 1.0


def test_cli_bench_returns_zero(toy_suite, tmp_path, capsys):
    assert cli.main(["bench", str(toy_suite), "--out", str(tmp_path / "cli"), "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert "[1/4] flow_grpo seed 0" in printed.out + printed.err
    assert "| flow_grpo |" in printed.out
    assert (tmp_path / "cli" / "table.md").exists()
