"""ShapeWorld: grammar, fixed split, renderer and scorer (genrl/shapeworld)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
import torch

from genrl.shapeworld import (
    CATEGORIES,
    COLORS,
    PALETTE,
    RELATIONS,
    SHAPES,
    VOCABULARY,
    PromptError,
    all_prompts,
    category,
    eval_prompts,
    evaluate,
    format_prompt,
    parse,
    render,
    render_batch,
    score,
    train_prompts,
)
from genrl.shapeworld.prompts import composition_key, eval_size, generate_split
from genrl.shapeworld.rendering import MIN_GAP, sample_layout

SEEDS = (0, 1, 2, 3)


# --- grammar ---------------------------------------------------------------------------


def test_every_prompt_round_trips_through_parse():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 18 + 108 + 36 + 1224 + 45
    for prompt in prompts:
        assert format_prompt(parse(prompt)) == prompt


def test_categories_follow_the_documented_rules():
    assert category("a red circle") == "single_object"
    assert category("a red circle and a blue square") == "two_objects"
    assert category("a red circle and a red square") == "two_objects"  # same colour, different shapes
    assert category("a red circle and a blue circle") == "color_attr"  # same shape, different colours
    assert category("three yellow squares") == "counting"
    assert category("an orange square below a red square") == "position"
    assert {category(p) for p in all_prompts()} == set(CATEGORIES)
    relation = parse("a red circle to the right of a blue square").relation
    assert (relation.subject, relation.relation, relation.object) == (0, "to the right of", 1)


def test_vocabulary_covers_every_prompt_word():
    words = {word for prompt in all_prompts() for word in prompt.split()}
    assert sorted(words) == VOCABULARY


@pytest.mark.parametrize(
    "prompt, culprit",
    [
        ("a red circel", "circel"),
        ("an red circle", "an"),
        ("a orange square", "orange"),
        ("a red circle to the left", "to the left of"),
        ("", "empty"),
        ("four red circles", "four"),
        ("a red circles", "circles"),
        ("a red circle and a red circle", "two red circles"),
        ("two red circles above a blue square", "above"),
        ("a red circle beside a blue square", "beside"),
        ("a red circle and", "ends"),
    ],
)
def test_bad_prompts_raise_prompt_error_quoting_the_prompt(prompt, culprit):
    with pytest.raises(PromptError) as error:
        parse(prompt)
    assert isinstance(error.value, ValueError)
    assert repr(prompt) in str(error.value) and culprit in str(error.value)


# --- split -----------------------------------------------------------------------------


def test_shipped_split_files_equal_the_generator():
    train, evaluation = generate_split()
    assert train_prompts() == train and eval_prompts() == evaluation


def test_split_sizes_and_disjoint_compositions():
    train, evaluation = train_prompts(), eval_prompts()
    per_category = Counter(category(p) for p in evaluation)
    assert per_category == {"single_object": 6, "two_objects": 10, "counting": 10, "position": 10, "color_attr": 10}
    assert eval_size(18) == 6 and eval_size(1224) == 10
    assert set(train).isdisjoint(evaluation)
    eval_keys = {composition_key(parse(p)) for p in evaluation}
    assert not eval_keys & {composition_key(parse(p)) for p in train}
    assert Counter(category(p) for p in train)["position"] == 60


def test_mirrored_position_prompts_share_a_composition():
    left = parse("a red circle to the left of a blue square")
    right = parse("a blue square to the right of a red circle")
    assert composition_key(left) == composition_key(right)
    assert composition_key(left) != composition_key(parse("a blue square to the left of a red circle"))


# --- renderer --------------------------------------------------------------------------


def test_render_shape_range_and_determinism():
    image = render("two green triangles", seed=7)
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert torch.equal(image, render("two green triangles", seed=7))
    assert not torch.equal(image, render("two green triangles", seed=8))
    colors = {tuple(round(v, 2) for v in pixel) for pixel in image.reshape(3, -1).T.tolist()}
    assert colors == {PALETTE["background"], PALETTE["green"]}  # hard edges: no mixed pixels


def test_render_batch_stacks_renders_and_checks_lengths():
    prompts = ["a red circle", "a blue square above a red circle"]
    batch = render_batch(prompts, [3, 4])
    assert batch.shape == (2, 3, 32, 32)
    assert torch.equal(batch[1], render(prompts[1], 4))
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        render_batch(prompts, [0])


def test_layouts_keep_objects_apart_and_inside():
    for prompt in ["three red squares", "a red circle to the left of a blue square"]:
        for seed in range(20):
            boxes = sample_layout(parse(prompt), seed)
            for i, box in enumerate(boxes):
                assert 0 <= box.x0 and box.x0 + box.size <= 32 and 0 <= box.y0 and box.y0 + box.size <= 32
                assert all(box.separated_from(other, MIN_GAP) for other in boxes[:i])


# --- scorer ----------------------------------------------------------------------------


def _strict_mean(prompts: list[str], seeds=SEEDS) -> float:
    images = render_batch([p for _ in seeds for p in prompts], [s for s in seeds for _ in prompts])
    return score(images, [p for _ in seeds for p in prompts])["strict"].mean().item()


def test_ground_truth_scores_strict_on_eval_and_train_prompts():
    assert _strict_mean(eval_prompts()) >= 0.98
    assert _strict_mean(random.Random(0).sample(train_prompts(), 60)) >= 0.98


def _one_change_perturbations(prompt: str) -> list[str]:
    """Every valid prompt differing from `prompt` in exactly one colour, shape, count or relation."""
    constraints = parse(prompt)
    variants = []
    for i, obj in enumerate(constraints.objects):
        changes = [{"color": c} for c in COLORS if c != obj.color] + [{"shape": s} for s in SHAPES if s != obj.shape]
        changes += [{"count": n} for n in (2, 3) if obj.count > 1 and n != obj.count]
        for change in changes:
            objects = list(constraints.objects)
            objects[i] = dataclasses.replace(obj, **change)
            variants.append(dataclasses.replace(constraints, objects=tuple(objects)))
    if constraints.relation is not None:
        for relation in RELATIONS:
            if relation != constraints.relation.relation:
                new_relation = dataclasses.replace(constraints.relation, relation=relation)
                variants.append(dataclasses.replace(constraints, relation=new_relation))
    valid = []
    for variant in variants:
        try:
            valid.append(format_prompt(parse(format_prompt(variant))))
        except PromptError:  # e.g. "a red circle and a red circle"
            pass
    return valid


def test_renders_fail_prompts_that_differ_in_one_attribute():
    rng = random.Random(0)
    images, prompts, kinds = [], [], Counter()
    for source in eval_prompts():
        image = render(source, rng.randrange(1000))
        for perturbed in _one_change_perturbations(source):
            images.append(image)
            prompts.append(perturbed)
            kinds[category(source)] += 1
    assert set(kinds) == set(CATEGORIES)
    strict = score(torch.stack(images), prompts)["strict"]
    assert strict.mean().item() <= 0.05


def test_relation_perturbations_fail_on_the_dominant_axis():
    prompt = "a red circle above a blue square"
    images = render_batch([prompt] * 8, range(8))
    for relation in ("to the left of", "to the right of", "below"):
        other = prompt.replace("above", relation)
        assert score(images, [other] * 8)["strict"].sum() == 0


def test_noise_and_blank_images_score_zero():
    prompts = eval_prompts()
    noise = torch.rand(len(prompts), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blank = torch.tensor(PALETTE["background"]).view(1, 3, 1, 1).expand(len(prompts), 3, 32, 32)
    assert score(noise, prompts)["strict"].mean() <= 0.02
    assert score(blank, prompts)["strict"].sum() == 0
    assert score(torch.zeros(len(prompts), 3, 32, 32), prompts)["partial"].sum() == 0


def test_partial_counts_the_constraints_met():
    image = render("two green triangles", 0)[None]
    result = score(image, ["three green triangles"])
    assert result["strict"].item() == 0
    assert result["partial"].item() == pytest.approx(1 / 3)  # present yes; exactly 3 no; 3 objects no
    result = score(image, ["a green triangle and a red square"])
    assert result["partial"].item() == pytest.approx(2 / 3)  # triangle present; no red square; 2 objects


def test_score_is_robust_to_blur_and_noise():
    prompts = eval_prompts()
    images = render_batch(prompts, [5] * len(prompts))
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).div(16).expand(3, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(images, (1,) * 4, mode="replicate"), kernel, groups=3)
    noisy = (blurred + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert score(noisy, prompts)["strict"].mean() >= 0.95


def test_score_works_at_64_pixels():
    prompts = eval_prompts()
    images = render_batch(prompts, [1] * len(prompts)).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert images.shape[-2:] == (64, 64)
    assert score(images, prompts)["strict"].mean() >= 0.98


def test_score_rejects_bad_inputs():
    image = render("a red circle", 0)[None]
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        score(image, ["a red circle", "a blue circle"])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        score(image[0], ["a red circle"])
    with pytest.raises(PromptError, match="circel"):
        score(image, ["a red circel"])


def test_evaluate_summarises_per_category_and_per_prompt():
    prompts = ["a red circle", "a red circle", "two blue squares", "a red circle above a blue square"]
    images = render_batch(prompts, [0, 1, 2, 3])
    images[3] = images[3].flip(1)  # upside down: the relation becomes "below"
    result = evaluate(images, prompts)
    assert set(result) == {"score", "partial", "per_category", "per_prompt"}
    assert result["score"] == pytest.approx(0.75)
    assert result["per_category"] == {"single_object": 1.0, "counting": 1.0, "position": 0.0}
    assert result["per_prompt"]["a red circle"] == {"strict": 1.0, "partial": 1.0, "n": 2}
    assert result["per_prompt"]["a red circle above a blue square"]["partial"] == pytest.approx(3 / 4)
