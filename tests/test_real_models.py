"""The `sd3` and `flux` adapters on tiny random-config diffusers folders (tiny_components.py).

The strongest checks run genrl's Euler loop against diffusers' own pipelines
(same components, same sigmas): prompt encoding, timestep convention, CFG,
FLUX guidance embedding and 2×2 packing all have to agree for them to pass.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import tiny_components as tc
from genrl import models
from genrl.dynamics import flow_sigmas, ode_mean_std
from genrl.models.flux import flux_shift, latent_image_ids, pack_latents, unpack_latents
from genrl.models.hub import ModelFilesNotFound

PROMPTS = ["a photo of a cat", "a red dog on the mat"]
SMALL = dict(resolution=tc.RESOLUTION, max_sequence_length=8, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_diffusers")
    return {"sd3": tc.make_tiny_sd3(root / "sd3"), "flux": tc.make_tiny_flux(root / "flux")}


def load(dirs, name, **options):
    return models.load(name, path=dirs[name], **{**SMALL, "dtype": "fp32", **options})


@pytest.fixture(scope="module")
def shared(dirs):
    """One fp32 LoRA model of each kind (rank 4, alpha 8: alpha ≠ rank), reset after every test."""
    return {name: load(dirs, name, lora_rank=4, lora_alpha=8) for name in ("sd3", "flux")}


@pytest.fixture
def lora_model(shared):
    def get(name):
        return shared[name]

    yield get
    for model in shared.values():
        with torch.no_grad():  # back to the base model: lora_B = 0, default guidance
            for n, p in model.transformer.named_parameters():
                if "lora_B" in n:
                    p.zero_()
    shared["sd3"].guidance_scale, shared["flux"].embedded_guidance = 4.5, 3.5


def inputs(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *model.latent_shape, generator=g), torch.tensor([0.9, 0.4][:n]), model.encode(PROMPTS[:n])


def perturb_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def euler(model, x, sigmas, cond):
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        v = model.velocity(x, s.expand(x.shape[0]), cond)
        x, _ = ode_mean_std(x, v, s, s_next)
    return x


# --- shapes, dtypes, conventions ----------------------------------------------------------


@pytest.mark.parametrize("name", ["sd3", "flux"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_shapes_and_dtypes(dirs, lora_model, name, dtype):
    model = lora_model(name) if dtype == "fp32" else load(dirs, name, dtype=dtype, finetune="none")
    assert model.latent_shape == (16, 8, 8)
    x, sigma, cond = inputs(model)
    assert cond.batch_size == torch.Size([2])
    assert cond["prompt_embeds"].dtype == model.model_dtype
    with torch.no_grad():
        v = model.velocity(x, sigma, cond)
        images = model.decode(10 * x)  # far outside the VAE's range: still clamped
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert images.shape == (2, 3, tc.RESOLUTION, tc.RESOLUTION) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert model.nfe_per_velocity == (2 if name == "sd3" else 1)
    model.train()  # a trainer's train() must not switch on T5's dropout
    assert model.transformer.training and not any(
        m.training for n, m in model.named_modules() if n and not n.startswith("transformer")
    )
    model.eval()


def test_sd3_matches_diffusers_pipeline_with_cfg(dirs, lora_model):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    model = lora_model("sd3")  # lora_B = 0: the base model
    model.guidance_scale = 3.0
    pipe = StableDiffusion3Pipeline(
        transformer=model.transformer,
        vae=model.vae,
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(dirs["sd3"], subfolder="scheduler"),
        **{k: getattr(model._pipe, k) for k in ("text_encoder", "text_encoder_2", "text_encoder_3")},
        **{k: getattr(model._pipe, k) for k in ("tokenizer", "tokenizer_2", "tokenizer_3")},
    )
    x, _, cond = inputs(model)
    with torch.no_grad():
        ref = pipe(PROMPTS, height=16, width=16, num_inference_steps=2, guidance_scale=3.0, latents=x,
                   max_sequence_length=8, output_type="latent").images  # fmt: skip
        ours = euler(model, x, flow_sigmas(2, shift=model.sigma_shift), cond)
        ref_images = pipe.image_processor.postprocess(pipe.vae.decode(ref / 1.5305 + 0.0609).sample, output_type="pt")
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.decode(ours), ref_images, atol=1e-4, rtol=1e-4)


def test_flux_matches_diffusers_pipeline(dirs, lora_model):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    model = lora_model("flux")
    model.embedded_guidance = 2.5
    pipe = FluxPipeline(
        transformer=model.transformer,
        vae=model.vae,
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(dirs["flux"], subfolder="scheduler"),
        **{k: getattr(model._pipe, k) for k in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")},
    )
    x, _, cond = inputs(model)
    with torch.no_grad():
        ref = pipe(PROMPTS, height=16, width=16, num_inference_steps=2, guidance_scale=2.5,
                   latents=pack_latents(x), max_sequence_length=8, output_type="latent").images  # fmt: skip
        ours = euler(model, x, pipe.scheduler.sigmas.float(), cond)
    torch.testing.assert_close(pack_latents(ours), ref, atol=1e-4, rtol=1e-4)


def test_cfg_is_one_batched_pass_of_uncond_and_cond(lora_model):
    model = lora_model("sd3")
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        v_c = model._velocity(x, sigma, cond)
        v_u = model._velocity(x, sigma, model.encode(["", ""]))
        torch.testing.assert_close(model.velocity(x, sigma, cond), v_u + 4.5 * (v_c - v_u), atol=1e-5, rtol=1e-5)
        model.guidance_scale = 1.0
        torch.testing.assert_close(model.velocity(x, sigma, cond), v_c)
    assert model.nfe_per_velocity == 1


def test_flux_guidance_embedding_and_shift(lora_model):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    model = lora_model("flux")
    assert model.guidance_scale is None and model.embedded_guidance == 3.5 and model.nfe_per_velocity == 1
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        v = model.velocity(x, sigma, cond)
        model.embedded_guidance = 1.0
        assert not torch.allclose(model.velocity(x, sigma, cond), v)
    mu = calculate_shift(16)  # 4×4 packed tokens, diffusers' defaults
    assert model.sigma_shift == pytest.approx(torch.tensor(mu).exp().item())
    assert flux_shift(45 * 45, {}) == pytest.approx(math.exp(calculate_shift(45 * 45)))  # FLUX at 720²


def test_pack_unpack_match_diffusers():
    from diffusers import FluxPipeline

    x = torch.randn(3, 16, 6, 10)
    packed = pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 3, 16, 6, 10))
    torch.testing.assert_close(unpack_latents(packed, 6, 10), x)
    torch.testing.assert_close(unpack_latents(packed, 6, 10), FluxPipeline._unpack_latents(packed, 48, 80, 8))
    ids = FluxPipeline._prepare_latent_image_ids(3, 3, 5, "cpu", torch.float32)
    torch.testing.assert_close(latent_image_ids(6, 10, "cpu", torch.float32), ids)


# --- fine-tuning ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_lora_trains_only_the_adapter_and_reference_is_the_base(lora_model, name):
    model = lora_model(name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and n.startswith("transformer.") for n in trainable)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for n, p in model.named_parameters() if n in trainable}
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        base = model.velocity(x, sigma, cond)
        perturb_lora(model)
        tuned = model.velocity(x, sigma, cond)
        with model.reference():
            ref = model.velocity(x, sigma, cond)
    assert not torch.allclose(tuned, base, atol=1e-4)
    torch.testing.assert_close(ref, base)
    assert set(model.trainable_state_dict()) == trainable


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_saved_lora_loads_into_a_diffusers_pipeline(dirs, lora_model, name, tmp_path):
    import diffusers

    model = lora_model(name)  # alpha ≠ rank: the saved metadata matters
    perturb_lora(model)
    model.save_diffusers(tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()

    transformer = getattr(diffusers, model.TRANSFORMER).from_pretrained(dirs[name], subfolder="transformer")
    pipe = getattr(diffusers, model.PIPELINE)(transformer=transformer, vae=None, scheduler=None, **{
        k: None for k in model._pipe.components if k.startswith(("text_encoder", "tokenizer"))})  # fmt: skip
    pipe.load_lora_weights(tmp_path / "lora")
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        tuned = model._velocity(x, sigma, cond)
        trained, model.transformer = model.transformer, transformer  # the adapter's code path, diffusers' weights
        try:
            loaded = model._velocity(x, sigma, cond)
        finally:
            model.transformer = trained
    torch.testing.assert_close(loaded, tuned, atol=1e-5, rtol=1e-4)


def test_full_finetune_keeps_a_frozen_reference(dirs, tmp_path):
    model = load(dirs, "sd3", finetune="full", guidance_scale=1.0)
    assert len(model.trainable_parameters()) == len(list(model.transformer.parameters()))
    assert not any(p.requires_grad for p in model.reference_transformer.parameters())
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        base = model.velocity(x, sigma, cond)
        for p in model.trainable_parameters():
            p.add_(0.01)
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sigma, cond), base)
        tuned = model.velocity(x, sigma, cond)
    assert not torch.allclose(tuned, base)
    model.save_diffusers(tmp_path)  # → tmp_path/transformer, what from_pretrained(..., subfolder=) reads
    model.transformer = type(model.transformer).from_pretrained(tmp_path, subfolder="transformer")
    with torch.no_grad():
        torch.testing.assert_close(model.velocity(x, sigma, cond), tuned)


def test_gradient_checkpointing_still_trains_lora(lora_model):
    model = lora_model("flux")
    model.transformer.enable_gradient_checkpointing()
    perturb_lora(model)
    x, sigma, cond = inputs(model)
    model.velocity(x, sigma, cond).square().mean().backward()
    grads = [p.grad for p in model.trainable_parameters()]
    model.transformer.disable_gradient_checkpointing()
    model.zero_grad(set_to_none=True)
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# --- errors ---------------------------------------------------------------------------------


def test_missing_weights_name_the_path_and_the_files(dirs, tmp_path):
    with pytest.raises(ModelFilesNotFound, match=r"sd3: model directory .*nowhere does not exist.*text_encoder_3/"):
        models.load("sd3", path=tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(dirs["flux"], partial, ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(ModelFilesNotFound, match=r"flux: path=.*partial is incomplete: missing text_encoder_2/config.json"):
        models.load("flux", path=partial)
    with pytest.raises(ModelFilesNotFound) as err:
        models.load("flux", cache_dir=tmp_path / "empty_cache")  # default model_id, not cached
    message = str(err.value)
    assert "black-forest-labs/FLUX.1-dev" in message and "empty_cache" in message
    assert "hf download black-forest-labs/FLUX.1-dev --include model_index.json 'transformer/*'" in message


def test_model_id_is_found_in_an_existing_hf_cache(dirs, tmp_path):
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-3.5-medium"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / ("0" * 40)).symlink_to(dirs["sd3"])
    model = models.load("sd3", cache_dir=tmp_path / "hub", finetune="none", **SMALL)  # default model_id
    assert model.model_dir == repo / "snapshots" / ("0" * 40)
    assert model.sigma_shift == 3.0  # read from scheduler/scheduler_config.json


def test_bad_options_are_rejected(dirs):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load(dirs, "sd3", dtype="float8")
    with pytest.raises(ValueError, match="finetune must be one of"):
        load(dirs, "sd3", finetune="dora")
    with pytest.raises(ValueError, match="resolution must be a multiple of 4"):
        load(dirs, "flux", resolution=18)
    with pytest.raises(ValueError, match="lora_targets"):
        load(dirs, "flux", lora_targets=["no_such_layer"])
