"""What a new user ran into in their first hour (issue 29, item 4): the gymnasium env after `import genrl`,
the package description, `genrl sample --score`, the columns of base_vs_final.png, and `genrl plot` on runs
evaluated with different seed counts."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import genrl.algorithms
from genrl import cli, evaluation, grids, shapeworld

REPO = Path(__file__).resolve().parent.parent


def test_import_genrl_registers_the_gymnasium_env_without_importing_torch():
    code = "import genrl, gymnasium, sys; print('genrl/Denoise-v0' in gymnasium.registry, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_the_package_description_names_every_registered_algorithm():
    description = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["description"]
    squeezed = re.sub(r"[\s_-]", "", description.lower())
    built_in = [n for n in genrl.algorithms.names() if genrl.algorithms.get(n).__module__.startswith("genrl.algorithms.")]
    assert len(built_in) >= 5 and [n for n in built_in if n.replace("_", "") not in squeezed] == []


def test_sample_score_marks_each_shapeworld_image_and_prints_the_totals(tmp_path, monkeypatch, capsys):
    """Every image drawn as the render of 'a red circle': it passes that prompt and fails 'a blue square'."""
    def renders(adapter, prompts, seeds, *args, **kwargs):
        return shapeworld.render("a red circle", seed=0)[None].repeat(len(prompts), 1, 1, 1)

    monkeypatch.setattr(evaluation, "sample_ode", renders)
    out = tmp_path / "scored.png"
    assert cli.main(["sample", "--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "2",
                     "--steps", "2", "--score", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "strict 0.500" in printed and "(2 prompts x 2 seeds)" in printed and out.is_file()


def test_sample_score_refuses_a_prompt_outside_the_grammar_before_sampling(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation, "sample_ode", lambda *a, **k: pytest.fail("sampled"))
    assert cli.main(["sample", "--prompt", "a red circle", "--prompt", "a photo of a cat", "--score",
                     "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "--score scores ShapeWorld prompts on the image, and 'a photo of a cat' is not one" in err


def _ink(image: np.ndarray, rows: slice, cols: slice) -> int:
    return int((image[rows, cols] < 128).any(axis=-1).sum())


def test_headings_are_written_over_the_first_cell_of_each_run():
    thumbs = torch.zeros(4, 3, 32, 32, dtype=torch.uint8) + 200
    cells = [grids.Cell(0), grids.Cell(1), None, grids.Cell(2), grids.Cell(3)]
    plain = np.asarray(grids.render(thumbs, [grids.Block("p", cells)]))
    headed = np.asarray(grids.render(thumbs, [grids.Block("p", cells, ["base", "final"])]))
    line = grids._line_height()
    assert headed.shape[0] == plain.shape[0] + line
    cell_w = 64 + 2 * grids.FRAME  # 32 px enlarged to CELL_MIN
    top = grids.MARGIN + line  # under the block's label
    band = slice(top, top + line)
    second_run = grids.MARGIN + 2 * (cell_w + grids.PAD) + grids.SPACER
    assert _ink(headed, band, slice(grids.MARGIN, grids.MARGIN + cell_w)) > 0  # "base"
    assert _ink(headed, band, slice(second_run, second_run + cell_w)) > 0  # "final"
    assert _ink(headed, band, slice(grids.MARGIN + cell_w + grids.PAD, second_run - grids.PAD)) == 0  # 2nd cell: none


def test_base_vs_final_labels_its_columns(tmp_path, monkeypatch):
    def record(score):
        prompts, seeds = ["a red circle"] * 2, [1, 2]
        return evaluation.EvalRecord({"score": score, "per_prompt": {"a red circle": score}, "images_per_prompt": 2},
                                     prompts, seeds, {"reward": torch.tensor([score, score])}, [0, 1],
                                     torch.zeros(2, 3, 8, 8, dtype=torch.uint8))

    drawn = []
    monkeypatch.setattr(grids, "save_scored", lambda path, thumbs, blocks, *a, **k: drawn.extend(blocks))
    evaluation.save_comparison(record(0.1), record(0.9), tmp_path / "c.png", "run")
    assert [b.headings for b in drawn] == [["base", "final"]]


def _fake_run(folder: Path, seeds: int) -> Path:
    (folder / "eval").mkdir(parents=True)
    rows = [{"update": u, "nfe": 100 * u, "reward_mean": 0.1 * u} for u in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for tag, score in (("base", 0.3), ("final", 0.4)):
        (folder / "eval" / f"{tag}.json").write_text(json.dumps({"score": score, "per_prompt": {}, "images_per_prompt": seeds}))
    return folder


def test_plot_says_when_overlaid_runs_were_evaluated_with_different_seed_counts(tmp_path, capsys):
    a, b, c = _fake_run(tmp_path / "a", 4), _fake_run(tmp_path / "b", 16), _fake_run(tmp_path / "c", 4)
    assert cli.main(["plot", str(a), str(c), "--out", str(tmp_path / "same.png")]) == 0
    assert "different numbers of images per prompt" not in capsys.readouterr().err
    assert cli.main(["plot", str(a), str(b), "--out", str(tmp_path / "mixed.png")]) == 0
    assert "different numbers of images per prompt (a: 4, b: 16)" in capsys.readouterr().err
