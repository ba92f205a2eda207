"""Built-in cheap rewards: shapeeval, JPEG (in)compressibility, brightness (genrl/rewards)."""

from __future__ import annotations

import pytest
import torch

from genrl import rewards
from genrl.shapeworld import render_batch

PROMPTS = ["a red circle", "two blue squares", "a red circle and a blue square"]


def _noise(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["shapeeval", "jpeg_compressibility", "jpeg_incompressibility", "brightness"])
def test_builtin_rewards_load_by_name_and_return_one_score_per_image(name):
    reward = rewards.load(name)
    assert reward.name == name
    scores = rewards.checked_call(reward, render_batch(PROMPTS, [0, 1, 2]), PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32


def test_shapeeval_modes():
    images = render_batch(PROMPTS, [0, 1, 2])
    wrong = ["a red circle", "three blue squares", "a red circle and a green square"]
    partial = rewards.load("shapeeval")(images, wrong)
    strict = rewards.load("shapeeval", mode="strict")(images, wrong)
    assert strict.tolist() == [1.0, 0.0, 0.0]
    assert partial[0] == 1.0 and 0 < partial[1] < 1 and 0 < partial[2] < 1
    with pytest.raises(ValueError, match="mode='exact'"):
        rewards.load("shapeeval", mode="exact")


def test_flat_images_compress_better_than_noise():
    flat = torch.full((2, 3, 32, 32), 0.5)
    noise = _noise(2)
    compressibility = rewards.load("jpeg_compressibility")
    incompressibility = rewards.load("jpeg_incompressibility")
    assert (compressibility(flat, ["x"] * 2) > compressibility(noise, ["x"] * 2)).all()
    assert (incompressibility(noise, ["x"] * 2) > incompressibility(flat, ["x"] * 2)).all()
    assert torch.equal(compressibility(noise, ["x"] * 2), -incompressibility(noise, ["x"] * 2))


def test_brightness_orders_images_by_mean_value():
    brightness = rewards.load("brightness")
    images = torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 0.25), torch.ones(3, 8, 8)])
    scores = brightness(images, ["x"] * 3)
    assert scores.tolist() == [0.0, 0.25, 1.0]


def test_image_rewards_reject_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        rewards.load("brightness")(torch.zeros(3, 8, 8), ["x"])
