"""Why the `pairwise` suite has one pairwise arm: on ShapeWorld the `scores` judge on the main job's score and the
constraint-count judge order every pair alike, so their win rates (and the runs they train) are the same."""

import torch

from genrl.benchmarks.suite import load_suite
from genrl.rewards import checked_call, load
from genrl.shapeworld import render
from genrl.shapeworld import score as shapeworld_score

MAIN_JOB_SCORE = {"name": "multi", "options": {"rewards": [
    {"name": "shapeeval", "weight": 0.5, "options": {"mode": "strict"}},
    {"name": "shapeeval", "weight": 0.5, "options": {"mode": "partial"}}]}}

# Each group: renders of the prompt itself and of prompts that meet some, or none, of its constraints.
GROUPS = {
    "a yellow square above a red circle": ["a yellow square above a red circle", "a yellow square above a red square",
                                           "a blue circle", "a yellow square below a red circle", "a red circle"],
    "two blue triangles": ["two blue triangles", "three blue triangles", "a blue triangle", "two red triangles",
                           "two blue triangles"],
    "a green square and a blue triangle": ["a green square and a blue triangle", "a green square", "a blue triangle",
                                           "a red circle and a yellow square", "a green circle and a blue triangle"],
}


def _group(prompt, drawn, first_seed):
    images = torch.stack([render(p, seed=first_seed + i) for i, p in enumerate(drawn)]).float()
    return images, [prompt] * len(drawn)


def test_the_main_job_score_increases_with_the_constraints_met():
    seen = set()
    for g, (prompt, drawn) in enumerate(GROUPS.items()):
        images, prompts = _group(prompt, drawn, 10 * g)
        s = shapeworld_score(images, prompts)
        assert len(set(s["partial"].tolist())) >= 2  # the group really mixes how much of the prompt is met
        seen |= set(s["partial"].tolist())
        main = 0.5 * s["strict"] + 0.5 * s["partial"]
        order = torch.argsort(s["partial"])
        # strictly increasing in partial: equal counts give equal scores, more met gives more
        for i, j in zip(order[:-1].tolist(), order[1:].tolist()):
            assert (main[j] > main[i]) == bool(s["partial"][j] > s["partial"][i])
            assert (main[j] == main[i]) == bool(s["partial"][j] == s["partial"][i])
    assert len(seen) >= 5  # 0, 1/4, 1/3, 1/2, ... 1: many counts of constraints met, not only all or none


def test_both_judges_give_the_same_win_rates():
    count_judge = load("pairwise", judge="shapeworld")
    score_judge = load("pairwise", judge="scores", judge_options={"reward": MAIN_JOB_SCORE})
    batches = [_group(prompt, drawn, 10 * g) for g, (prompt, drawn) in enumerate(GROUPS.items())]
    images = torch.cat([b[0] for b in batches])
    prompts = [p for b in batches for p in b[1]]
    group_ids = torch.arange(len(batches)).repeat_interleave(5)
    by_count = checked_call(count_judge, images, prompts, group_ids=group_ids)
    by_score = checked_call(score_judge, images, prompts, group_ids=group_ids)
    assert torch.equal(by_count, by_score)
    assert len(set(by_count.tolist())) > 2  # not a degenerate all-ties answer


def test_the_suite_compares_the_pointwise_reward_with_the_constraint_count_judge():
    suite = load_suite("pairwise")
    assert set(suite.algorithms) == {"pointwise", "pairwise_shapeworld"} and suite.reference == "pointwise"
    assert len(suite.seeds) >= 5
    assert "judge: shapeworld" in " ".join(suite.algorithms["pairwise_shapeworld"]["overrides"])
