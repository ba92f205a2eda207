"""One family of user errors: the CLI prints them on one line (exit 2) and lets anything else show its traceback;
`genrl eval` / `genrl sample` evaluate with the config's number of seeds, as training does."""

import json

import pytest

from genrl import checkpoint, cli, config, errors, prompts, rewards, shapeworld
from genrl.trainer import TrainingStopped


def test_the_existing_error_classes_are_the_family():
    assert config.ConfigError is errors.ConfigError and rewards.RewardError is errors.RewardError
    assert checkpoint.CheckpointError is errors.CheckpointError and shapeworld.PromptError is errors.PromptError
    assert issubclass(prompts.PromptSetError, errors.PromptError)
    for cls in (errors.ConfigError, errors.PromptError, errors.CheckpointError, errors.RewardError, TrainingStopped):
        assert issubclass(cls, errors.UserError)
    # what they replaced still catches them
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.CheckpointError, RuntimeError)
    assert issubclass(errors.RunDirError, OSError)


def test_a_user_error_is_one_line_and_status_2(capsys):
    assert cli.main(["train", "sampling.num_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genrl: error: sampling.num_steps=1") and "Traceback" not in err


@pytest.mark.parametrize("bug", [RuntimeError("CUDA out of memory"), KeyError("latents"), ValueError("shapes differ")])
def test_anything_else_keeps_its_traceback(bug, monkeypatch):
    def failing(args):
        raise bug

    monkeypatch.setattr(cli, "cmd_train", failing)
    with pytest.raises(type(bug)):
        cli.main(["train"])


def test_a_missing_run_directory_is_a_user_error(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "is neither a run directory" in capsys.readouterr().err


def test_eval_and_sample_default_to_the_runs_evaluation_seeds(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides, "train.updates=1", "log.eval_seeds=3", "log.eval_at_start=false"]) == 0
    out = tmp_path / "eval.json"
    assert cli.main(["eval", str(run), "--out", str(out), "--steps", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["images_per_prompt"] == 3 == json.loads((run / "eval" / "final.json").read_text())["images_per_prompt"]
    capsys.readouterr()
    assert cli.main(["sample", str(run), "--prompt", "a red circle", "--out", str(tmp_path / "s.png"), "--steps", "2"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert cli.main(["eval", str(run), "--out", str(out), "--steps", "2", "--seeds", "2"]) == 0
    assert json.loads(out.read_text())["images_per_prompt"] == 2


def test_sample_from_the_base_model_uses_the_bundled_configs_seeds(tmp_path, capsys):
    bundled = config.load().log.eval_seeds
    assert cli.main(["sample", "--prompt", "a red circle", "--out", str(tmp_path / "s.png"), "--steps", "2"]) == 0
    assert f"wrote {bundled} images" in capsys.readouterr().out
