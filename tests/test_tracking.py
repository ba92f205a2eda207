"""log.trackers: namespaced metrics, the config and the grids in TensorBoard (read back from the event files),
metrics.jsonl unchanged, and a missing tracker package as a one-line error before anything is written."""

import importlib.util
import json

import pytest
import yaml

from genrl import cli, tracking
from genrl.config import ConfigError

pytest.importorskip("tensorboard", reason="the test extra installs tensorboard: pip install -e '.[test]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_events(directory):
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metric_names_are_namespaced_and_lists_left_out():
    metrics = {"update": 3, "reward_mean": 0.5, "loss_policy": -0.1, "loss_kl": 0.01, "kl": 0.25, "clip_frac": 0.2,
               "approx_kl": 1e-4, "grad_norm": 0.7, "images_per_s": 12.0, "nfe": 640, "eval_score": 0.4,
               "l1_rel": [0.1, 0.2], "loss_extra": 1.0, "something_new": 2.0}
    assert tracking.namespaced(metrics) == {
        "train/reward_mean": 0.5, "loss/policy": -0.1, "loss/kl_penalty": 0.01, "loss/kl": 0.25,
        "loss/clip_frac": 0.2, "loss/approx_kl": 1e-4, "loss/grad_norm": 0.7, "perf/images_per_s": 12.0,
        "perf/nfe": 640.0, "eval/score": 0.4, "loss/extra": 1.0, "train/something_new": 2.0,
    }  # fmt: skip


def test_hyperparameters_are_flat_scalars():
    flat = tracking.hyperparameters({"seed": 0, "run_dir": None, "train": {"lr": 6e-5, "ema": 0.0},
                                     "model": {"name": "tiny", "options": {"finetune": "full"}},
                                     "chunk_grpo": {"sde_window": [0, 4], "grouping_options": {}}})
    assert flat == {"seed": 0, "run_dir": "null", "train.lr": 6e-5, "train.ema": 0.0, "model.name": "tiny",
                    "model.options.finetune": "full", "chunk_grpo.sde_window": "[0, 4]",
                    "chunk_grpo.grouping_options": "{}"}


def test_unknown_tracker_and_missing_package_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match="log.trackers: unknown tracker 'tensorbord'; choose from tensorboard, wandb"):
        tracking.Trackers(["tensorbord"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package, which is not installed: pip install wandb"):
        tracking.Trackers(["tensorboard", "wandb"])


def test_a_missing_tracker_package_stops_training_before_anything_is_written(toy_overrides, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert cli.main(["train", *toy_overrides, "log.trackers=[mlflow]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install mlflow" in err
    assert not (tmp_path / "run").exists()


def test_tensorboard_holds_the_namespaced_metrics_config_and_grids(toy_overrides, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides, "log.trackers=[tensorboard]"]) == 0
    metrics = read_metrics(run)
    assert [m["update"] for m in metrics] == [1, 2]
    assert all("/" not in key for m in metrics for key in m)  # metrics.jsonl keeps the flat names
    events = read_events(run / "tensorboard")
    scalars = events.Tags()["scalars"]
    for flat, tracked in [("reward_mean", "train/reward_mean"), ("loss_policy", "loss/policy"),
                          ("clip_frac", "loss/clip_frac"), ("images_per_s", "perf/images_per_s"),
                          ("grad_norm", "loss/grad_norm"), ("nfe", "perf/nfe")]:  # fmt: skip
        assert tracked in scalars
        logged = [(e.step, e.value) for e in events.Scalars(tracked)]
        assert logged == [(m["update"], pytest.approx(m[flat], rel=1e-6, abs=1e-7)) for m in metrics]
    base = json.loads((run / "eval" / "base.json").read_text())
    final = json.loads((run / "eval" / "final.json").read_text())
    assert [(e.step, e.value) for e in events.Scalars("eval/score")] == [
        (0, pytest.approx(base["score"], rel=1e-6)), (2, pytest.approx(final["score"], rel=1e-6))]
    images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
    assert images == {"eval/base": [0], "samples/update": [1, 2], "eval/final": [2], "eval/base_vs_final": [2]}
    (hparams,) = (run / "tensorboard").glob("*/hparams.yml")
    stored = yaml.safe_load(hparams.read_text())
    assert stored["train.updates"] == 2 and stored["model.name"] == "toy" and stored["log.trackers"] == '["tensorboard"]'

    # resumed: the new updates and the new final grid are logged, what the first session logged is not logged again
    assert cli.main(["train", "--resume", str(run), "train.updates=3"]) == 0
    events = read_events(run / "tensorboard")
    assert sorted(e.step for e in events.Images("samples/update")) == [1, 2, 3]
    assert sorted(e.step for e in events.Images("eval/base")) == [0]
    assert sorted(e.step for e in events.Scalars("train/reward_mean")) == [1, 2, 3]
