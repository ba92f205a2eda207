"""The tiny ShapeWorld-Motion video denoiser (a diffusers WanTransformer3DModel) and its pretraining script."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from genrl.errors import PromptError, UserError
from genrl.models import load
from genrl.shapeworld_motion import eval_prompts, parse, render_clips
from genrl.shapeworld_motion.pretrain import build_parser, main, training_prompts

TINY = dict(pretrained=False, num_layers=1, num_attention_heads=1, attention_head_dim=12)


def tiny_video(**options):
    return load("tiny_video", **{**TINY, **options})


def test_the_denoiser_is_diffusers_wan_on_clip_latents():
    from diffusers import WanTransformer3DModel

    model = tiny_video(finetune="none")
    assert isinstance(model.transformer, WanTransformer3DModel)
    assert model.transformer.config.patch_size == (4, 4, 4) and model.latent_shape == (3, 4, 32, 32)
    assert model.config.tokens == 8 * 8  # the 4 frames share a token: an image's token count
    x = torch.randn(2, *model.latent_shape)
    v = model.velocity(x, torch.tensor([0.3, 0.9]), model.encode(["a red circle moving left", "two blue squares moving up"]))
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()


def test_velocity_depends_on_the_prompt_and_cfg_mixes_the_two_passes():
    model = tiny_video(finetune="none", guidance_scale=3.0)
    x, sigma = torch.randn(1, *model.latent_shape), torch.tensor([0.5])
    cond = model.encode(["a red circle moving left"])
    v_c, v_u = model._velocity(x, sigma, cond), model._velocity(x, sigma, model.unconditional(1))
    assert not torch.allclose(v_c, v_u)
    torch.testing.assert_close(model.velocity(x, sigma, cond), v_u + 3.0 * (v_c - v_u), rtol=1e-4, atol=1e-5)


def test_decode_gives_clips_in_the_judges_layout_and_inverts_to_latent():
    model = tiny_video(finetune="none")
    clips = render_clips(["a red circle moving left", "two green triangles moving up"], [0, 1])  # [2, 4, 3, 32, 32]
    latents = model.to_latent(clips)
    assert latents.shape == (2, *model.latent_shape) and latents.min() >= -1 and latents.max() <= 1
    torch.testing.assert_close(model.decode(latents), clips)
    wild = model.decode(3 * torch.randn(2, *model.latent_shape))
    assert wild.shape == (2, 4, 3, 32, 32) and wild.min() >= 0 and wild.max() <= 1


def test_a_word_outside_the_motion_vocabulary_is_one_line_naming_it():
    model = tiny_video(finetune="none")
    with pytest.raises(PromptError) as err:
        model.encode(["a red circle moving sideways"])
    assert "'sideways'" in str(err.value) and "\n" not in str(err.value) and isinstance(err.value, UserError)
    with pytest.raises(PromptError, match="'moving'"):
        model.check_prompt("a red circle moving")  # every word known, but not a motion prompt


def test_lora_trains_only_adapters_on_wans_attention_and_the_reference_is_the_base():
    model = tiny_video(finetune="lora", lora_rank=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".lora_")[0].split(".")[-1] for n in names} == {"to_q", "to_k", "to_v", "0"}
    x, sigma = torch.randn(1, *model.latent_shape), torch.tensor([0.5])
    cond = model.encode(["a red circle moving left"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    with model.reference():
        base = model.velocity(x, sigma, cond)
    assert not torch.allclose(model.velocity(x, sigma, cond), base)


def test_save_pretrained_writes_a_wan_folder_that_diffusers_and_genrl_load(tmp_path):
    from diffusers import WanTransformer3DModel

    model = tiny_video(finetune="lora", lora_rank=2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)  # a trained adapter, folded into the saved weights
    model.save_pretrained(tmp_path / "policy")
    x, sigma = torch.randn(1, *model.latent_shape), torch.tensor([0.5])
    cond = model.encode(["a red circle moving left"])
    again = load("tiny_video", weights=tmp_path / "policy", finetune="none")
    torch.testing.assert_close(again.velocity(x, sigma, again.encode(["a red circle moving left"])),
                               model.velocity(x, sigma, cond), rtol=1e-4, atol=1e-5)
    wan = WanTransformer3DModel.from_pretrained(tmp_path / "policy", subfolder="transformer")
    v = wan(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]
    torch.testing.assert_close(v, model.velocity(x, sigma, cond), rtol=1e-4, atol=1e-5)


def test_size_options_need_random_init_and_unknown_ones_are_named():
    with pytest.raises(UserError, match="only apply with pretrained=False"):
        load("tiny_video", num_layers=1)
    with pytest.raises(UserError, match="num_blocks"):
        tiny_video(num_blocks=2)


def test_the_shipped_weights_draw_the_worlds_clips_and_are_the_scripts_defaults():
    from genrl.models.tiny_video import DEFAULT_WEIGHTS, TinyVideoConfig
    from genrl.shapeworld_motion import FRAMES, SIZE

    model = load("tiny_video", finetune="none")
    assert model.latent_shape == (3, FRAMES, SIZE, SIZE) and model.config.tokens == 64  # the 4 frames share a token
    assert model.sigma_shift == 3.0  # sampled on the schedule it was trained on
    sizes = {k: v for k, v in vars(model.config).items() if k not in ("vocabulary", "sigma_shift")}
    assert sizes == {k: v for k, v in vars(TinyVideoConfig()).items() if k not in ("vocabulary", "sigma_shift")}
    # the script's defaults are the shipped weights' settings: every recorded training setting is its default
    # (the weights themselves came in two schedule legs, 6,000 steps then extended to 12,000, which `reproduce` chains)
    recorded = json.loads((DEFAULT_WEIGHTS / "config.json").read_text())["training"]
    defaults = vars(build_parser().parse_args([]))
    assert {k: recorded[k] for k in defaults if k in recorded} == {k: defaults[k] for k in defaults if k in recorded}
    assert [leg["steps"] for leg in recorded["schedule_legs"]] == [6000, defaults["steps"]]
    assert recorded["reproduce"].count("genrl.shapeworld_motion.pretrain") == 2 and recorded["steps_done"] == 12000
    assert {"steps", "batch", "lr", "sigma_shift", "temporal_patch", "attention_head_dim"} <= set(defaults) & set(recorded)



def test_a_temporal_patch_packs_frames_into_tokens_and_must_divide_the_frames():
    model = tiny_video(finetune="none", temporal_patch=2)
    assert model.transformer.config.patch_size == (2, 4, 4) and model.config.tokens == 2 * 8 * 8
    x = torch.randn(2, *model.latent_shape)
    cond = model.encode(["a red circle moving left"] * 2)
    assert model.velocity(x, torch.tensor([0.3, 0.9]), cond).shape == x.shape == (2, 3, 4, 32, 32)
    with pytest.raises(UserError, match="frames 4 is not a multiple of temporal_patch 3"):
        tiny_video(temporal_patch=3)


def test_the_pretraining_sigma_shift_is_diffusers_flow_shift_and_becomes_the_models_sampling_shift(tmp_path):
    from genrl import config
    from genrl.dynamics import flow_shift as shifted

    t = torch.linspace(1, 0, 11)
    torch.testing.assert_close(shifted(t, 3.0), 3 * t / (1 + 2 * t))  # diffusers' shift, in closed form
    assert torch.equal(shifted(t, 1.0), t)
    assert (shifted(t[1:-1], 3.0) > t[1:-1]).all()  # more of the training σ at high noise
    assert tiny_video().sigma_shift is None  # the plain schedule: the algorithm's own shift applies
    model = tiny_video(sigma_shift=3.0)
    assert model.sigma_shift == 3.0 and config.load(overrides=[]).shift_for(model) == 3.0
    assert config.load(overrides=["sampling.shift=1.5"]).shift_for(model) == 1.5  # an explicit setting still wins
    model.save_weights(tmp_path / "w")
    assert load("tiny_video", weights=tmp_path / "w").sigma_shift == 3.0


def test_training_prompts_cover_every_category_and_no_held_out_scene():
    held_out = {parse(p).scene for p in eval_prompts()}
    by_category = training_prompts()
    assert sorted(by_category) == sorted({parse(p).category for p in eval_prompts()})
    assert all(by_category.values())
    assert not any(parse(p).scene in held_out for prompts in by_category.values() for p in prompts)


def pretrain(out, *extra):
    main(["--out", str(out), "--batch", "2", "--num-layers", "1", "--num-attention-heads", "1",
          "--attention-head-dim", "12", "--threads", "1", "--seed", "3", "--warmup", "2", *extra])


def same_weights(a, b) -> bool:
    for name in ("transformer.safetensors", "text_encoder.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            return False
    return True


@pytest.mark.slow
def test_pretraining_resumes_bit_exactly_and_the_adapter_loads_its_folder(tmp_path):
    pretrain(tmp_path / "straight", "--steps", "2")
    state = str(tmp_path / "state.pt")
    pretrain(tmp_path / "cut", "--steps", "1", "--state", state)
    assert not same_weights(tmp_path / "straight", tmp_path / "cut")  # one step differs from two
    pretrain(tmp_path / "cut", "--steps", "2", "--state", state, "--resume")
    assert same_weights(tmp_path / "straight", tmp_path / "cut")

    meta = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert meta["training"]["steps_done"] == 2 and "genrl.shapeworld_motion.pretrain" in meta["training"]["reproduce"]
    assert set(meta["eval"]["K10_seeds4"]["per_category"]) == {"single_motion", "two_motions", "counting_motion",
                                                               "relative_motion"}
    model = load("tiny_video", weights=tmp_path / "straight", finetune="none")
    assert model.config.num_layers == 1 and model.latent_shape == (3, 4, 32, 32) and model.sigma_shift == 3.0  # the script's default shift
    saved = load_file(str(tmp_path / "straight" / "transformer.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.transformer.state_dict().items())


def test_pretraining_with_a_sigma_shift_records_it_with_the_model(tmp_path):
    pretrain(tmp_path / "w", "--steps", "1", "--sigma-shift", "3", "--temporal-patch", "2", "--ffn-ratio", "4")
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    assert meta["model"]["sigma_shift"] == 3.0 and meta["model"]["temporal_patch"] == 2
    assert meta["training"]["sigma_sampling"] == "logit-normal(0, 1), shifted by 3"
    for flag in ("--sigma-shift 3.0", "--temporal-patch 2", "--ffn-ratio 4"):
        assert flag in meta["training"]["reproduce"]
    assert load("tiny_video", weights=tmp_path / "w").sigma_shift == 3.0


def test_resume_without_a_state_file_fails_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        pretrain(tmp_path / "out", "--steps", "1", "--state", str(tmp_path / "missing.pt"), "--resume")
    assert exit_.value.code == 2 and "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_wan_on_images_diagnostic_trains_the_video_class_on_one_frame_clips(tmp_path, capsys):
    from genrl.benchmarks import wan_images

    wan_images.main(["--out", str(tmp_path / "w"), "--steps", "2", "--batch", "2", "--threads", "1", "--warmup", "1"])
    model = load("tiny_video", weights=tmp_path / "w", finetune="none")
    assert model.latent_shape == (3, 1, 32, 32) and "above" in model.config.vocabulary  # ShapeWorld's words
    assert "| Wan (this run) | 2 |" in capsys.readouterr().out
