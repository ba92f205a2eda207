"""Free baselines and honest uncertainty: `genrl eval --guidance G`, the standard error of the base-to-final
change in `genrl train`'s last lines, and mid-run evaluations printed as they happen."""

import json
import math

import pytest
import torch
from conftest import TOY_PROMPTS
from toy_adapter import ToyAdapter

from genrl import cli, evaluation
from genrl.evaluation import EvalRecord


def test_guidance_is_set_on_the_adapter_and_recorded_with_the_evaluation():
    adapter = ToyAdapter()
    plain = evaluation.evaluate_record(adapter, TOY_PROMPTS, images_per_prompt=1, num_steps=2, micro_batch=4)
    assert plain.result["guidance"] is None  # no CFG configured
    evaluation.set_guidance(adapter, 3)
    guided = evaluation.evaluate_record(adapter, TOY_PROMPTS, images_per_prompt=1, num_steps=2, micro_batch=4)
    assert adapter.guidance_scale == 3.0 and guided.result["guidance"] == 3.0
    assert not torch.equal(plain.images, guided.images)  # CFG changed the samples

    class Distilled:  # FLUX.1-dev: guidance is an input of the model, there is no CFG
        guidance_scale, embedded_guidance = None, 3.5

    distilled = Distilled()
    evaluation.set_guidance(distilled, 2)
    assert distilled.embedded_guidance == 2.0 and distilled.guidance_scale is None
    assert evaluation.guidance_of(distilled) == 2.0


def record(strict: list[float], seeds: list[int]) -> EvalRecord:
    n = len(strict)
    return EvalRecord({}, ["a red circle"] * n, seeds, {"strict": torch.tensor(strict)}, [], torch.zeros(0, 3, 4, 4))


def test_the_change_is_paired_per_image_when_both_evaluations_drew_the_same_images():
    base, final = record([1, 0, 0, 1], [0, 1, 2, 3]), record([1, 1, 0, 1], [0, 1, 2, 3])
    change = evaluation.score_change(base, final)
    # differences 0, 1, 0, 0: mean 1/4, sample sd sqrt((3 (1/4)^2 + (3/4)^2) / 3) = 1/2, se = sd / sqrt(4)
    assert change == {"change": pytest.approx(0.25), "se": pytest.approx(0.25), "n": 4, "paired": True}


def test_the_change_is_unpaired_when_the_images_differ():
    base, final = record([1, 0, 0, 1], [0, 1, 2, 3]), record([1, 1, 0], [7, 8, 9])
    change = evaluation.score_change(base, final)
    var_base, var_final = 1 / 3, 1 / 3  # sample variances of (1, 0, 0, 1) and (1, 1, 0)
    assert change["paired"] is False and change["n"] == 3
    assert change["change"] == pytest.approx(2 / 3 - 1 / 2)
    assert change["se"] == pytest.approx(math.sqrt(var_base / 4 + var_final / 3))


def test_eval_guidance_is_an_option_recorded_in_the_json(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(TOY_PROMPTS) + "\n")
    common = ["eval", "--prompts", str(prompts), "--seeds", "1", "--steps", "2"]
    assert cli.main([*common, "--out", str(tmp_path / "g1.json")]) == 0
    assert cli.main([*common, "--guidance", "2", "--out", str(tmp_path / "g2.json")]) == 0
    g1, g2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("g1", "g2"))
    assert g1["guidance"] == 1.0 and g2["guidance"] == 2.0  # the tiny model's default, then the option
    assert g1["texture_bg"] != g2["texture_bg"]  # other images: the guidance was applied
    out = capsys.readouterr().out
    assert "guidance 2" in out and "texture bg" in out


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_guidance_is_one_line_naming_the_option_before_anything_is_written(tmp_path, capsys, value):
    out = tmp_path / "e.json"
    assert cli.main(["eval", f"--guidance={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--guidance" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_train_prints_mid_run_evaluations_and_the_uncertainty_of_the_change(toy_overrides, tmp_path, capsys):
    assert cli.main(["train", *toy_overrides, "log.eval_every=1", "log.eval_seeds=2"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "eval_texture_bg" in rows[0] and "eval_partial" in rows[0]  # logged at every evaluation
    assert "genrl: update 1: held-out strict" in out  # printed when it happened (the last one is the final)
    change = evaluation.score_change(EvalRecord.load(run / "eval" / "base.pt"), EvalRecord.load(run / "eval" / "final.pt"))
    n = len(TOY_PROMPTS) * 2
    assert change["paired"] and change["n"] == n
    assert f"± {change['se']:.3f} (standard error, paired over {n} (prompt, seed) images)" in out
    assert "final texture bg" in out


def eval_json(score: float, guidance: float, images_per_prompt: int = 4, n: int = 8) -> dict:
    per_prompt = {"a red circle": {"strict": score, "partial": score, "n": n // 2},
                  "a blue square": {"strict": score, "partial": score, "n": n // 2}}
    return {"score": score, "partial": 0.7, "per_prompt": per_prompt, "texture_bg": 0.0012, "texture_bg_clean": 0.0,
            "num_steps": 20, "images_per_prompt": images_per_prompt, "guidance": guidance}


def test_the_bench_table_shows_free_baselines_from_the_results_folder(tmp_path):
    from test_stats import _fake_results

    from genrl.benchmarks import report

    (tmp_path / "results.json").write_text(json.dumps(_fake_results({"a": [0.5, 0.6], "b": [0.4, 0.5]}, [0, 1])))
    (tmp_path / "runs" / "a__0" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "a__0" / "eval" / "base.json").write_text(json.dumps(eval_json(0.35, 1.0)))
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "guidance2.json").write_text(json.dumps(eval_json(0.5, 2.0)))
    (tmp_path / "baselines" / "more_seeds.json").write_text(json.dumps(eval_json(0.45, 2.0, images_per_prompt=16)))
    assert report.main([str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    [row] = results["baselines"]["rows"]
    assert row["label"] == "base + guidance 2" and row["images"] == 8
    assert row["se"] == pytest.approx(math.sqrt(0.5 * 0.5 / 8))  # a mean of 8 images scored 0 or 1
    table = (tmp_path / "table.md").read_text()
    base_mean = results["aggregate"]["a"]["base_mean"]
    assert f"| base + guidance 2 | 0.500 ± {row['se']:.3f} (8) | {0.5 - base_mean:+.3f} | 0.700 | 0.0012 |" in table
    assert "more_seeds.json (images_per_prompt 16, the runs' 4)" in table  # another evaluation is not a row
