"""Held-out evaluation: fixed seeds per prompt, per-image scores, records, grids and the base-vs-final comparison."""

import pytest
import torch
from conftest import TOY_PROMPTS, MeanBrightness
from toy_adapter import ToyAdapter

from genrl import evaluation, grids, shapeworld
from genrl.shapeworld import quality
from genrl.evaluation import EvalRecord, evaluate, evaluate_record, evaluation_seeds, sample_ode


def test_each_image_of_each_prompt_has_its_own_fixed_seed():
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    repeated, seeds = evaluation_seeds(prompts, 3)
    assert repeated == [p for p in prompts for _ in range(3)]
    assert len(set(seeds)) == 9  # no noise shared between images, within or across prompts
    assert evaluation_seeds(prompts, 3) == (repeated, seeds)  # deterministic
    # a prompt's seeds depend on its text only, not on its neighbours in the file
    alone = evaluation_seeds(["two blue squares"], 2)[1]
    assert alone == seeds[3:5]



def small_record(prompts=TOY_PROMPTS, reward=None, **kw) -> EvalRecord:
    return evaluate_record(ToyAdapter(), prompts, images_per_prompt=3, num_steps=3, micro_batch=4, reward=reward, **kw)


def test_a_record_scores_every_image_and_its_summary_is_their_mean():
    record = small_record()
    n = len(TOY_PROMPTS) * 3
    assert record.prompts == evaluation_seeds(TOY_PROMPTS, 3)[0] and record.seeds == evaluation_seeds(TOY_PROMPTS, 3)[1]
    expected = shapeworld.score(record.images, record.prompts)
    assert torch.equal(record.scores["strict"], expected["strict"]) and torch.equal(record.scores["partial"], expected["partial"])
    texture = quality.texture_summary(record.images, record.prompts, record.seeds)  # the reward-hacking guard
    assert record.result == shapeworld.evaluate(record.images, record.prompts) | texture | {
        "num_steps": 3, "images_per_prompt": 3, "guidance": None}
    assert record.result["score"] == pytest.approx(float(record.scores["strict"].sum()) / n)
    assert record.shown == [i for i in range(n) if i % 3 < evaluation.GRID_SEEDS]
    assert torch.equal(record.thumbnails, grids.thumbnails(record.images[record.shown]))
    result, images, prompts = evaluate(ToyAdapter(), TOY_PROMPTS, 3, 3, micro_batch=4)
    assert result == record.result and torch.equal(images, record.images) and prompts == record.prompts


def test_other_prompts_are_scored_per_image_by_the_reward():
    prompts = ["a photo of a cat", "a watercolour of a lighthouse"]
    record = small_record(prompts, reward=MeanBrightness())
    assert torch.equal(record.scores["reward"], MeanBrightness()(record.images, record.prompts))
    assert record.result["score"] == pytest.approx(float(record.scores["reward"].mean()))
    cells = [c for b in record.blocks() for c in b.cells]
    assert [c.caption for c in cells] == [f"{float(record.scores['reward'][i]):.3f}" for i in record.shown]
    assert all(c.frame is None for c in cells)
    with pytest.raises(ValueError, match="needs a reward"):
        small_record(prompts)


def test_a_saved_record_loads_bit_identical(tmp_path):
    record = small_record()
    loaded = EvalRecord.load(record.save(tmp_path / "r.pt"))
    assert loaded.result == record.result and loaded.prompts == record.prompts and loaded.seeds == record.seeds
    assert loaded.shown == record.shown and torch.equal(loaded.thumbnails, record.thumbnails)
    assert all(torch.equal(loaded.scores[k], record.scores[k]) for k in record.scores)


def manual_record(strict: list[float], partial: list[float], seeds: list[int], prompts: list[str]) -> EvalRecord:
    n = len(strict)
    return EvalRecord({"score": sum(strict) / n, "partial": sum(partial) / n, "per_prompt": {p: {} for p in prompts},
                       "images_per_prompt": 2}, prompts, seeds,
                      {"strict": torch.tensor(strict), "partial": torch.tensor(partial)}, list(range(n)),
                      grids.thumbnails(torch.rand(n, 3, 8, 8)))


def test_evaluation_grid_cells_mark_pass_and_fail_with_the_partial_credit():
    prompts = ["a red circle"] * 2 + ["two red circles"] * 2
    record = manual_record([1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.0, 1.0], [1, 2, 3, 4], prompts)
    blocks = record.blocks()
    assert [b.label for b in blocks] == ["a red circle", "two red circles"]
    cells = [c for b in blocks for c in b.cells]
    assert [c.caption for c in cells] == ["pass", "fail 0.50", "fail 0.00", "pass"]
    assert [c.frame for c in cells] == [grids.GOOD, grids.BAD, grids.BAD, grids.GOOD]


def test_base_and_final_are_paired_by_prompt_and_seed(tmp_path, monkeypatch):
    prompts = ["a red circle"] * 2 + ["two red circles"] * 2
    base = manual_record([0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 1.0, 0.5], [10, 11, 20, 21], prompts)
    final = manual_record([1.0, 0.0, 1.0, 1.0], [1.0, 0.5, 1.0, 1.0], [11, 10, 20, 99], prompts)  # seed 99: not in base
    drawn = {}

    def capture(path, thumbs, blocks, title, **kw):
        drawn.update(thumbs=thumbs, blocks=blocks)
        return path

    monkeypatch.setattr(grids, "save_scored", capture)
    evaluation.save_comparison(base, final, tmp_path / "c.png", "run")
    first, second = drawn["blocks"]
    # per prompt: base cells, a gap, final cells of the same seeds (final thumbnails follow base's)
    assert [c.index if c else None for c in first.cells] == [1, 0, None, 4, 5]
    assert [c.caption if c else None for c in first.cells] == ["fail 0.50", "fail 0.50", None, "pass", "fail 0.50"]
    assert [c.index if c else None for c in second.cells] == [2, None, 6]
    assert torch.equal(drawn["thumbs"], torch.cat([base.thumbnails, final.thumbnails]))
    other = manual_record([1.0], [1.0], [5], ["a red circle"])
    assert evaluation.save_comparison(base, other, tmp_path / "none.png", "run") is None


def test_the_progress_bar_shows_and_changes_no_image(capsys):
    adapter = ToyAdapter()
    prompts, seeds = evaluation_seeds(TOY_PROMPTS, 2)
    quiet = sample_ode(adapter, prompts, seeds, 3, micro_batch=4)
    assert capsys.readouterr().err == ""
    shown = sample_ode(adapter, prompts, seeds, 3, micro_batch=4, progress="eval base")
    assert torch.equal(quiet, shown)
    assert "eval base" in capsys.readouterr().err
