"""Video rewards (issue 33 item 3): image rewards reduced over frames, `flicker` against its closed form,
the motion judge as a reward, and the one-line errors for an image reward given clips or a clip reward
given images, at build time (before anything is written) and at call time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genrl.shapeworld_motion

from genrl import build, config, rewards
from genrl.errors import ConfigError, PromptError, RewardError
from genrl.rewards.video import FrameReduced, frame_indices
from genrl.shapeworld_motion import render_clips, score_clips

MOTION_DIR = Path(genrl.shapeworld_motion.__file__).parent  # the shipped split as prompt files

MOTION_PROMPTS = ["a red circle moving left", "two green triangles moving up"]


class FrameIndex:
    """An image reward whose score is the image's first pixel: frame k of the test clips holds k + 10 · clip."""

    name = "frame_index"
    reads = "images"

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts):
        assert images.dim() == 4, images.shape
        self.calls.append(len(prompts))
        return images[:, 0, 0, 0].clone()


def indexed_clips(n=2, frames=7, size=4):
    """Clips [n, frames, 3, size, size] whose frame k of clip i is the constant k + 10 i."""
    values = torch.arange(frames).float()[None, :] + 10 * torch.arange(n).float()[:, None]
    return values[:, :, None, None, None].expand(n, frames, 3, size, size).clone()


@pytest.mark.parametrize("mode, stride, frames", [("mean", None, [0, 1, 2, 3, 4, 5, 6]), ("first", None, [0]),
                                                  ("every_k", 3, [0, 3, 6]), ("every_k", 4, [0, 4])])
def test_reductions_score_the_stated_frames_and_average(mode, stride, frames):
    assert frame_indices(7, mode, stride) == frames
    inner = FrameIndex()
    reduced = FrameReduced(inner, mode, stride)
    scores = rewards.checked_call(reduced, indexed_clips(), ["p", "q"])
    expected = torch.tensor([sum(frames) / len(frames), 10 + sum(frames) / len(frames)])
    torch.testing.assert_close(scores, expected)
    assert inner.calls == [2] * len(frames)  # one batch of N images per chosen frame


def test_a_reduction_is_a_reward_option_of_any_image_reward_and_of_multis_entries():
    clips = torch.rand(3, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    brightness = rewards.load("brightness")
    mean = rewards.load("brightness", frames="mean")
    assert isinstance(mean, FrameReduced) and mean.reads == "clips"
    torch.testing.assert_close(mean(clips, ["a"] * 3), torch.stack([brightness(clips[:, k], ["a"] * 3) for k in range(4)], 1).mean(1))
    torch.testing.assert_close(rewards.load("brightness", frames="first")(clips, ["a"] * 3), brightness(clips[:, 0], ["a"] * 3))
    multi = rewards.load("multi", rewards=[{"name": "flicker", "weight": 1.0},
                                           {"name": "brightness", "weight": 0.5, "options": {"frames": "every_k", "frame_stride": 2}}])
    parts = multi.components(clips, ["a"] * 3)
    torch.testing.assert_close(parts[:, 1], (brightness(clips[:, 0], ["a"] * 3) + brightness(clips[:, 2], ["a"] * 3)) / 2)
    torch.testing.assert_close(rewards.checked_call(multi, clips, ["a"] * 3), parts[:, 0] + 0.5 * parts[:, 1])


@pytest.mark.parametrize("options, match", [
    ({"frames": "last"}, "frames='last' is not allowed: choose one of mean, first, every_k"),
    ({"frames": "every_k"}, "frames=every_k needs frame_stride"),
    ({"frames": "every_k", "frame_stride": 0}, "frame_stride, a whole number >= 1, got 0"),
    ({"frames": "mean", "frame_stride": 2}, "frame_stride=2 applies to frames=every_k only"),
    ({"frame_stride": 2}, "frame_stride=2 needs frames=every_k"),
])
def test_bad_reduction_options_are_one_line(options, match):
    with pytest.raises(ConfigError, match=match):
        rewards.load("brightness", **options)


def test_clip_rewards_and_multi_take_no_reduction():
    with pytest.raises(ConfigError, match="'flicker' judges clips already"):
        rewards.load("flicker", frames="mean")
    with pytest.raises(ConfigError, match="give frames on each image reward of reward.options.rewards"):
        rewards.load("multi", rewards=[{"name": "brightness"}], frames="mean")


# -- flicker ------------------------------------------------------------------------------------------

def test_flicker_is_minus_the_mean_absolute_difference_of_consecutive_frames():
    flicker = rewards.load("flicker")
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 6, 5, generator=g), torch.rand(3, 6, 5, generator=g)
    still = a.expand(8, 3, 6, 5)
    alternating = torch.stack([a if t % 2 == 0 else b for t in range(8)])
    ramp = torch.stack([torch.full((3, 6, 5), t / 10) for t in range(5)])  # each step 0.1 brighter
    clips = [still, alternating]
    scores = rewards.checked_call(flicker, torch.stack(clips), ["x", "y"])
    assert scores[0] == 0.0  # the best value
    torch.testing.assert_close(scores[1], -(a - b).abs().mean())
    torch.testing.assert_close(flicker(ramp[None], ["z"]), torch.tensor([-0.1]))
    torch.testing.assert_close(flicker(torch.stack([still[:2], alternating[:2]]), ["x", "y"]), scores)  # any clip length
    assert (scores <= 0).all() and scores[1] < scores[0]
    with pytest.raises(RewardError, match="2 frames or more"):
        flicker(still[None, :1], ["x"])


# -- the motion judge as a reward ------------------------------------------------------------------------

def test_shapeworld_motion_reward_is_the_judges_strict_and_partial():
    clips = render_clips(MOTION_PROMPTS, [0, 1])
    wrong = ["a red circle moving right", "two green triangles moving up"]
    judge = score_clips(clips, wrong)
    for mode in ("strict", "partial"):
        reward = rewards.load("shapeworld_motion", mode=mode)
        torch.testing.assert_close(rewards.checked_call(reward, clips, wrong), judge[mode])
    assert judge["strict"].tolist() == [0.0, 1.0] and 0 < judge["partial"][0] < 1
    assert rewards.load("shapeworld_motion")(clips, MOTION_PROMPTS).tolist() == [1.0, 1.0]  # partial by default
    with pytest.raises(ConfigError, match="mode='loose' is not one of partial, strict"):
        rewards.load("shapeworld_motion", mode="loose")
    with pytest.raises(PromptError, match="sideways"):
        rewards.load("shapeworld_motion").check_prompt("a red circle moving sideways")


def test_the_video_main_jobs_multi_of_strict_and_partial():
    multi = rewards.load("multi", rewards=[{"name": "shapeworld_motion", "weight": 0.5, "options": {"mode": "strict"}},
                                           {"name": "shapeworld_motion", "weight": 0.5, "options": {"mode": "partial"}}])
    clips = render_clips(MOTION_PROMPTS, [0, 1])
    prompts = ["a red circle moving right", MOTION_PROMPTS[1]]
    judge = score_clips(clips, prompts)
    torch.testing.assert_close(rewards.score(multi, clips, prompts, torch.tensor([0, 1])),
                               0.5 * judge["strict"] + 0.5 * judge["partial"])


# -- bad input: one line, before anything is written ------------------------------------------------------

def test_an_image_reward_given_clips_and_a_clip_reward_given_images_are_refused_at_call_time():
    clips = render_clips(MOTION_PROMPTS[:1], [0])
    with pytest.raises(RewardError, match=r"'shapeeval' judges images .* given clips \[1, 4, 3, 32, 32\].*frames: mean \| first \| every_k"):
        rewards.checked_call(rewards.load("shapeeval"), clips, ["a red circle"])
    for name in ("shapeworld_motion", "flicker"):
        with pytest.raises(RewardError, match=rf"'{name}' judges clips \[N, F, 3, H, W\] but was given \[1, 3, 32, 32\]"):
            rewards.checked_call(rewards.load(name), clips[:, 0], MOTION_PROMPTS[:1])


def video_config(tmp_path, reward: dict, model: str = "tiny_video") -> config.Config:
    options = {"pretrained": False, "num_layers": 1, "attention_head_dim": 12} if model == "tiny_video" else {}
    prompts = ((str(MOTION_DIR / "train_prompts.txt"), str(MOTION_DIR / "eval_prompts.txt")) if model == "tiny_video"
               else ("shapeworld:train", "shapeworld:eval"))
    return config.from_dict({"algorithm": "flow_grpo", "model": {"name": model, "options": options}, "reward": reward,
                             "prompts": {"train": prompts[0], "eval": prompts[1]}, "run_dir": str(tmp_path / "run"),
                             "sampling": {"num_steps": 2}, "train": {"prompts_per_update": 1, "group_size": 2, "minibatches": 1}})


def test_a_video_model_with_an_image_reward_without_a_reduction_fails_at_build(tmp_path):
    with pytest.raises(ConfigError, match=r"reward 'shapeeval' judges images but model.name='tiny_video' makes clips "
                                          r"\(latents \[3, 4, 32, 32\]\): give the image reward a reduction over frames"):
        build.build(video_config(tmp_path, {"name": "shapeeval", "options": {"mode": "strict"}}))
    with pytest.raises(ConfigError, match="reward 'brightness' judges images but model.name='tiny_video'"):  # a multi's entry
        build.build(video_config(tmp_path, {"name": "multi", "options": {"rewards": [
            {"name": "shapeworld_motion"}, {"name": "brightness", "weight": 0.1}]}}))
    assert not (tmp_path / "run").exists()
    parts = build.build(video_config(tmp_path, {"name": "multi", "options": {"rewards": [
        {"name": "shapeworld_motion"}, {"name": "brightness", "weight": 0.1, "options": {"frames": "first"}}]}}))
    assert parts.reward.parts[1].reads == "clips"


@pytest.mark.parametrize("name", ["shapeworld_motion", "flicker"])
def test_a_clip_reward_with_an_image_model_fails_at_build(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"reward '{name}' judges clips \[N, F, 3, H, W\] but model.name='tiny' makes "
                                          r"images \(latents \[\d+, \d+, \d+\]\)"):
        build.build(video_config(tmp_path, {"name": name, "options": {}}, model="tiny"))


def test_the_cli_prints_one_line_and_writes_nothing(tmp_path, capsys):
    from genrl import cli

    run_dir = tmp_path / "run"
    code = cli.main(["train", "model.name=tiny_video", "model.options={pretrained: false, num_layers: 1, attention_head_dim: 12}",
                     f"prompts.train={MOTION_DIR / 'train_prompts.txt'}", f"prompts.eval={MOTION_DIR / 'eval_prompts.txt'}",
                     f"run_dir={run_dir}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "reward 'shapeeval' judges images" in err and "frames: mean" in err
    assert not run_dir.exists()


def test_subclasses_of_genrls_image_rewards_are_checked_and_a_users_reward_is_not():
    from genrl.rewards.base import reads
    from genrl.rewards.simple import Brightness

    class MyBrightness(Brightness):
        pass

    assert reads(MyBrightness()) == "images" and reads(rewards.load("multi", rewards=[{"name": "flicker"}])) == "any"
    assert reads(FrameIndex()) == "images" and reads(lambda images, prompts: images.mean()) is None
