"""Latents of any rank (issue 33 item 1; docs/video.md, "Latents of any rank").

A video latent [N, C, F, H, W] goes through the env, the dynamics, the objectives, packing and the
memory benchmark as an image latent [N, C, H, W] does. Two kinds of checks:

- every per-sample reduction (log-densities, KL, L1rel, the forward-process losses) is [N] on a 5-D
  latent and equals itself on the same numbers seen at other ranks ([N, C, F·H, W], [N, C·F·H·W], 6-D):
  a reduction over a fixed tuple of dims — flow_grpo's Wan KL averaged over (1, 2, 3) and so kept W —
  fails both (tested below on that very formula);
- whole runs: a toy video model (tests/toy_video_adapter.py) trains with the GRPO family, a tree
  algorithm and the forward-process family exactly as the same model seen through 4-D latents does,
  resumes, writes sample and evaluation grids of filmstrips; an image model seen as a one-frame
  video gives the image model's metrics, evaluation and sample grid exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from torch import Tensor

from conftest import TOY_PROMPTS, resumed_and_uninterrupted
from genrl import config, dynamics, grids, keys, models, rewards
from genrl.algorithms.awm import awm_loss
from genrl.algorithms.diffusion_nft import adaptive_x0_loss, nft_loss
from genrl.envs import DenoisingEnv
from genrl.policy import DynamicsHead, StepGaussian, make_policy, stochastic_steps
from genrl.trainer import Trainer
from toy_adapter import ToyAdapter
from toy_video_adapter import FramesAsRows, OneFrame, ToyVideoAdapter


class ClipBrightness:
    """Mean pixel of clips [N, F, 3, H, W]; refuses anything else, so a run that hands a reward images fails."""

    name = "toy_clip_brightness"

    def __call__(self, clips, prompts):
        assert clips.dim() == 5 and clips.shape[2] == 3, f"expected clips [N, F, 3, H, W], got {list(clips.shape)}"
        return clips.float().flatten(1).mean(1)


for name, factory in {"toy_video": ToyVideoAdapter, "toy_video_as_rows": lambda **kw: FramesAsRows(ToyVideoAdapter(**kw)),
                      "toy_one_frame": lambda **kw: OneFrame(ToyAdapter(**kw))}.items():
    if name not in models.MODELS:
        models.register(name)(factory)
if "toy_clip_brightness" not in rewards.REWARDS:
    rewards.register("toy_clip_brightness")(ClipBrightness)

N, C, F, H, W = 3, 2, 3, 4, 5  # all different, so a reduction over the wrong dims cannot agree by chance
VIEWS = {  # the same numbers at other ranks
    "[N, C, F·H, W]": lambda t: t.flatten(2, 3),
    "[N, C·F·H·W]": lambda t: t.flatten(1),
    "[N, C, 1, F, H, W]": lambda t: t.unsqueeze(2),
}
TIMING = {"wall_s", "images_per_s", "peak_mem_mb"}


def latents(*seeds: int) -> list[Tensor]:
    return [torch.randn(N, C, F, H, W, generator=torch.Generator().manual_seed(s)) for s in seeds]


def assert_reduces_every_dim(fn, *args):
    """fn(*args) with 5-D latents among `args` is per sample, [N], and equal to fn of the same latents at every
    other rank (the reduction is over every non-batch dim, whatever their number)."""
    out = fn(*args)
    assert out.shape == (N,), f"a per-sample value must be [{N}], got {list(out.shape)}: a non-batch dim was not reduced"
    for name, view in VIEWS.items():
        seen = fn(*[view(a) if isinstance(a, Tensor) and a.dim() == 5 else a for a in args])
        torch.testing.assert_close(seen, out, rtol=1e-6, atol=1e-6, msg=lambda m: f"latents seen as {name}: {m}")


STD = torch.tensor([0.3, 0.0, 0.7])  # one deterministic sample: its log-prob and KL are 0


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("form", sorted(dynamics.LOG_PROBS))
def test_log_densities_reduce_every_non_batch_dim(form, reduce):
    sample, mean = latents(0, 1)
    assert_reduces_every_dim(lambda s, m: dynamics.LOG_PROBS[form](s, m, STD, reduce), sample, mean)
    # the closed forms over all C·F·H·W elements of each sample (0 where s = 0)
    s = torch.where(STD > 0, STD, 1.0)[:, None]
    squared = ((sample - mean) ** 2).flatten(1)
    elements = -squared if form == "squared_error" else -squared / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    expected = torch.where(STD > 0, elements.mean(1) if reduce == "mean" else elements.sum(1), 0.0)
    torch.testing.assert_close(dynamics.LOG_PROBS[form](sample, mean, STD, reduce), expected)


def test_kl_l1rel_and_the_forward_process_losses_reduce_every_non_batch_dim():
    a, b, c, d = latents(0, 1, 2, 3)
    assert_reduces_every_dim(dynamics.kl_to_reference, a, b, STD)
    assert torch.allclose(dynamics.kl_to_reference(a, b, STD)[0], ((a[0] - b[0]) ** 2).mean() / (2 * 0.3**2))
    assert_reduces_every_dim(dynamics.relative_l1, a, b)
    t, advantage = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([1.0, -0.5, 0.25])
    assert_reduces_every_dim(lambda v, target: awm_loss(v, target, t, advantage, 0.25), a, b)
    assert_reduces_every_dim(adaptive_x0_loss, a, b)
    assert_reduces_every_dim(lambda x0, x_t, v, v_old: nft_loss(x0, x_t, t, v, v_old, advantage.clamp(0, 1), 0.7),
                             a, b, c, d)


@pytest.mark.parametrize("kind", sorted(dynamics.MEAN_STD))
def test_a_step_of_every_dynamics_keeps_the_latent_shape_and_reduces_its_log_prob(kind):
    x, v, noise = latents(0, 1, 2)
    sigma, sigma_next = torch.tensor([1.0, 0.6, 0.3]), torch.tensor([0.8, 0.4, 0.1])

    def log_prob(x, v, noise):
        out = dynamics.step(kind, x, v, sigma, sigma_next, noise, sigma_1=0.8) if kind == "flow_sde" else \
            dynamics.step(kind, x, v, sigma, sigma_next, noise)
        assert out.sample.shape == x.shape and out.mean.shape == x.shape and out.std.shape == (N,)
        return out.log_prob

    assert_reduces_every_dim(log_prob, x, v, noise)


def test_the_policys_head_and_distribution_take_5d_latents_of_rows_and_of_a_rollout():
    k = 4
    sigmas = dynamics.flow_sigmas(k)
    head = DynamicsHead(sigmas, stochastic_steps(k), "flow_sde", a=0.7)
    x, v, action = latents(0, 1, 2)
    step = torch.tensor([0, 1, 3])  # step 3 is the deterministic last one
    loc, scale = head(x, v, step)
    assert loc.shape == x.shape and scale.shape == (N,) and scale[2] == 0
    assert_reduces_every_dim(lambda x, v, a: StepGaussian(*head(x, v, step)).log_prob(a), x, v, action)
    # a rollout's [n, R] batch of latents: the event is the latent, whatever its rank
    grid = lambda t: t.reshape(1, N, C, F, H, W)  # noqa: E731
    loc2, scale2 = head(grid(x), grid(v), step.reshape(1, N))
    assert loc2.shape == (1, N, C, F, H, W) and scale2.shape == (1, N)
    dist = StepGaussian(loc2, scale2)
    assert dist.event_shape == (C, F, H, W)
    assert torch.equal(dist.log_prob(grid(action)).reshape(N), StepGaussian(loc, scale).log_prob(action))


def flow_grpo_wan_kl(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """flow_grpo's Wan KL (issue 33): ((μ − μ_ref)²).mean(dim=(1, 2, 3)) / (2·s²), four dims hard-coded."""
    return ((mean - ref_mean) ** 2).mean(dim=(1, 2, 3)) / (2 * std.reshape(-1, *[1] * (mean.dim() - 4)) ** 2)


def test_the_check_catches_a_reduction_over_four_hard_coded_dims():
    """The class of bug: correct on images, a W left unreduced on video latents. Both the [N] shape and the
    comparison with the 4-D view catch it, and genrl's KL passes where it fails."""
    a, b = latents(0, 1)
    std = torch.tensor([0.3, 0.5, 0.7])
    four_d = [VIEWS["[N, C, F·H, W]"](t) for t in (a, b)]
    torch.testing.assert_close(flow_grpo_wan_kl(*four_d, std), dynamics.kl_to_reference(*four_d, std))  # images: fine
    assert flow_grpo_wan_kl(a, b, std).shape == (N, W)  # video: W is left
    with pytest.raises(AssertionError, match="a non-batch dim was not reduced"):
        assert_reduces_every_dim(flow_grpo_wan_kl, a, b, std)
    assert_reduces_every_dim(dynamics.kl_to_reference, a, b, std)

    def summed_over_three_dims(sample, mean):  # the shape is right, the value depends on the rank
        return (-((sample - mean) ** 2)).sum(dim=(1, 2, 3)).reshape(N, -1).mean(1)

    with pytest.raises(AssertionError, match=r"latents seen as \[N, C, F·H, W\]"):
        assert_reduces_every_dim(summed_over_three_dims, a, b)


# -- the env and the rollout ---------------------------------------------------------------------------

def make_env(adapter, k: int = 4):
    sigmas = dynamics.flow_sigmas(k)
    env = DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=3, prompts_per_batch=2, seed=1)
    return env, make_policy(adapter, sigmas, stochastic_steps(k), "flow_sde", micro_batch=4, a=0.7)


def test_the_env_specs_and_the_rollout_of_a_video_model():
    from torchrl.envs.utils import check_env_specs

    env, policy = make_env(ToyVideoAdapter())
    check_env_specs(env)
    assert env.observation_spec[keys.LATENTS].shape == (6, 3, 2, 4, 4) and env.action_spec.shape == (6, 3, 2, 4, 4)
    with torch.no_grad():
        td = env.rollout(policy=policy)
    assert td[keys.LATENTS].shape == (6, 4, 3, 2, 4, 4) and td[keys.LOG_PROB].shape == (6, 4)
    assert td[keys.LATENTS].untyped_storage().data_ptr() == td[keys.ACTION].untyped_storage().data_ptr()  # stored once
    assert env.observation_spec.is_in(td[:, 0].select(*env.observation_spec.keys(True, True)))


def test_a_video_rollout_is_the_4d_views_rollout_reshaped():
    """Initial noise, step noise, velocities, log-probs and L1rel of the model seen through [C, F·H, W]
    are those of [C, F, H, W]: nothing in the rollout depends on how the latent's dims are cut."""
    video = ToyVideoAdapter()
    rollouts = []
    for adapter in (video, FramesAsRows(video)):
        env, policy = make_env(adapter)
        torch.manual_seed(0)
        with torch.no_grad():
            rollouts.append(env.rollout(policy=policy))
    five, four = rollouts
    assert four[keys.LATENTS].shape == (6, 4, 3, 8, 4)
    torch.testing.assert_close(five[keys.ACTION].flatten(3, 4), four[keys.ACTION], rtol=1e-6, atol=1e-6)
    for key in (keys.LOG_PROB, keys.SCALE, keys.L1_REL):
        torch.testing.assert_close(five[key], four[key], rtol=1e-5, atol=1e-6)


def test_the_gym_env_renders_a_clip_as_a_filmstrip():
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import genrl.envs  # noqa: F401  (registers genrl/Denoise-v0)

    env = gymnasium.make("genrl/Denoise-v0", model="toy_video", reward="toy_clip_brightness", prompts=TOY_PROMPTS,
                         num_steps=2, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["latents"].shape == (3, 2, 4, 4)
    frames = env.unwrapped.render()
    assert frames.shape == (8, 2 * 8, 3)  # 2 frames of 8×8 side by side


def test_grid_thumbnails_of_clips_are_filmstrips_of_their_frames():
    clips = torch.rand(2, 3, 3, 6, 5)
    strip = grids.thumbnails(clips)
    assert strip.shape == (2, 3, 6, 3 * 5)
    for j in range(3):
        assert torch.equal(strip[..., j * 5:(j + 1) * 5], grids.thumbnails(clips[:, j]))
    large = grids.thumbnails(torch.rand(1, 4, 3, 320, 320))  # each frame shrunk as an image would be
    assert large.shape == (1, 3, grids.CELL_MAX, 4 * grids.CELL_MAX)
    assert torch.equal(grids.thumbnails(clips[:, :1]), grids.thumbnails(clips[:, 0]))  # one frame: the image


def test_the_memory_benchmark_counts_a_video_rollout_as_its_4d_view():
    """Rollout and minibatch bytes of latents [4, 3, 8, 8] and of the same latents as [4, 24, 8] are equal, and
    the rollout holds K + 1 latents per trajectory and little more."""
    from genrl import build
    from genrl.benchmarks import memory

    measured = []
    for shape in ((4, 3, 8, 8), (4, 24, 8)):
        adapter = memory.ShapeAdapter(shape, {keys.PROMPT_EMBEDS: ((5, 16), torch.bfloat16)})
        cfg = config.from_dict({"algorithm": "flow_grpo", "model": {"name": "toy", "options": {}},
                                "prompts": {"train": "shapeworld:train", "eval": "shapeworld:eval"},
                                "sampling": {"num_steps": 4, "micro_batch": 4},
                                "train": {"prompts_per_update": 1, "group_size": 2, "minibatches": 1},
                                "flow_grpo": {"sde_window": None}})
        parts = build.build(cfg, adapter=adapter, reward=memory.mean_pixel, env_reward=False)
        rollout, batch = memory.rollout_and_batch(parts)
        latent, context, k = memory.sizes(rollout)
        rows = batch.rows(torch.arange(2))
        measured.append((latent, context, k, memory.storage_bytes([rollout]), memory.storage_bytes([batch.gather(rows)])))
    assert measured[0] == measured[1]
    latent, context, k, rollout_bytes, _ = measured[0]
    assert latent == 4 * 4 * 3 * 8 * 8
    minimum = 2 * ((k + 1) * latent + context)
    assert minimum <= rollout_bytes <= 1.1 * minimum


# -- whole runs ------------------------------------------------------------------------------------------

def video_overrides(toy_overrides: list[str], model: str = "toy_video") -> list[str]:
    replaced = {"model.name": model, "reward.name": "toy_clip_brightness", "sampling.num_steps": "4"}
    return [o for o in toy_overrides if o.split("=")[0] not in replaced] + [f"{k}={v}" for k, v in replaced.items()]


def run(overrides: list[str], run_dir) -> tuple[list[dict], dict]:
    """Train; (metrics without timings, the final evaluation's result)."""
    Trainer(config.load(overrides=overrides + [f"run_dir={run_dir}"])).run()
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = run_dir / "eval" / "final.json"
    return metrics, json.loads(final.read_text()) if final.exists() else {}


ALGORITHMS = {  # the GRPO family with a KL term, chunks, a tree with pruning, the forward-process family
    "flow_grpo": ["flow_grpo.beta=0.04"],
    "chunk_grpo": [],
    "branch_grpo": ["branch_grpo.structure_options={points: [0, 1, 2], fork: 2, prune: farthest, prune_at: 1, keep: 2}"],
    "awm": ["awm.timesteps=2"],
    "diffusion_nft": [],
}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_video_model_trains_as_the_same_model_seen_through_4d_latents(algorithm, toy_overrides, tmp_path):
    """2 updates of every family on clips: the metrics (rewards, ratios, KL, losses, clip fraction, NFE, L1rel)
    of [C, F, H, W] latents equal those of the same model on [C, F·H, W] latents, and the policy moved."""
    overrides = [f"algorithm={algorithm}", *ALGORITHMS[algorithm], "log.eval_at_start=false", "log.sample_every=0"]
    five, final = run(video_overrides(toy_overrides) + overrides, tmp_path / "video" / "run")
    four, _ = run(video_overrides(toy_overrides, "toy_video_as_rows") + overrides, tmp_path / "rows" / "run")
    assert len(five) == 2 and all(v == v for m in five for v in m.values() if isinstance(v, float))  # no NaN
    assert five[0].keys() == four[0].keys()
    for a, b in zip(five, four):
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
            else:
                assert a[key] == b[key], key
    assert any(k.startswith("kl") or k == "old_kl" or k == "approx_kl" for k in five[0])
    assert five[1]["reward_mean"] != five[0]["reward_mean"]  # the second rollout is another policy's
    # evaluated on clips by the run's reward (ClipBrightness refuses images), not by ShapeWorld's image judge
    assert 0 < final["score"] < 1 and "partial" not in final and len(final["per_prompt"]) == len(TOY_PROMPTS)


def test_a_video_run_writes_filmstrip_grids_and_resumes_exactly(toy_overrides, tmp_path):
    """chunk_grpo on clips: sample and evaluation grids show filmstrips; 2 updates + a resume to 4 equal 4
    straight (conftest.resumed_and_uninterrupted), the policy's weights included."""
    overrides = video_overrides(toy_overrides) + ["algorithm=chunk_grpo"]
    uninterrupted, resumed = resumed_and_uninterrupted(overrides, tmp_path)
    assert uninterrupted.keys() == resumed.keys()
    run_dir = tmp_path / "a"
    assert (run_dir / "samples" / "update_000001.png").is_file() and (run_dir / "eval" / "base_vs_final.png").is_file()
    comparison = Image.open(run_dir / "eval" / "base_vs_final.gif")  # base and final in motion, side by side
    assert comparison.n_frames == 2  # the toy clips' 2 frames
    record = torch.load(run_dir / "eval" / "final.pt", weights_only=False)
    assert record["thumbnails"].shape[1:] == (3, 8, 2 * 8)  # each shown clip: its 2 frames of 8×8 side by side


def test_an_image_model_seen_as_a_one_frame_video_gives_the_same_run(toy_overrides, tmp_path):
    """Metrics, evaluations and the sample grid of the toy image model equal those of the same model behind
    latents [C, 1, H, W] and clips [N, 1, 3, H, W]: the image path is the one-frame case of the video path."""
    common = ["algorithm=flow_grpo", "train.updates=2", "log.checkpoint_every=2"]
    image = run(toy_overrides + common, tmp_path / "image" / "run")
    one_frame = run(video_overrides(toy_overrides, "toy_one_frame") + ["sampling.num_steps=6"] + common,
                    tmp_path / "frame" / "run")
    assert image == one_frame
    for name in ("samples/update_000002.png", "eval/base_vs_final.png"):
        assert (tmp_path / "image" / "run" / name).read_bytes() == (tmp_path / "frame" / "run" / name).read_bytes()
    assert not (tmp_path / "frame" / "run" / "eval" / "base_vs_final.gif").exists()  # one frame: no animation
