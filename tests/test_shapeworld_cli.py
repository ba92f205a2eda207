"""The user-facing ShapeWorld paths on the shipped tiny model: `genrl eval`, `genrl sample`,
the main job's default config, and the `smoke` benchmark suite."""

import json
import math

import pytest

from genrl import cli, config

PROMPTS = ["a red circle", "two green triangles", "a blue square above a yellow circle"]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def test_eval_of_the_base_model_writes_scores_and_a_grid(prompt_file, tmp_path, capsys):
    out = tmp_path / "eval" / "base.json"
    assert cli.main(["eval", "--prompts", str(prompt_file), "--out", str(out), "--seeds", "2", "--steps", "4"]) == 0
    result = json.loads(out.read_text())
    assert {"score", "partial", "per_category", "per_prompt"} <= set(result)
    assert set(result["per_prompt"]) == set(PROMPTS) and all(v["n"] == 2 for v in result["per_prompt"].values())
    assert set(result["per_category"]) == {"single_object", "counting", "position"}
    assert 0.0 <= result["score"] <= result["partial"] <= 1.0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "score" in capsys.readouterr().out


def test_eval_of_a_run_uses_its_checkpoint(prompt_file, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *tiny_overrides(prompt_file), f"run_dir={run}", "train.updates=1"]) == 0
    out = tmp_path / "run_eval.json"
    assert cli.main(["eval", str(run), "--prompts", str(prompt_file), "--out", str(out), "--seeds", "1", "--steps", "2"]) == 0
    assert json.loads(out.read_text())["images_per_prompt"] == 1


def test_eval_errors_name_the_bad_input_and_write_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    out = tmp_path / "never.json"
    assert cli.main(["eval", "--prompts", str(empty), "--out", str(out)]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\na pink circle\n")
    assert cli.main(["eval", "--prompts", str(bad), "--out", str(out)]) == 2
    assert "pink" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert cli.main(["eval", str(tmp_path / "no_run"), "--out", str(out)]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_sample_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "squares.png"
    assert cli.main(["sample", "--prompt", "three red squares", "--out", str(out), "--seeds", "2", "--steps", "3"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["sample", "--out", str(out)]) == 2
    assert "at least one --prompt" in capsys.readouterr().err


def test_sample_rejects_a_prompt_the_model_cannot_draw_as_eval_does(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a orange square\n")
    assert cli.main(["eval", "--prompts", str(bad), "--out", str(tmp_path / "e.json")]) == 2
    eval_error = capsys.readouterr().err
    assert cli.main(["sample", "--prompt", "a orange square", "--out", str(tmp_path / "s.png")]) == 2
    sample_error = capsys.readouterr().err
    reason = "cannot parse prompt 'a orange square': wrong article 'a' before 'orange': write 'an orange'\n"
    # the same reason; each names where the prompt came from (the file and line, or --prompt)
    assert eval_error.endswith(f"bad.txt' line 1: {reason}") and sample_error.endswith(f"--prompt: {reason}")
    assert not any(tmp_path.glob("*.png")) and not (tmp_path / "e.json").exists()


def tiny_overrides(prompt_file):
    """The default config (the main job), shrunk to seconds: the shipped model, LoRA, shapeeval."""
    return ["train.prompts_per_update=2", "train.group_size=2", "sampling.eval_steps=2", "log.eval_seeds=1",
            "log.progress=false", "log.sample_every=1", f"prompts.eval={prompt_file}"]


def test_the_main_job_config_trains_the_shipped_model(prompt_file, tmp_path, capsys):
    cfg = config.load()
    assert (cfg.algorithm, cfg.model.name, cfg.reward.name) == ("chunk_grpo", "tiny", "multi")
    assert [(r["name"], r["options"]["mode"]) for r in cfg.reward.options["rewards"]] == [("shapeeval", "strict"), ("shapeeval", "partial")]
    assert cfg.prompts.train == "shapeworld:train" and cfg.prompts.eval == "shapeworld:eval"
    run = tmp_path / "main"
    assert cli.main(["train", *tiny_overrides(prompt_file), f"run_dir={run}", "train.updates=2"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1, 2]
    assert all(0.0 <= m["reward_mean"] <= 1.0 and math.isfinite(m["grad_norm"]) for m in metrics)
    assert (run / "samples" / "update_000002.png").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "update_000002"
    printed = capsys.readouterr().out
    assert "eval score (held-out prompts)" in printed and "counting" in printed


@pytest.mark.slow
def test_smoke_suite_runs_every_algorithm_and_seed(tmp_path):
    """`genrl bench smoke`, exactly as a user runs it (a few minutes on 2 cores)."""
    out = tmp_path / "smoke"
    assert cli.main(["bench", "smoke", "--out", str(out), "log.progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["label"], r["seed"]) for r in results["runs"]} == {
        (a, s) for a in ("flow_grpo", "dance_grpo", "chunk_grpo") for s in (0, 1)}
    budget = results["suite"]["budget_nfe"]
    assert all(r["status"] == "finished" and r["nfe"] >= budget for r in results["runs"])
    assert "| chunk_grpo |" in (out / "table.md").read_text()
    assert (out / "score_vs_nfe.png").exists() and (out / "score_vs_wall.png").exists()


def test_eval_grid_marks_each_image_pass_or_fail_like_a_run_s(prompt_file, tmp_path, monkeypatch):
    from genrl import grids

    drawn = {}
    real = grids.save_scored

    def spy(path, thumbs, blocks, title=None, images_per_row=8, **options):  # options: frames= (clips)
        drawn.update(blocks=blocks, title=title)
        return real(path, thumbs, blocks, title, images_per_row, **options)

    monkeypatch.setattr(grids, "save_scored", spy)
    out = tmp_path / "e.json"
    assert cli.main(["eval", "--prompts", str(prompt_file), "--out", str(out), "--seeds", "2", "--steps", "4"]) == 0
    result = json.loads(out.read_text())
    cells = [c for b in drawn["blocks"] for c in b.cells]
    assert len(cells) == 2 * len(PROMPTS) and [b.label for b in drawn["blocks"]] == PROMPTS
    passed = sum(c.caption == "pass" for c in cells)
    assert passed == round(result["score"] * len(cells))
    assert all(c.caption == "pass" or c.caption.startswith("fail ") for c in cells)
    assert f"strict {result['score']:.3f}" in drawn["title"] and "green: pass" in drawn["title"]
