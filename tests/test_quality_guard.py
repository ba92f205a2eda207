"""ShapeWorld's image-quality guard (genrl.shapeworld.quality): texture that the scorer cannot see.

Properties, not magic numbers: a flat render has no texture; a checkerboard of amplitude a adds
exactly 2a inside the background (every adjacent pair differs by 2a) and between a and 2a inside
the shapes (a channel at the palette's bound is clipped on one side); Gaussian noise of std s
adds E|X - Y| = 2s/sqrt(pi) for independent X, Y ~ N(0, s^2).
"""

import math

import pytest
import torch
from conftest import TOY_PROMPTS
from toy_adapter import ToyAdapter

from genrl import evaluation, shapeworld
from genrl.shapeworld import quality

PROMPTS = shapeworld.eval_prompts()[::4]  # every category, a dozen prompts
SEEDS = list(range(len(PROMPTS)))


def checkerboard(amplitude: float, size: int = 32) -> torch.Tensor:
    """[1, 1, H, W]: +amplitude and -amplitude on alternate pixels."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((x + y) % 2) * 2 - 1).float()[None, None] * amplitude


def test_a_clean_render_scores_its_clean_reference():
    renders = shapeworld.render_batch(PROMPTS, SEEDS)
    summary = quality.texture_summary(renders, PROMPTS, SEEDS)
    assert summary["texture_bg"] == summary["texture_bg_clean"] == 0.0  # flat colours, hard edges
    assert summary["texture_fg"] == summary["texture_fg_clean"] == 0.0
    per_image = quality.texture_energy(renders)
    assert torch.isfinite(per_image["texture_bg"]).all() and torch.isfinite(per_image["texture_fg"]).all()


@pytest.mark.parametrize("amplitude", [0.01, 0.025, 0.05])
def test_a_checkerboard_adds_twice_its_amplitude_and_the_scorer_does_not_see_it(amplitude):
    renders = shapeworld.render_batch(PROMPTS, SEEDS)
    hacked = (renders + checkerboard(amplitude)).clamp(0, 1)
    clean, textured = quality.texture_energy(renders), quality.texture_energy(hacked)
    # the background (0.1 per channel) is never clipped at these amplitudes: every pair differs by exactly 2a
    assert torch.allclose(textured["texture_bg"] - clean["texture_bg"], torch.full((len(PROMPTS),), 2 * amplitude), atol=1e-6)
    added_fg = textured["texture_fg"] - clean["texture_fg"]
    assert (added_fg >= amplitude - 1e-6).all() and (added_fg <= 2 * amplitude + 1e-6).all()
    summary = quality.texture_summary(hacked, PROMPTS, SEEDS)
    assert summary["texture_bg"] >= summary["texture_bg_clean"] + 2 * amplitude - 1e-5
    # what makes it reward hacking: the programmatic score is as perfect as the clean render's
    assert shapeworld.score(hacked, PROMPTS)["strict"].tolist() == [1.0] * len(PROMPTS)


def test_gaussian_noise_adds_its_closed_form_mean_absolute_difference():
    std = 0.02
    renders = shapeworld.render_batch(PROMPTS, SEEDS)
    noise = torch.randn(renders.shape, generator=torch.Generator().manual_seed(0)) * std
    measured = quality.nanmean(quality.texture_energy((renders + noise).clamp(0, 1))["texture_bg"])
    # ~20,000 background pairs x 3 channels: the sample mean is well within 3% of the expectation
    assert measured == pytest.approx(2 * std / math.sqrt(math.pi), rel=0.03)


def test_an_image_without_a_shape_has_no_foreground_figure():
    flat = torch.tensor(shapeworld.PALETTE["background"])[None, :, None, None].expand(2, 3, 32, 32).clone()
    per_image = quality.texture_energy(flat + checkerboard(0.02))
    assert torch.isnan(per_image["texture_fg"]).all()  # no shape: undefined, not 0
    assert torch.allclose(per_image["texture_bg"], torch.full((2,), 0.04))
    summary = quality.texture_summary(flat, ["a red circle"] * 2, [0, 1])
    assert summary["texture_fg"] is None and summary["texture_bg"] == 0.0 and summary["texture_fg_clean"] == 0.0


def test_every_evaluation_records_the_guard_beside_the_strict_score():
    record = evaluation.evaluate_record(ToyAdapter(), TOY_PROMPTS, images_per_prompt=2, num_steps=2, micro_batch=4)
    texture = quality.texture_energy(record.images)
    for key in ("texture_bg", "texture_fg"):
        assert record.result[key] == round(quality.nanmean(texture[key]), 6)
        assert record.result[f"{key}_clean"] == 0.0
    metrics = evaluation.mid_run_metrics(record.result)
    assert metrics == {"eval_score": record.result["score"], "eval_partial": record.result["partial"],
                       "eval_texture_bg": record.result["texture_bg"], "eval_texture_fg": record.result["texture_fg"]}
    lines = []
    assert evaluation.mid_run(7, record.result, lines.append) == metrics
    assert lines == [evaluation.mid_run_line(7, record.result)]
    assert lines[0].startswith(f"genrl: update 7: held-out strict {record.result['score']:.3f}")
    assert f"texture bg {record.result['texture_bg']:.4f}" in lines[0]
    assert evaluation.mid_run(7, record.result, None) == metrics  # quiet on the other processes


def test_other_prompts_log_only_their_score():
    assert evaluation.mid_run_metrics({"score": 0.25, "per_prompt": {}}) == {"eval_score": 0.25}
    assert evaluation.mid_run_line(3, {"score": 0.25}) == "genrl: update 3: held-out score 0.250"


def test_genrl_plot_draws_the_guard_from_base_to_final(tmp_path):
    import json

    from genrl import plot

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    rows = [{"update": u, "nfe": 100 * u, "reward_mean": 0.5} for u in (1, 2, 3, 4)]
    rows[1] |= {"eval_score": 0.4, "eval_texture_bg": 0.01, "eval_texture_fg": 0.02}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for tag, bg in (("base", 0.001), ("final", 0.03)):
        (run / "eval" / f"{tag}.json").write_text(json.dumps({"score": 0.35, "texture_bg": bg, "texture_fg": 0.005}))
    points = plot.held_out_points(run, plot.read_metrics(run))
    assert [(p["update"], p["eval_texture_bg"]) for p in points] == [(0, 0.001), (2, 0.01), (4, 0.03)]
    assert any("eval_texture_bg" in metrics for _, metrics in plot.PANELS)
    assert plot.plot_runs([run], tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
