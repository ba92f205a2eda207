"""Video in the outputs a person looks at (issue 33 item 6): filmstrip grids with a row of enlarged frames per
clip and its caption, an animated GIF per group of a sample step and per evaluation at `log.fps`, the GIFs in
the run's own files and in TensorBoard (read back from the event files), wandb through a stand-in module,
and an out-of-range fps refused in one line before anything is written."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genrl import cli, config, evaluation, grids, rundir, video_outputs
from genrl.trainer import Trainer
from test_latent_rank import video_overrides  # registers toy_video and toy_clip_brightness

F, SIZE = 8, 32  # clips of 8 frames of 32 px (ShapeWorld-Motion has 4; 8 checks a longer strip), drawn 64 px


def solid_clips(n: int, frames: int = F, size: int = SIZE) -> torch.Tensor:
    """n clips [n, frames, 3, size, size], every frame of every clip one distinct solid colour (none white,
    text-grey or a frame colour), so where each frame was drawn can be found by its colour."""
    k = torch.arange(n * frames, dtype=torch.float32)
    colors = torch.stack([(k * 37 % 200 + 30), (k * 11 % 100 + 100), 150 - k], dim=1) / 255
    return colors.reshape(n, frames, 3, 1, 1).expand(n, frames, 3, size, size).clone()


def where(canvas: np.ndarray, color) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero((canvas == np.asarray(color)).all(-1))


def test_sample_grid_draws_one_row_of_enlarged_frames_per_clip_with_its_reward_and_advantage(tmp_path):
    n = 4
    clips = solid_clips(n)
    rewards, advantages = torch.tensor([0.25, 0.75, 0.5, 0.5]), torch.tensor([-1.0, 1.0, 0.0, 0.0])
    path = grids.save_samples(tmp_path / "s.png", clips, ["a red circle moving left"] * 2 + ["a blue square"] * 2,
                              rewards, advantages, torch.tensor([0, 0, 1, 1]), title="run | update 1")
    canvas = np.asarray(Image.open(path).convert("RGB"))
    thumbs = grids.thumbnails(clips.flatten(0, 1)).reshape(n, F, 3, SIZE, SIZE)
    zoom = grids.CELL_MIN // SIZE  # 32 px frames are drawn 64 px: a strip's length does not matter
    tops = []
    for i in range(n):
        boxes = []
        for t in range(F):
            ys, xs = where(canvas, thumbs[i, t, :, 0, 0].numpy())
            assert len(ys) == (SIZE * zoom) ** 2, (i, t)  # the whole enlarged frame, and nowhere else
            assert ys.max() - ys.min() + 1 == xs.max() - xs.min() + 1 == SIZE * zoom
            boxes.append((ys.min(), xs.min()))
        assert len({y for y, _ in boxes}) == 1  # one row per clip
        assert [x for _, x in boxes] == sorted(x for _, x in boxes)  # frames left to right in order
        assert boxes[1][1] - boxes[0][1] == SIZE * zoom + grids.FRAME_GAP
        tops.append(boxes[0])
        # the caption r / A beside the row: dark text pixels right of the last frame, within the row
        right = boxes[-1][1] + SIZE * zoom + grids.FRAME
        beside = canvas[boxes[0][0] : boxes[0][0] + grids._line_height(), right : right + 80]
        assert (beside.max(-1) < 120).sum() > 20, i
    assert tops[0][0] < tops[1][0] and tops[2][0] < tops[3][0]  # a group's clips one under the other
    assert tops[0][1] == tops[1][1] and tops[2][1] == tops[3][1] and len(set(tops)) == n
    strip_w, strip_h = F * SIZE * zoom + (F - 1) * grids.FRAME_GAP, SIZE * zoom
    frame_area = (strip_w + 2 * grids.FRAME) * (strip_h + 2 * grids.FRAME) - strip_w * strip_h
    gaps = (F - 1) * grids.FRAME_GAP * strip_h  # the white gaps between frames
    assert len(where(canvas, grids.GOOD)[0]) == frame_area  # clip 1: A > 0
    assert len(where(canvas, grids.BAD)[0]) == frame_area  # clip 0: A < 0
    assert (canvas == 255).all(-1).sum() > n * gaps
    captions = [c.caption for b in grids.sample_blocks(["p"] * n, rewards, advantages, torch.tensor([0, 0, 1, 1]))
                for c in b.cells]
    assert captions == ["r 0.25 A -1.00", "r 0.75 A +1.00", "r 0.50 A +0.00", "r 0.50 A +0.00"]


def test_large_frames_are_not_enlarged_and_an_image_grid_is_the_one_frame_clips_grid(tmp_path):
    clips = solid_clips(1, frames=3, size=100)
    canvas = np.asarray(grids.render_strips(grids.thumbnails(clips), [grids.Block("p", [grids.Cell(0)])], 3))
    assert len(where(canvas, grids.thumbnails(clips[:, 1])[0, :, 0, 0].numpy())[0]) == 100 * 100
    images = solid_clips(6, frames=1)[:, 0]
    args = (["a"] * 3 + ["b"] * 3, torch.rand(6), torch.randn(6), torch.arange(6) // 3)
    as_images = grids.save_samples(tmp_path / "i.png", images, *args)
    as_clips = grids.save_samples(tmp_path / "c.png", images[:, None], *args)
    assert as_images.read_bytes() == as_clips.read_bytes()


def test_evaluation_grid_and_gif_mark_each_clip_pass_or_fail(tmp_path):
    clips = solid_clips(4, frames=3, size=8)
    prompts, seeds = ["a red circle moving left"] * 2 + ["a blue square moving up"] * 2, [0, 1, 0, 1]
    scores = {"strict": torch.tensor([1.0, 0.0, 0.0, 1.0]), "partial": torch.tensor([1.0, 0.5, 0.25, 1.0])}
    result = {"score": 0.5, "partial": 0.69, "per_prompt": {p: 0.5 for p in set(prompts)}, "images_per_prompt": 2}
    record = evaluation.EvalRecord(result, prompts, seeds, scores, [0, 1, 2, 3], grids.thumbnails(clips), clips,
                                   grids.clip_frames(clips))
    evaluation.write(record, tmp_path, "base", "run", fps=5)
    canvas = np.asarray(Image.open(tmp_path / "base.png").convert("RGB"))
    thumbs = grids.thumbnails(clips.flatten(0, 1)).reshape(4, 3, 3, 8, 8)
    for i, expected in enumerate([grids.GOOD, grids.BAD, grids.BAD, grids.GOOD]):  # the frame around each row
        ys, xs = where(canvas, thumbs[i, 0, :, 0, 0].numpy())
        assert len(ys) == 64 * 64  # 8 px frames drawn 64 px
        assert tuple(canvas[ys.min(), xs.min() - 1]) == expected and tuple(canvas[ys.min() - 1, xs.min()]) == expected
    gif = Image.open(tmp_path / "base.gif")
    assert gif.n_frames == 3 and gif.info["loop"] == 0
    assert [durations(gif)] == [[200, 200, 200]]
    # a record saved and loaded keeps its frame count, so the grid drawn again is a filmstrip grid
    assert evaluation.EvalRecord.load(tmp_path / "base.pt").frames == 3


def durations(gif: Image.Image) -> list[int]:
    out = []
    for t in range(gif.n_frames):
        gif.seek(t)
        out.append(gif.info["duration"])
    return out


def test_a_gif_frame_lasts_one_over_fps_in_gifs_unit_of_10_ms():
    assert [video_outputs.frame_duration_ms(fps) for fps in (1, 4, 5, 10, 25, 50)] == [1000, 250, 200, 100, 40, 20]
    assert all(abs(video_outputs.frame_duration_ms(fps) - 1000 / fps) <= 5 for fps in range(1, 51))


@pytest.mark.parametrize("value, why", [("0", "[1, 50]"), ("51", "[1, 50]"), ("-4", "[1, 50]"), ("2.5", "expected int")])
def test_an_out_of_range_fps_is_one_line_naming_the_key_before_anything_is_written(value, why, toy_overrides, tmp_path,
                                                                                    capsys):
    assert cli.main(["train", *video_overrides(toy_overrides), f"log.fps={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"log.fps={value}" in err and why in err
    assert not (tmp_path / "run").exists()
    assert config.load(overrides=["log.fps=50"]).log.fps == 50 and config.load().log.fps == 4


def test_a_video_run_writes_filmstrips_and_a_gif_per_group_logged_to_tensorboard(toy_overrides, tmp_path):
    pytest.importorskip("tensorboard", reason="the test extra installs tensorboard: pip install -e '.[test]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert cli.main(["train", *video_overrides(toy_overrides), "log.fps=5", "log.trackers=[tensorboard]"]) == 0
    groups = 2  # train.prompts_per_update
    for u in (1, 2):
        grid = Image.open(run / "samples" / f"update_{u:06d}.png")
        gifs = sorted((run / "samples").glob(f"update_{u:06d}_group_*.gif"))
        assert [p.name for p in gifs] == [f"update_{u:06d}_group_{k}.gif" for k in range(groups)]
        for path in gifs:
            gif = Image.open(path)
            assert gif.n_frames == 2 and durations(gif) == [200, 200]  # the toy's 2 frames at 5 fps
            assert gif.size[0] < grid.size[0]  # one group of the grid
        # the toy's 8x8 frames are drawn 64x64: a strip of 2 frames is 2*64 + gap wide, 64 high
        canvas = np.asarray(grid.convert("RGB"))
        assert _framed_strips(canvas) == {(64 + 2 * grids.FRAME, 2 * 64 + grids.FRAME_GAP + 2 * grids.FRAME)}
    for tag in ("base", "final", "base_vs_final"):
        gif = Image.open(run / "eval" / f"{tag}.gif")
        assert gif.n_frames == 2 and durations(gif) == [200, 200]
    record = json.loads((run / rundir.RECORD).read_text())
    assert {"samples", "eval"} <= set(record["outputs"])  # the folders the GIFs are in are the run's own

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    videos = {tag: [(e.step, e.encoded_image_string[:6]) for e in events.Images(tag)]
              for tag in events.Tags()["images"] if tag.startswith("video/")}
    gif89 = b"GIF89a"
    assert videos == {"video/samples/group_0": [(1, gif89), (2, gif89)], "video/samples/group_1": [(1, gif89), (2, gif89)],
                      "video/eval/base": [(0, gif89)], "video/eval/final": [(2, gif89)],
                      "video/eval/base_vs_final": [(2, gif89)]}

    # --overwrite deletes what the run wrote, GIFs included (the run's record claims samples/ and eval/)
    assert cli.main(["train", *video_overrides(toy_overrides), "--overwrite", "log.sample_every=0",
                     "log.eval_at_start=false", "log.eval_at_end=false", "train.updates=1"]) == 0
    assert not list(run.rglob("*.gif"))


def _framed_strips(canvas: np.ndarray) -> set[tuple[int, int]]:
    """(height, width) of every green- or red-framed cell: the bounding box of each frame colour's runs."""
    from scipy import ndimage

    sizes = set()
    for color in (grids.GOOD, grids.BAD):
        labels, _ = ndimage.label((canvas == np.asarray(color)).all(-1))
        for box in ndimage.find_objects(labels):
            height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
            if height > 10:  # a frame, not a caption's coloured text
                sizes.add((height, width))
    return sizes


def test_an_image_run_writes_no_gif(toy_overrides, tmp_path):
    Trainer(config.load(overrides=[*toy_overrides, "train.updates=1", "log.eval_at_end=false"])).run()
    run = tmp_path / "run"
    assert (run / "samples" / "update_000001.png").is_file() and (run / "eval" / "base.png").is_file()
    assert not list(run.rglob("*.gif"))


class FakeTracker:
    def __init__(self, name):
        self.name, self.logged = name, []

    def log(self, values, step=None):
        self.logged.append((values, step))


class Media:  # wandb.Video's and trackio.Video's signature: (data_or_path, caption=None, fps=None, format=None)
    def __init__(self, data_or_path, caption=None, fps=None, format=None):
        self.path, self.format = data_or_path, format


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_and_trackio_get_a_video_of_the_gif_and_trackers_without_video_get_nothing(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(Video=Media))
    path = video_outputs.save_gif(tmp_path / "g.gif", [Image.new("RGB", (4, 4), c) for c in ("red", "blue")], 4)
    tracker = FakeTracker(name)
    assert video_outputs.log_video(tracker, "video/samples/group_0", path, "samples", 3)
    ((values, step),) = tracker.logged
    assert step == 3 and values["video/samples/group_0"].path == str(path) and values["video/samples/group_0"].format == "gif"
    other = FakeTracker("comet")  # a tracker genrl cannot show a video on: nothing logged, and it says so
    assert not video_outputs.log_video(other, "video/samples/group_0", path, "samples", 3) and not other.logged


def test_trackio_gets_the_png_grids_as_trackio_images(tmp_path, monkeypatch):
    from genrl import tracking

    monkeypatch.setitem(sys.modules, "trackio", types.SimpleNamespace(Image=Media))
    path = tmp_path / "update_000002.png"
    Image.new("RGB", (4, 4), "red").save(path)
    tracker = FakeTracker("trackio")
    tracking._log_image(tracker, "samples/update", path, "samples", 2)
    ((values, step),) = tracker.logged
    assert step == 2 and values["samples/update"].path == str(path)


def test_video_tags_drop_the_update_number():
    assert video_outputs.video_tag(Path("samples/update_000010_group_1.gif")) == "video/samples/group_1"
    assert video_outputs.video_tag(Path("eval/base.gif")) == "video/eval/base"
    assert video_outputs.video_tag(Path("eval/update_000020.gif")) == "video/eval/update"
