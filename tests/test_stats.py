"""The benchmark statistics against closed forms and properties, and the report built from a fake results folder."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from genrl.benchmarks import report, stats, suite
from genrl.config import ConfigError


# ------------------------------------------------------------------------------------------ statistics


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # (3 + 4 + 5 + 6) / 4
    assert stats.iqm([100, 2, 1, 3, 4]) == pytest.approx(3.0)  # ⌊5/4⌋ = 1 trimmed each side: (2 + 3 + 4) / 3
    assert stats.iqm([0.1, 0.1, 0.9, 0.5, 0.3, 0.2]) == pytest.approx((0.1 + 0.2 + 0.3 + 0.5) / 4)
    assert stats.iqm([1, 2, 3, 4]) is None  # below 5 seeds the middle half is one or two values


def test_expanded_level_closed_form():
    # n = 5: t(0.975, 4) = 2.7764, × √(5/4) = 3.1042, 1 − 2Φ(−3.1042) = 0.99809
    assert stats.expanded_level(0.95, 5) == pytest.approx(0.99809, abs=1e-5)
    assert stats.expanded_level(0.95, 10**6) == pytest.approx(0.95, abs=1e-4)  # large n: the plain level
    levels = [stats.expanded_level(0.95, n) for n in (3, 5, 10, 20, 100)]
    assert levels == sorted(levels, reverse=True)


def test_bootstrap_interval_of_a_mean():
    rng = np.random.default_rng(1)
    big = rng.normal(2.0, 1.0, 400)  # large n: the bootstrap interval ≈ mean ± 1.96 s/√n
    lo, hi = stats.bootstrap_ci(big)
    half = 1.96 * big.std(ddof=1) / math.sqrt(len(big))
    assert lo == pytest.approx(big.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(big.mean() + half, abs=0.15 * half)
    five = [0.31, 0.35, 0.29, 0.40, 0.33]  # small n: the expanded interval is close to the t interval
    lo, hi = stats.bootstrap_ci(five)
    t_half = sps.t.ppf(0.975, 4) * np.std(five, ddof=1) / math.sqrt(5)
    assert hi - lo == pytest.approx(2 * t_half, rel=0.25)
    plain = stats.bootstrap_ci(five, expand=False)
    assert plain[1] - plain[0] < hi - lo
    assert stats.bootstrap_ci(five) == (lo, hi)  # seeded: a rebuilt report shows the same interval
    assert stats.bootstrap_ci([0.4]) is None
    assert stats.bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_at_five_seeds():
    rng = np.random.default_rng(0)
    trials = 300
    samples = rng.normal(0.0, 1.0, (trials, 5))
    expanded = sum(lo <= 0.0 <= hi for lo, hi in (stats.bootstrap_ci(x, resamples=2000) for x in samples))
    plain = sum(lo <= 0.0 <= hi for lo, hi in (stats.bootstrap_ci(x, resamples=2000, expand=False) for x in samples))
    # measured on 1,000 trials: 0.92 expanded, 0.84 plain (nominal 0.95); a 300-trial proportion has an sd of 0.016
    assert 0.88 <= expanded / trials <= 0.99
    assert plain / trials < expanded / trials - 0.04


def test_paired_test_closed_form_for_two_pairs():
    # d = [1, 3]: mean 2, sd √2, t = 2 / (√2 / √2) = 2; with 1 df the t distribution is Cauchy:
    # p = 1 − (2/π)·atan(2)
    d = stats.paired_difference([1.0, 3.0], [0.0, 0.0])
    assert d["mean"] == 2.0 and d["sd"] == pytest.approx(math.sqrt(2))
    assert d["t"] == pytest.approx(2.0) and d["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0))
    assert stats.paired_difference([1.0], [0.0]) is None
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1.0, 2.0], [1.0])
    same = stats.paired_difference([0.5, 0.6], [0.4, 0.5])  # identical differences: no spread, p = 0
    assert same["p"] == 0.0 and same["mdd"] == 0.0


def test_pairing_detects_a_shift_that_seed_to_seed_spread_hides():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0.0, 0.05, 6)  # how easy a seed's prompts and noises are: shared by both arms
    a = 0.40 + seed_effect + rng.normal(0.0, 0.003, 6)
    b = 0.39 + seed_effect + rng.normal(0.0, 0.003, 6)  # 0.01 worse
    paired = stats.paired_difference(b, a)
    assert paired["p"] < 0.01 and paired["ci95"][1] < 0.0 < -paired["ci95"][0]
    assert paired["mean"] == pytest.approx(-0.01, abs=0.005)
    assert sps.ttest_ind(a, b, equal_var=False).pvalue > 0.5  # unpaired, the same data says nothing
    assert paired["mdd"] < 0.01 < paired["mdd"] * 3


def test_power_is_alpha_at_no_effect_and_grows_with_effect_and_seeds():
    assert stats.paired_t_power(0.0, 5) == pytest.approx(0.05, abs=1e-9)
    assert stats.paired_t_power(1.0, 5) < stats.paired_t_power(2.0, 5) < stats.paired_t_power(2.0, 10)


def test_minimum_detectable_difference():
    # large n: the normal approximation (z(0.975) + z(0.8))·sd/√n = 2.8016·sd/√n
    assert stats.min_detectable_difference(1.0, 400) == pytest.approx(2.8016 / 20, rel=0.01)
    assert stats.min_detectable_difference(0.02, 5) == pytest.approx(2 * stats.min_detectable_difference(0.01, 5))
    assert stats.min_detectable_difference(1.0, 1) is None
    # the definition, re-checked by simulation: the paired t-test at α = 0.05 rejects 80% of the time
    n, sd = 5, 1.0
    mdd = stats.min_detectable_difference(sd, n)
    d = np.random.default_rng(7).normal(mdd, sd, (40_000, n))
    rejected = sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    # seeds needed is its inverse
    assert stats.seeds_needed(mdd * 1.0001, sd) == n
    assert stats.seeds_needed(mdd * 0.9, sd) > n
    assert stats.seeds_needed(1e-6, 1.0) is None and stats.seeds_needed(0.0, 1.0) is None


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 → 3·0.01 = 0.03, 2·0.03 = 0.06, max(1·0.04, 0.06) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


# ------------------------------------------------------------------------------------------ the report


def _fake_results(scores: dict[str, list[float]], seeds: list[int]) -> dict:
    runs = []
    for label, values in scores.items():
        for seed, value in zip(seeds, values):
            if value is None:
                runs.append({"label": label, "algorithm": "chunk_grpo", "seed": seed, "status": "interrupted",
                             "run_dir": f"runs/{label}__{seed}", "elapsed_s": None})
                continue
            runs.append({
                "label": label, "algorithm": "chunk_grpo", "seed": seed, "status": "finished",
                "run_dir": f"runs/{label}__{seed}", "elapsed_s": 10.0, "final_score": value, "base_score": 0.35,
                "final_per_category": None, "updates": 20, "nfe": 1000, "wall_s": 9.0,
                "curve": [{"update": 0, "nfe": 0, "wall_s": 0.0, "score": 0.35},
                          {"update": 20, "nfe": 1000, "wall_s": 9.0, "score": value}],
                "nfe_to_target": None, "wall_s_to_target": None, "images_per_s": 3.0, "peak_mem_mb": 700.0})
    return {"suite": {"name": "fake", "description": "synthetic scores", "base": "shapeworld", "overrides": [],
                      "algorithms": {k: {} for k in scores}, "seeds": seeds, "budget_nfe": 1000, "eval_every": 0,
                      "target_score": None, "dry_run_overrides": [], "path": "fake.yaml"},
            "dry_run": False, "cli_overrides": [], "git": {"commit": "0123456789abcdef", "dirty": False},
            "machine": {"cpu_count": 2, "torch_version": "2.13.0", "device": "cpu", "date": "2026-11-29"},
            "suite_wall_s": 1.0, "runs": runs}


def test_report_of_a_fake_results_folder(tmp_path):
    seed_effect = [0.00, 0.04, -0.03, 0.02, -0.05]
    scores = {
        "far": [0.40 + e - 0.03 + j for e, j in zip(seed_effect, [0.001, -0.002, 0.0, 0.002, -0.001])],
        "best": [0.40 + e for e in seed_effect],
        "near": [0.40 + e + j for e, j in zip(seed_effect, [-0.004, 0.003, -0.002, 0.001, -0.003])],
    }
    (tmp_path / "results.json").write_text(json.dumps(_fake_results(scores, [0, 1, 2, 3, 4])))
    assert report.main([str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    cmp, agg = results["comparison"], results["aggregate"]
    assert cmp["best"] == "best"
    pairs = {p["other"]: p for p in cmp["pairs"]}
    direct = stats.paired_difference(scores["far"], scores["best"])
    assert pairs["far"]["diff"] == pytest.approx(-0.03) and pairs["far"]["p"] == pytest.approx(direct["p"])
    assert pairs["far"]["mdd"] == pytest.approx(direct["mdd"]) and pairs["far"]["ci95"] == pytest.approx(direct["ci95"])
    assert pairs["far"]["beyond_noise"] and not pairs["near"]["beyond_noise"]
    assert pairs["far"]["p"] < pairs["near"]["p"]  # Holm: the smaller p times 2, the larger at least that
    assert pairs["far"]["p_holm"] == pytest.approx(2 * pairs["far"]["p"])
    assert pairs["near"]["p_holm"] == pytest.approx(min(1.0, max(2 * pairs["far"]["p"], pairs["near"]["p"])))
    assert agg["best"]["final_iqm"] == pytest.approx(stats.iqm(scores["best"]))
    assert agg["best"]["final_ci95"] == pytest.approx(list(stats.bootstrap_ci(scores["best"])))

    table = (tmp_path / "table.md").read_text()
    assert "IQM [95% CI]" in table and "| **best** | 5 |" in table
    assert f"{pairs['far']['diff']:+.3f}" in table and f"{pairs['far']['mdd']:.3f}" in table
    assert "Partly within noise: best is ahead of far beyond noise, but not of near" in table
    assert f"a true gap of {pairs['near']['mdd']:.3f}" in table
    for name in ("final_scores.png", "score_vs_nfe.png", "score_vs_wall.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_report_pairs_only_shared_seeds_and_omits_iqm_below_five(tmp_path):
    scores = {"a": [0.5, 0.6, 0.7], "b": [0.42, None, 0.6]}  # b's seed 1 did not finish
    (tmp_path / "results.json").write_text(json.dumps(_fake_results(scores, [0, 1, 2])))
    results = report.rebuild(tmp_path)
    pair = results["comparison"]["pairs"][0]
    assert pair["seeds"] == [0, 2] and pair["n"] == 2 and pair["diff"] == pytest.approx(-0.09)
    # d = [−0.08, −0.10]: t = −0.09 / (0.01414 / √2) = −9, 1 df: p = 1 − (2/π)·atan(9) = 0.0705
    assert pair["p"] == pytest.approx(1 - 2 / math.pi * math.atan(9.0)) and not pair["beyond_noise"]
    table = (tmp_path / "table.md").read_text()
    assert "IQM" not in table and "Not finished: b seed 1 (interrupted)" in table
    assert "Within noise: a has the best mean" in table and "with 2 seeds a true gap of" in table


def test_cost_to_reach_the_references_final_score(tmp_path):
    """The seed-mean curve, linear between the union of the seeds' eval points, crosses the reference's final mean
    where the closed form says; an algorithm that never gets there is reported so, not extrapolated."""
    results = _fake_results({"ref": [0.5, 0.6], "fast": [0.7, 0.7], "slow": [0.45, 0.5]}, [0, 1])
    points = {("ref", 0): [(0, 0.3), (500, 0.4), (1000, 0.5)], ("ref", 1): [(0, 0.3), (500, 0.5), (1000, 0.6)],
              ("fast", 0): [(0, 0.3), (250, 0.5), (1000, 0.7)], ("fast", 1): [(0, 0.3), (500, 0.7), (1000, 0.7)],
              ("slow", 0): [(0, 0.3), (1000, 0.45)], ("slow", 1): [(0, 0.3), (1000, 0.5)]}
    for run in results["runs"]:
        seconds_per_nfe = 0.01 if run["seed"] == 0 else 0.02  # the seeds end at different times
        run["curve"] = [{"update": i, "nfe": n, "wall_s": n * seconds_per_nfe, "score": s}
                        for i, (n, s) in enumerate(points[run["label"], run["seed"]])]
    results["suite"]["reference"] = "ref"
    (tmp_path / "results.json").write_text(json.dumps(results))
    ref = report.rebuild(tmp_path)["reference"]
    assert ref["label"] == "ref" and ref["score"] == pytest.approx(0.55)
    # ref's mean curve: 0.3, 0.45, 0.55 at 0, 500, 1000: it reaches its own final mean at the end.
    assert ref["algorithms"]["ref"]["nfe"] == pytest.approx(1000) and ref["algorithms"]["ref"]["nfe_ratio"] == 1
    assert ref["algorithms"]["ref"]["wall_s"] == pytest.approx((10 + 20) / 2)  # the seeds' times at 1000 NFE
    # fast, on the grid {0, 250, 500, 1000}: seed 0 at 500 is 0.5 + 0.2·250/750, seed 1 at 250 is 0.3 + 0.4/2;
    # mean 0.5 at 250 and (0.5 + 0.2/3 + 0.7)/2 at 500, crossing 0.55 on the segment between them.
    at_500 = (0.5 + 0.2 / 3 + 0.7) / 2
    crossing = 250 + (0.55 - 0.5) * 250 / (at_500 - 0.5)
    fast = ref["algorithms"]["fast"]
    assert fast["nfe"] == pytest.approx(crossing) and fast["wall_s"] == pytest.approx(crossing * 0.015)
    assert fast["nfe_ratio"] == pytest.approx(1000 / crossing) and fast["seeds_reaching"] == 2
    slow = ref["algorithms"]["slow"]
    assert slow["nfe"] is None and slow["nfe_ratio"] is None and slow["seeds_reaching"] == 0
    table = (tmp_path / "table.md").read_text()
    assert "Cost to reach ref's final score (0.550" in table
    assert f"| fast | {crossing:,.0f} | {1000 / crossing:.2f} |" in table
    assert "| slow | not reached within the budget |" in table
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithms: {flow_grpo: {}}\nbudget_nfe: 10\nreference: awm\n")
    with pytest.raises(ConfigError, match="reference='awm'.*flow_grpo"):
        suite.load_suite(bad)

def test_every_arm_is_paired_against_the_reference(tmp_path):
    """Beside "behind the best?", a suite with a reference answers "better than the reference?": each arm's paired
    difference to it, with scipy's paired t-test Holm-corrected over these comparisons only."""
    seed_effect = np.array([0.00, 0.04, -0.03, 0.02, -0.05])
    jitter = np.array([0.002, -0.003, 0.001, 0.003, -0.002])
    scores = {"ref": 0.40 + seed_effect, "up": 0.45 + seed_effect + jitter, "down": 0.37 + seed_effect - jitter,
              "same": 0.40 + seed_effect + 3 * jitter}
    results = _fake_results({k: v.tolist() for k, v in scores.items()}, [0, 1, 2, 3, 4])
    results["suite"]["reference"] = "ref"
    (tmp_path / "results.json").write_text(json.dumps(results))
    ref = report.rebuild(tmp_path)["reference"]
    pairs = {p["other"]: p for p in ref["pairs"]}
    assert set(pairs) == {"up", "down", "same"} and all(p["reference"] == "ref" for p in pairs.values())
    raw = {k: sps.ttest_rel(scores[k], scores["ref"]).pvalue for k in pairs}
    order = sorted(raw, key=raw.get)  # Holm by hand: the i-th smallest times (3 − i), kept monotone
    expected, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (3 - i) * raw[k]))
        expected[k] = running
    for k, p in pairs.items():
        assert p["diff"] == pytest.approx(float(np.mean(scores[k] - scores["ref"])))
        assert p["p"] == pytest.approx(raw[k]) and p["p_holm"] == pytest.approx(expected[k])
    assert pairs["up"]["beyond_noise"] and pairs["down"]["beyond_noise"] and not pairs["same"]["beyond_noise"]
    assert ref["verdict"].startswith("Above ref beyond noise: up; below ref beyond noise: down; within noise of ref: same")
    table = (tmp_path / "table.md").read_text()
    assert "| Δ vs ref, paired [95% CI] | p (paired t, Holm) |" in table and "**Against ref:** Above ref" in table
    assert f"{pairs['down']['diff']:+.3f} [" in table



def test_report_cli_names_a_folder_without_results_in_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.json" in err[0] and "missing" in err[0]
    with pytest.raises(SystemExit) as asked:  # --help is an option, not a folder named "--help"
        report.main(["--help"])
    assert asked.value.code == 0 and "results.json" in capsys.readouterr().out
