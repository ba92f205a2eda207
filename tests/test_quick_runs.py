"""Quick runs: evaluation switches, the base evaluation from the cache, the progress bar, --help-config."""

import json

import pytest
from PIL import Image

from genrl import cli, config, evaluation
from genrl.trainer import Trainer

MEASURED = {"wall_s", "images_per_s", "peak_mem_mb"}  # timings and memory, not results


class CountingSampler:
    """Stands in for evaluation.sample_ode (what the trainer samples evaluations with) and counts its calls."""

    def __init__(self, sample=evaluation.sample_ode):
        self.sample, self.calls = sample, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.sample(*args, **kwargs)


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


def test_no_evaluation_at_all_when_both_switches_are_off(toy_overrides, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("evaluated although log.eval_at_start and log.eval_at_end are false")

    monkeypatch.setattr(evaluation, "sample_ode", refuse)
    assert cli.main(["train", *toy_overrides, "log.eval_at_start=false", "log.eval_at_end=false"]) == 0
    run = tmp_path / "run"
    assert not (run / "eval").exists()
    assert "final_eval" not in json.loads((run / "summary.json").read_text())
    assert [m["update"] for m in metrics(run)] == [1, 2]
    assert "eval score" not in capsys.readouterr().out


def test_the_base_evaluation_comes_from_the_cache_bit_identical(toy_overrides, tmp_path, monkeypatch, capsys):
    sampler = CountingSampler()
    monkeypatch.setattr(evaluation, "sample_ode", sampler)
    # two directories of the same name (grid titles name the run) in different folders
    Trainer(config.load(overrides=toy_overrides + [f"run_dir={tmp_path / 'a' / 'run'}"])).run()
    assert sampler.calls == 2  # base and final
    Trainer(config.load(overrides=toy_overrides + [f"run_dir={tmp_path / 'b' / 'run'}"])).run()
    assert sampler.calls == 3  # final only: the base evaluation came from the cache
    assert "cached" in capsys.readouterr().out
    a, b = tmp_path / "a" / "run" / "eval", tmp_path / "b" / "run" / "eval"
    for name in ("base.json", "base.png", "final.json", "final.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    base_a, base_b = evaluation.EvalRecord.load(a / "base.pt"), evaluation.EvalRecord.load(b / "base.pt")
    assert base_a.result == base_b.result and base_a.thumbnails.equal(base_b.thumbnails)
    assert all(base_a.scores[k].equal(base_b.scores[k]) for k in base_a.scores)
    assert metrics(tmp_path / "a" / "run") == metrics(tmp_path / "b" / "run")  # skipping the sampling changes no training
    Trainer(config.load(overrides=toy_overrides + [f"run_dir={tmp_path / 'c'}", "log.eval_cache=false"])).run()
    assert sampler.calls == 5  # switched off: evaluated again


def test_a_finished_run_has_its_grids_and_base_vs_final(toy_overrides, tmp_path):
    summary = Trainer(config.load(overrides=toy_overrides)).run()
    run = tmp_path / "run"
    for name in ("eval/base.png", "eval/final.png", "eval/base_vs_final.png", "samples/update_000002.png"):
        assert Image.open(run / name).format == "PNG", name
    final = evaluation.EvalRecord.load(run / "eval" / "final.pt")
    assert final.result == summary["final_eval"]


@pytest.mark.parametrize("progress", [True, False])
def test_evaluations_show_a_progress_bar_unless_log_progress_is_off(toy_overrides, capsys, progress):
    cfg = config.load(overrides=toy_overrides + [f"log.progress={str(progress).lower()}", "log.eval_cache=false"])
    Trainer(cfg).run()
    err = capsys.readouterr().err
    assert ("eval base" in err and "eval final" in err) == progress
    assert progress or "eval" not in err


def test_help_config_shows_the_bundled_configs_values(capsys):
    assert cli.main(["train", "--help-config"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if line and "." in line.split()[0]}
    bundled = config.load()
    assert rows["train.updates"] == repr(bundled.train.updates) == "200"
    assert rows["train.lr"] == repr(bundled.train.lr) == "6e-05"
    assert rows["log.eval_seeds"] == "16" and rows["reward.name"] == "'multi'"
    assert config.Config().train.updates != bundled.train.updates  # not the dataclass default
    assert cli.main(["train", "--help-config", "train.updates=7"]) == 0
    assert any(line.split()[:2] == ["train.updates", "7"] for line in capsys.readouterr().out.splitlines())


def test_benchmarks_always_evaluate_before_and_after():
    from genrl.benchmarks import suite
    from genrl.config import ConfigError

    spec = suite.load_suite("smoke")
    assert all(p.cfg.log.eval_at_start and p.cfg.log.eval_at_end for p in suite.plan_runs(spec))
    with pytest.raises(ConfigError, match="log.eval_at_end"):
        suite.plan_runs(spec, overrides=["log.eval_at_end=false"])
