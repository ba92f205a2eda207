"""The `wan` adapter (issue 33 item 2) on a tiny random Wan 2.1 folder (genrl.testing.wan_builders).

The strongest check runs genrl's Euler loop and decode against diffusers' own WanPipeline (same
components, same σ grid, CFG 4.5): prompt encoding, the timestep convention, CFG, the latent layout
and the VAE's latents_mean / latents_std scaling all have to agree for it to pass. Then a training
update, an exact resume, and a LoRA export that WanPipeline.load_lora_weights reads back.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tiny_components  # noqa: F401  (offline HF hub, the tiny-random-* names)
from conftest import resumed_and_uninterrupted
from genrl import config, models, rewards
from genrl.dynamics import flow_sigmas, ode_mean_std
from genrl.errors import ConfigError
from genrl.models.hub import ModelFilesNotFound
from genrl.models.wan import check_frames
from genrl.testing.wan_builders import WAN_FLOW_SHIFT, WAN_FRAMES, WAN_HEIGHT, WAN_WIDTH, make_tiny_wan

PROMPTS = ["a photo of a cat", "a red dog on the mat"]
SMALL = dict(height=WAN_HEIGHT, width=WAN_WIDTH, frames=WAN_FRAMES, max_sequence_length=8, device="cpu", dtype="fp32")


class ClipMean:
    """Mean pixel of clips [N, F, 3, H, W]; refuses images, so a run that hands the reward images fails."""

    name = "wan_test_clip_mean"

    def __call__(self, clips, prompts):
        assert clips.dim() == 5 and clips.shape[2] == 3, f"expected clips [N, F, 3, H, W], got {list(clips.shape)}"
        return clips.float().flatten(1).mean(1)


if ClipMean.name not in rewards.REWARDS:
    rewards.register(ClipMean.name)(ClipMean)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "wan")


@pytest.fixture
def model(wan_dir):
    """An fp32 LoRA model (rank 4, alpha 8: alpha != rank, so the saved metadata matters), CFG 4.5."""
    return models.load("wan", path=wan_dir, lora_rank=4, lora_alpha=8, guidance_scale=4.5, **SMALL)


def inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, *model.latent_shape, generator=g), torch.tensor([0.9, 0.4]), model.encode(PROMPTS)


def perturb_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def run_overrides(wan_dir, tmp_path, algorithm="flow_grpo"):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na red dog\nthe blue mat\na green circle\n")
    options = {"path": str(wan_dir), **SMALL, "lora_rank": 4, "lora_alpha": 8, "guidance_scale": 4.5}
    return [f"algorithm={algorithm}", "model.name=wan", f"model.options={json.dumps(options)}",
            f"reward.name={ClipMean.name}", "reward.options={}", f"prompts.train={prompts}", f"prompts.eval={prompts}",
            "sampling.num_steps=3", "sampling.eval_steps=2", "sampling.micro_batch=4", "train.prompts_per_update=2",
            "train.group_size=2", "train.minibatches=1", "train.lr=1e-2", "log.progress=false",
            "log.eval_at_start=false", "log.eval_at_end=false", "log.eval_seeds=1", "log.sample_every=0",
            "log.checkpoint_every=1", "flow_grpo.sde_window=null"]  # fmt: skip


# --- conventions ---------------------------------------------------------------------------------


def test_layouts_dtypes_and_defaults(wan_dir, model):
    assert model.latent_shape == (16, 3, WAN_HEIGHT // 8, WAN_WIDTH // 8)  # 9 frames -> 1 + 8/4 latent frames
    assert model.sigma_shift == WAN_FLOW_SHIFT  # the folder's UniPC flow_shift
    assert model.nfe_per_velocity == 2 and model.vae.dtype == torch.float32
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        v = model.velocity(x, sigma, cond)
        clips = model.decode(10 * x)  # far outside the VAE's range: still clamped
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert clips.shape == (2, WAN_FRAMES, 3, WAN_HEIGHT, WAN_WIDTH) and clips.min() >= 0 and clips.max() <= 1
    model.train()  # a trainer's train() must not switch on UMT5's dropout
    assert model.transformer.training and not model.text_encoder.training and not model.vae.training
    default = models.load("wan", path=wan_dir, **{**SMALL, "dtype": "bf16"})  # flow_grpo's LoRA, bf16, fp32 VAE
    lora = default.transformer.peft_config["default"]
    assert (lora.r, lora.lora_alpha, sorted(lora.target_modules)) == (32, 64, ["to_k", "to_out.0", "to_q", "to_v"])
    assert default.vae.dtype == torch.float32 and default.transformer.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in default.trainable_parameters())
    assert default.guidance_scale == 5.0  # WanPipeline's default


def test_rollout_and_decode_match_diffusers_wan_pipeline(wan_dir, model):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(transformer=model.transformer, vae=model.vae, text_encoder=model.text_encoder,
                       tokenizer=model._pipe.tokenizer, scheduler=FlowMatchEulerDiscreteScheduler(shift=WAN_FLOW_SHIFT))
    x, _, cond = inputs(model)
    call = dict(height=WAN_HEIGHT, width=WAN_WIDTH, num_frames=WAN_FRAMES, num_inference_steps=3, guidance_scale=4.5,
                max_sequence_length=8)
    with torch.no_grad():
        ref_latents = pipe(PROMPTS, latents=x.clone(), output_type="latent", **call).frames
        ref_clips = pipe(PROMPTS, latents=x.clone(), output_type="pt", **call).frames
        ours = x
        sigmas = flow_sigmas(3, shift=model.sigma_shift)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            ours, _ = ode_mean_std(ours, model.velocity(ours, s.expand(2), cond), s, s_next)
        clips = model.decode(ours)
    torch.testing.assert_close(ours, ref_latents, atol=1e-4, rtol=1e-4)
    assert ref_clips.shape == clips.shape == (2, WAN_FRAMES, 3, WAN_HEIGHT, WAN_WIDTH)
    torch.testing.assert_close(clips, ref_clips, atol=1e-4, rtol=1e-4)


def test_latent_normalisation_is_the_vae_configs(model):
    """to_latent's (z − mean) / std is decode's inverse scaling, per channel, with the config's own numbers."""
    cfg = model.vae.config
    assert model.latents_mean.flatten().tolist() == pytest.approx(cfg.latents_mean)
    assert model.latents_std.flatten().tolist() == pytest.approx(cfg.latents_std)
    clips = torch.rand(1, WAN_FRAMES, 3, WAN_HEIGHT, WAN_WIDTH, generator=torch.Generator().manual_seed(0))
    latent = model.to_latent(clips)
    z = model.vae.encode(clips.transpose(1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latent * model.latents_std + model.latents_mean, z)
    with torch.no_grad():
        decoded = model.vae.decode(z).sample
    torch.testing.assert_close(model.decode(latent), ((decoded + 1) / 2).clamp(0, 1).transpose(1, 2))


def test_cfg_is_one_batched_pass_of_uncond_and_cond(model):
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        v_c = model._velocity(x, sigma, cond)
        v_u = model._velocity(x, sigma, model.encode(["", ""]))
        torch.testing.assert_close(model.velocity(x, sigma, cond), v_u + 4.5 * (v_c - v_u), atol=1e-5, rtol=1e-5)
        model.guidance_scale = 1.0
        torch.testing.assert_close(model.velocity(x, sigma, cond), v_c)
    assert model.nfe_per_velocity == 1


def test_lora_trains_only_the_adapter_and_the_reference_is_the_base(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and n.startswith("transformer.") for n in trainable)
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        base = model.velocity(x, sigma, cond)
        perturb_lora(model)
        tuned = model.velocity(x, sigma, cond)
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sigma, cond), base)
    assert not torch.allclose(tuned, base, atol=1e-4)


def test_saved_lora_loads_into_wan_pipeline_with_equal_velocities(wan_dir, model, tmp_path):
    from diffusers import WanPipeline

    perturb_lora(model)
    model.save_diffusers(tmp_path / "lora")
    pipe = WanPipeline.from_pretrained(wan_dir, dtype=torch.float32)
    pipe.load_lora_weights(tmp_path / "lora")
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        tuned = model._velocity(x, sigma, cond)
        with model.reference():
            base = model._velocity(x, sigma, cond)
        model.transformer = pipe.transformer  # the adapter's call, diffusers' weights
        loaded = model._velocity(x, sigma, cond)
    assert not torch.allclose(tuned, base, atol=1e-4)  # the LoRA matters, so loading it is what makes them agree
    torch.testing.assert_close(loaded, tuned, atol=1e-5, rtol=1e-4)


def test_full_finetune_keeps_a_frozen_reference_and_saves_the_transformer(wan_dir, tmp_path):
    from diffusers import WanTransformer3DModel

    model = models.load("wan", path=wan_dir, finetune="full", guidance_scale=1.0, **SMALL)
    assert len(model.trainable_parameters()) == len(list(model.transformer.parameters()))
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        base = model.velocity(x, sigma, cond)
        for p in model.trainable_parameters():
            p.add_(0.01)
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sigma, cond), base)
        tuned = model.velocity(x, sigma, cond)
        assert not torch.allclose(tuned, base)
        model.save_diffusers(tmp_path)
        model.transformer = WanTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer")
        torch.testing.assert_close(model.velocity(x, sigma, cond), tuned)


# --- training, resume, export -------------------------------------------------------------------


def test_one_update_trains_lora_with_cfg_and_exports_for_wan_pipeline(wan_dir, tmp_path):
    from diffusers import WanPipeline, WanTransformer3DModel

    from genrl.export import export_run
    from genrl.runs import load_run
    from genrl.trainer import Trainer

    cfg = config.load(overrides=run_overrides(wan_dir, tmp_path) + ["train.updates=1", f"run_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg)
    adapter = trainer.parts.adapter
    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    trainer.run()
    changed = {n for n, p in adapter.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)  # only LoRA moved; the base (KL reference) did not
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 4 clips x (3 rollout steps + 2 trained steps + 2 KL reference steps), CFG counting 2
    assert metrics[0]["grad_norm"] > 0 and metrics[0]["nfe"] == 4 * (3 + 2 + 2) * 2

    out, how = export_run(tmp_path / "run", tmp_path / "export")
    assert (out / "pytorch_lora_weights.safetensors").is_file() and "WanPipeline" in how
    policy = load_run(tmp_path / "run", device="cpu")
    pipe = WanPipeline.from_pretrained(wan_dir, dtype=torch.float32)
    pipe.load_lora_weights(out)
    x, sigma, cond = inputs(policy)
    with torch.no_grad():
        ours = policy._velocity(x, sigma, cond)
        with policy.reference():
            base = policy._velocity(x, sigma, cond)
        policy.transformer = pipe.transformer
        loaded = policy._velocity(x, sigma, cond)
    assert not torch.allclose(ours, base, atol=1e-6)  # the export carries the update
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-4)

    merged, how = export_run(tmp_path / "run", tmp_path / "merged", merge=True)  # LoRA folded into the weights
    assert "WanTransformer3DModel" in how
    policy.transformer = WanTransformer3DModel.from_pretrained(merged, subfolder="transformer")
    with torch.no_grad():
        torch.testing.assert_close(policy._velocity(x, sigma, cond), ours, atol=1e-5, rtol=1e-4)


def test_resume_is_exact(wan_dir, tmp_path):
    """4 updates straight = 2 + `genrl train --resume` to 4: equal metrics (in the helper), LoRA weights and RNGs."""
    from safetensors.torch import load_file

    a, b = resumed_and_uninterrupted(run_overrides(wan_dir, tmp_path), tmp_path)
    assert torch.equal(a["generator"], b["generator"]) and torch.equal(a["torch_rng"], b["torch_rng"])
    weights = [load_file(tmp_path / r / "checkpoints" / "update_000004" / "trainable.safetensors") for r in "ab"]
    assert weights[0].keys() == weights[1].keys() and all("lora_" in k for k in weights[0])
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


# --- bad input ----------------------------------------------------------------------------------


def test_frame_counts_must_be_4k_plus_1(wan_dir):
    with pytest.raises(ConfigError, match=r"wan: frames must be 4k \+ 1 .* got 8: use 5 or 9"):
        models.load("wan", path=wan_dir, **{**SMALL, "frames": 8})
    with pytest.raises(ConfigError, match=r"got 2: use 1 or 5"):
        check_frames(2)
    for ok in (1, 5, 33, 81):
        check_frames(ok)
    with pytest.raises(ConfigError, match="multiples of 16"):
        models.load("wan", path=wan_dir, **{**SMALL, "height": 24})


def test_missing_folders_are_one_error_naming_them(wan_dir, tmp_path):
    with pytest.raises(ModelFilesNotFound, match=r"wan: model directory .*nowhere does not exist.*text_encoder/"):
        models.load("wan", path=tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(wan_dir, partial, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(ModelFilesNotFound, match=r"wan: path=.*partial is incomplete: missing vae/config.json"):
        models.load("wan", path=partial, **SMALL)
    with pytest.raises(ModelFilesNotFound) as err:
        models.load("wan", cache_dir=tmp_path / "empty_cache")  # the default model_id, not cached
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in str(err.value) and "\n" not in str(err.value)


def test_two_expert_wan22_folder_is_refused(wan_dir, tmp_path):
    two = tmp_path / "wan22"
    shutil.copytree(wan_dir, two)
    index = json.loads((two / "model_index.json").read_text())
    index.update(boundary_ratio=0.875, transformer_2=["diffusers", "WanTransformer3DModel"])
    (two / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"two-expert Wan 2.2 model \(transformer_2/, boundary_ratio 0.875\)"):
        models.load("wan", path=two, **SMALL)
