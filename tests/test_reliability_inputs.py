"""Bad input gets one line naming the key, file or value, before anything is written (issue 15)."""

import pytest
import torch

from genrl import cli, config

# The main job's components (the shipped tiny model, the ShapeWorld reward), shrunk to seconds.
SHAPEWORLD = ["train.prompts_per_update=2", "train.group_size=2", "sampling.eval_steps=2", "log.eval_seeds=1",
              "log.progress=false", "train.updates=1"]


def fails_cleanly(capsys, argv, *needles):
    """Exit 2 with a single error line holding every needle; returns that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrl: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("override, needle", [
    ("log.checkpoint_every=0", "log.checkpoint_every=0 is not allowed: expected an integer >= 1"),
    ("log.checkpoint_every=-5", "log.checkpoint_every=-5 is not allowed"),
    ("log.eval_seeds=0", "log.eval_seeds=0 is not allowed: expected an integer >= 1"),
    ("log.eval_seeds=-2", "log.eval_seeds=-2 is not allowed"),
    ("train.max_bad_updates=0", "train.max_bad_updates=0 is not allowed: expected an integer >= 1"),
    ("train.weight_decay=-1", "train.weight_decay=-1.0 is not allowed: expected a float >= 0"),
    (f"seed={2**64 + 5}", f"seed={2**64 + 5} is not allowed: expected an integer in [0, 2**63)"),
    ("seed=-1", "seed=-1 is not allowed"),
    ("log.sample_every=-1", "log.sample_every=-1 is not allowed"),
    ("log.eval_every=-3", "log.eval_every=-3 is not allowed"),
    ("device=gpu", "device='gpu' is not a torch device"),
])
def test_bad_values_are_named_before_anything_is_written(toy_overrides, tmp_path, capsys, override, needle):
    fails_cleanly(capsys, ["train", *toy_overrides, override], needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run(toy_overrides, tmp_path, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails_cleanly(capsys, ["train", *toy_overrides, f"device={device}"], f"device={device!r} but this machine has no CUDA GPU")
    assert not (tmp_path / "run").exists()


def test_a_gpu_index_beyond_the_machine_is_named(toy_overrides, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    fails_cleanly(capsys, ["train", *toy_overrides, "device=cuda:2"], "has 2 CUDA GPU(s) (cuda:0..cuda:1)")


def test_a_prompt_file_that_is_not_utf8_is_named(toy_overrides, tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a red circle\nun cœur rouge\n".encode("cp1252"))  # Windows-1252: œ is byte 0x9c
    fails_cleanly(capsys, ["train", *toy_overrides, f"prompts.train={latin1}"],
                  f"prompt file {str(latin1)!r} is not UTF-8 text (byte 0x9c")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split, line, needle", [
    ("train", "circle red a", "prompts.train"),          # vocabulary words, outside the grammar
    ("eval", "a pink circle", "prompts.eval"),           # outside the vocabulary
])
def test_a_prompt_the_reward_or_model_cannot_take_is_named_before_anything_is_written(tmp_path, capsys, split, line, needle):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"a red circle\n\n{line}\n")
    run = tmp_path / "run"
    err = fails_cleanly(capsys, ["train", *SHAPEWORLD, f"prompts.{split}={bad}", f"run_dir={run}"],
                        needle, f"{str(bad)!r} line 3", repr(line))
    assert "word" in err
    assert not run.exists()  # neither config.yaml nor the base evaluation


def test_a_huge_prompt_is_not_quoted_whole(tmp_path, capsys):
    huge = tmp_path / "huge.txt"
    prompt = "a red circle " * 10_000  # 130 KB
    huge.write_text(prompt + "\n")
    err = fails_cleanly(capsys, ["train", *SHAPEWORLD, f"prompts.train={huge}", f"run_dir={tmp_path / 'run'}"],
                        f"({len(prompt.strip()):,} characters)")
    assert len(err) < 600
    out = tmp_path / "eval.json"
    err = fails_cleanly(capsys, ["eval", "--prompts", str(huge), "--out", str(out)], "--prompts", "characters)")
    assert len(err) < 600 and not out.exists()
    fails_cleanly(capsys, ["sample", "--prompt", "a pink circle", "--out", str(tmp_path / "s.png")],
                  "genrl sample: --prompt: word 'pink'")


def test_prompts_of_any_grammar_are_fine_for_a_reward_that_does_not_parse_them(toy_overrides, tmp_path):
    free = tmp_path / "free.txt"
    free.write_text("circle red a\na photo of a cat\n")
    assert cli.main(["train", *toy_overrides, f"prompts.train={free}", "train.updates=1", "log.eval_at_start=false"]) == 0


def test_num_processes_with_an_indivisible_batch_is_refused_before_launching(toy_overrides, tmp_path, capsys, monkeypatch):
    def launched(command):
        raise AssertionError(f"workers were launched: {command}")

    monkeypatch.setattr(cli, "run_launcher", launched)
    fails_cleanly(capsys, ["train", "--num-processes", "2", *toy_overrides, "train.prompts_per_update=3", "train.minibatches=1"],
                  "train.prompts_per_update=3 cannot be split whole over --num-processes 2")
    fails_cleanly(capsys, ["train", "--num-processes", "2", *toy_overrides, "log.eval_seeds=0"], "log.eval_seeds=0")
    assert not (tmp_path / "run").exists()


def test_num_processes_into_a_used_run_directory_is_refused_before_launching(toy_overrides, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_launcher", lambda command: pytest.fail("workers were launched"))
    assert cli.main(["train", *toy_overrides]) == 0
    capsys.readouterr()
    fails_cleanly(capsys, ["train", "--num-processes", "2", *toy_overrides], "already holds a run", "--overwrite")
    launched = []
    monkeypatch.setattr(cli, "run_launcher", lambda command: launched.append(command) or 0)
    assert cli.main(["train", "--num-processes", "2", *toy_overrides, "--overwrite"]) == 0
    assert launched[0][-1] == "--overwrite"  # the workers are told too


def test_config_validation_still_accepts_the_shipped_configs():
    for name in ("shapeworld", "sd35m", "flux"):
        config.load(name)
