"""`genrl plot`: curves of fake runs, a torn last line tolerated, bad run directories named."""

import json
import math

import pytest
from PIL import Image

from genrl import cli, plot


def fake_run(path, updates=30, torn=False, kl=False, evals=True):
    path.mkdir(parents=True)
    rows = []
    for u in range(1, updates + 1):
        row = {"update": u, "reward_mean": 0.3 + 0.01 * u, "approx_kl": 1e-5 * u, "clip_frac": 0.1, "grad_norm": 0.5,
               "nfe": 100 * u, "images_per_s": 20.0, "wall_s": 1.0 * u}
        if kl:
            row["kl"] = 2e-5 * u
        if u % 10 == 0:
            row["eval_score"] = 0.35 + 0.002 * u
        rows.append(json.dumps(row))
    text = "\n".join(rows) + "\n"
    if torn:
        text += '{"update": %d, "reward_me' % (updates + 1)  # a run killed mid-write
    (path / "metrics.jsonl").write_text(text)
    if evals:
        (path / "eval").mkdir()
        (path / "eval" / "base.json").write_text(json.dumps({"score": 0.349}))
        (path / "eval" / "final.json").write_text(json.dumps({"score": 0.454}))
    return path


def test_several_runs_are_plotted_into_one_png(tmp_path, capsys):
    a = fake_run(tmp_path / "a", kl=True)
    b = fake_run(tmp_path / "b", updates=12, torn=True, evals=False)
    out = tmp_path / "plots" / "curves.png"
    assert cli.main(["plot", str(a), str(b), "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 1200
    assert str(out) in capsys.readouterr().out


def test_a_torn_last_line_is_skipped_and_a_bad_line_elsewhere_is_an_error(tmp_path):
    run = fake_run(tmp_path / "r", updates=5, torn=True)
    assert [row["update"] for row in plot.read_metrics(run)] == [1, 2, 3, 4, 5]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:5]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON object"):
        plot.read_metrics(run)


def test_held_out_points_run_from_the_base_to_the_final_evaluation(tmp_path):
    run = fake_run(tmp_path / "r", updates=20)
    rows = plot.read_metrics(run)
    points = plot.held_out_points(run, rows)
    assert [(p["update"], p["nfe"]) for p in points] == [(0, 0), (10, 1000), (20, 2000), (20, 2000)]
    assert points[0]["eval_score"] == 0.349 and points[-1]["eval_score"] == 0.454


def test_values_are_found_under_a_namespace_and_non_numbers_are_skipped():
    assert plot.value({"train/reward_mean": 0.5}, "reward_mean") == 0.5
    assert plot.value({"reward_mean": float("nan")}, "reward_mean") is None
    assert plot.value({"l1_rel": [0.1]}, "l1_rel") is None
    assert plot.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert all(math.isfinite(v) for v in plot.smooth([0.1] * 50, 7))


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "has no metrics.jsonl"),
    (lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text("")), "holds no finished update"),
])
def test_a_bad_run_dir_is_a_one_line_error_naming_it(tmp_path, capsys, setup, message):
    bad = tmp_path / "not_a_run"
    setup(bad)
    good = fake_run(tmp_path / "good", updates=3)
    assert cli.main(["plot", str(good), str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "not_a_run" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
