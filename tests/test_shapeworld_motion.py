"""ShapeWorld-Motion, the embedded video world: grammar, renders, the motion judge and the split."""

from __future__ import annotations

import pytest
import torch

from genrl.errors import PromptError
from genrl.shapeworld.grammar import COLORS, SHAPES
from genrl.shapeworld_motion import (
    FRAMES,
    SIZE,
    eval_prompts,
    evaluate_clips,
    parse,
    render_clip,
    render_clips,
    score_clips,
    train_prompts,
)
from genrl.shapeworld_motion.prompts import make_split

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def one_word_changes(prompt: str) -> list[str]:
    """Prompts that differ from `prompt` in one direction, colour, shape, count or relative word."""
    words = prompt.split()
    out = []
    for i, w in enumerate(words):
        swaps = []
        if w in OPPOSITE and words[i - 1] == "moving":
            swaps.append(OPPOSITE[w])
        if w in COLORS:
            swaps.append(next(c for c in COLORS if c not in words))
        if w in SHAPES:
            swaps.append(next(s for s in SHAPES if s not in words))
        if w in ("two", "three"):
            swaps.append("three" if w == "two" else "two")
        for s in swaps:
            changed = words[:i] + [s] + words[i + 1:]
            if s in COLORS and changed[i - 1] in ("a", "an"):  # "an" before orange only
                changed[i - 1] = "an" if s == "orange" else "a"
            out.append(" ".join(changed))
    out.append(prompt.replace("toward", "away from") if "toward" in prompt else prompt.replace("away from", "toward"))
    out.append(prompt.replace("staying still", "moving left", 1) if "staying still" in prompt
               else prompt.replace("moving " + next((d for d in OPPOSITE if f"moving {d}" in prompt), "x"), "staying still", 1))
    return [p for p in out if p != prompt]


def test_renders_score_one_strict_on_every_held_out_prompt_and_seed():
    prompts = eval_prompts() * 2
    seeds = list(range(len(prompts)))
    clips = render_clips(prompts, seeds)
    assert clips.shape == (len(prompts), FRAMES, 3, SIZE, SIZE)
    result = evaluate_clips(clips, prompts)
    assert result["score"] == 1.0 and result["partial"] == 1.0
    assert set(result["per_category"]) == {"single_motion", "two_motions", "counting_motion", "relative_motion"}


def test_a_prompt_with_one_word_changed_scores_zero_strict():
    checked = 0
    for seed, prompt in enumerate(eval_prompts()):
        clip = render_clip(prompt, seed)[None]
        for changed in one_word_changes(prompt):
            parse(changed)  # still inside the grammar
            assert score_clips(clip, [changed])["strict"].item() == 0.0, (prompt, changed)
            checked += 1
    assert checked > 3 * len(eval_prompts())


def test_blurred_and_noisy_renders_still_pass():
    prompts = eval_prompts()
    clips = render_clips(prompts, list(range(len(prompts))))
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    flat = clips.reshape(-1, 3, SIZE, SIZE)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    assert score_clips(blurred.reshape(clips.shape), prompts)["strict"].mean().item() == 1.0
    noisy = (clips + 0.05 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert score_clips(noisy, prompts)["strict"].mean().item() == 1.0


def test_a_still_frame_repeated_fails_a_motion_and_passes_staying_still():
    still = render_clip("a red circle moving left", 3)[:1].expand(FRAMES, -1, -1, -1)[None]
    assert score_clips(still, ["a red circle moving left"])["strict"].item() == 0.0
    assert score_clips(still, ["a red circle staying still"])["strict"].item() == 1.0
    # partial credit: present and exactly one object, the motion missing
    assert score_clips(still, ["a red circle moving left"])["partial"].item() == pytest.approx(2 / 3)


def test_an_object_missing_from_one_frame_is_not_present():
    clip = render_clip("a blue square moving down", 1).clone()
    clip[2] = clip[2, :, :1, :1]  # frame 2 (a middle one): background only
    assert score_clips(clip[None], ["a blue square moving down"])["strict"].item() == 0.0


def test_the_frames_score_counts_the_frames_each_check_holds_in():
    prompts = ["two green triangles moving up", "a blue square moving up and a green triangle staying still"]
    clips = torch.stack([render_clip(p, 3) for p in prompts])
    assert score_clips(clips, prompts)["frames"].tolist() == [1.0, 1.0]
    blanked = clips.clone()
    blanked[:, 2] = blanked[:, 2, :, :1, :1]  # frame 2: background only, every check of that frame fails
    scores = score_clips(blanked, prompts)
    assert scores["frames"].tolist() == [(FRAMES - 1) / FRAMES] * 2 and scores["partial"].tolist() == [0.0, 0.0]
    # frame 2 holds only a blue square: of its 3 checks (square found, triangle found, 2 objects) 1 holds
    one_gone = clips[1].clone()
    one_gone[2] = render_clip("a blue square moving up", 3)[2]
    assert score_clips(one_gone[None], prompts[1:])["frames"].item() == pytest.approx((FRAMES - 1 + 1 / 3) / FRAMES)


def test_renders_are_fixed_by_prompt_and_seed():
    assert torch.equal(render_clip("two green triangles moving up", 5), render_clip("two green triangles moving up", 5))
    assert not torch.equal(render_clip("two green triangles moving up", 5), render_clip("two green triangles moving up", 6))


def test_the_split_keeps_every_held_out_scene_out_of_training_under_any_wording():
    train, held_out = train_prompts(), eval_prompts()
    assert (train, held_out) == tuple(make_split().values())  # the shipped files are the generator's
    train_scenes = {parse(p).scene for p in train}
    assert not {parse(p).scene for p in held_out} & train_scenes
    swapped = "a green triangle staying still and a blue square moving up"
    assert parse(swapped).scene == parse("a blue square moving up and a green triangle staying still").scene


@pytest.mark.parametrize("prompt, word", [
    ("a red circle moving sideways", "'sideways'"),
    ("a orange square moving up", "wrong article 'a' before 'orange'"),
    ("a red circle moving left and a red circle staying still", "must differ"),
    ("a red circle moving toward a red circle", "must differ"),
    ("two red circle moving up", "'circle'"),
    ("a red circle staying", "the end of the prompt"),
])
def test_a_prompt_outside_the_grammar_names_the_bad_word(prompt, word):
    with pytest.raises(PromptError, match=word):
        parse(prompt)
