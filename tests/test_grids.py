"""PIL grids: thumbnails, the layout (every image placed whole, frames by sign), sample-grid blocks."""

import numpy as np
import pytest
import torch
from PIL import Image

from genrl import grids


def solid_images(n: int, size: int = 32) -> torch.Tensor:
    """n images, each one distinct solid colour (none of them white, black-ish text or a frame colour)."""
    colors = torch.tensor([[(i * 37 % 200 + 30) / 255, (i * 11 % 100 + 100) / 255, (150 - i) / 255] for i in range(n)])
    return colors[:, :, None, None].expand(n, 3, size, size).clone()


def test_thumbnails_keep_small_images_and_shrink_large_ones():
    x = torch.rand(2, 3, 32, 32)
    small = grids.thumbnails(x)
    assert small.dtype == torch.uint8 and torch.equal(small, (x * 255).round().to(torch.uint8))
    large = grids.thumbnails(torch.full((1, 3, 512, 384), 0.5))
    assert large.shape == (1, 3, grids.CELL_MAX, 120) and int(large.min()) == int(large.max()) == 128


def test_small_images_are_drawn_enlarged_by_whole_pixels():
    x = torch.rand(1, 3, 32, 32)
    image = np.asarray(grids.render(grids.thumbnails(x), [grids.Block("", [grids.Cell(0)])]))
    expected = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
    top, left = grids.MARGIN + grids.FRAME, grids.MARGIN + grids.FRAME  # no title, an empty label
    assert np.array_equal(image[top : top + 64, left : left + 64], expected)


def test_every_image_is_placed_whole_and_frames_follow_the_advantage_sign(tmp_path):
    n, group = 12, 4
    images = solid_images(n)
    advantages = torch.tensor([1.0, -1.0, 0.0, 2.0] * 3)
    prompts = [f"prompt {i // group}" for i in range(n)]
    path = grids.save_samples(tmp_path / "s.png", images, prompts, torch.rand(n), advantages,
                              torch.arange(n) // group, title="run | update 1")
    canvas = np.asarray(Image.open(path).convert("RGB"))
    thumbs = grids.thumbnails(images)
    for i in range(n):  # 32x32 images are drawn 64x64
        color = thumbs[i, :, 0, 0].numpy()
        assert (canvas == color).all(-1).sum() == 64 * 64, i  # the whole thumbnail, and nowhere else
    frame_area = (64 + 2 * grids.FRAME) ** 2 - 64 * 64
    assert (canvas == grids.GOOD).all(-1).sum() == frame_area * int((advantages > 0).sum())
    assert (canvas == grids.BAD).all(-1).sum() == frame_area * int((advantages < 0).sum())


def test_sample_blocks_show_each_groups_prompt_once_with_reward_and_advantage_per_image():
    prompts = ["a red circle"] * 3 + ["two blue squares"] * 3
    rewards, advantages = torch.tensor([0.5, 1.0, 0.0, 0.25, 0.25, 0.75]), torch.tensor([0.0, 1.2, -1.2, -0.5, -0.5, 1.0])
    group_id = torch.tensor([7, 7, 7, 3, 3, 3])
    blocks = grids.sample_blocks(prompts, rewards, advantages, group_id)
    assert [b.label for b in blocks] == ["a red circle", "two blue squares"]  # in order of appearance
    assert [[c.index for c in b.cells] for b in blocks] == [[0, 1, 2], [3, 4, 5]]
    assert blocks[0].cells[1].caption == "r 1.00 A +1.20" and blocks[0].cells[2].caption == "r 0.00 A -1.20"
    assert [c.frame for c in blocks[0].cells] == [None, grids.GOOD, grids.BAD]


def test_save_grid_labels_each_run_of_one_prompt_once(tmp_path):
    prompts = ["a"] * 2 + ["b"] * 2 + ["a"]
    path = grids.save_grid(solid_images(5), prompts, tmp_path / "g.png", columns=4)
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > 2 * 64
    assert not (tmp_path / "g.tmp.png").exists()  # written atomically


@pytest.mark.parametrize("width", [40, 140, 400])
def test_wrap_keeps_every_word_and_fits_the_width(width):
    text = "a yellow square above a red circle and a particularlylongwordthatcannotfit"
    lines = grids._wrap(text, width)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(grids._font().getlength(line) <= width + 2 for line in lines if " " in line)
