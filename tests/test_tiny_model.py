"""The tiny ShapeWorld adapter: tokenizer, encoder, CFG, LoRA / full reference, weights on disk."""

from __future__ import annotations

import pytest
import torch

from genrl.models import load
from genrl.models.tiny import DEFAULT_LORA_TARGETS, TinyShapeModel, save_weights
from genrl.models.tiny_text import WordTokenizer

# A very small random model: one MMDiT block of width 16, a one-layer text encoder of width 16.
SMALL = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, text_width=16, text_layers=1, text_heads=2)
PROMPTS = ["a red circle", "two blue squares", "an orange triangle to the left of a green circle"]


def small(**options) -> TinyShapeModel:
    return TinyShapeModel(pretrained=False, seed=0, **SMALL, **options)


def inputs(model: TinyShapeModel, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *model.latent_shape, generator=g)
    sigma = torch.rand(n, generator=g)
    return x, sigma, model.encode(PROMPTS[:n])


def perturb(params) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_tokenizer_round_trip_padding_and_unknown_word():
    tok = WordTokenizer(["a", "blue", "circle", "red"], max_length=5)
    ids = tok.encode(["a red circle", "A BLUE circle", ""])
    assert ids.shape == (3, 5) and ids.dtype == torch.long
    assert tok.decode(ids) == ["a red circle", "a blue circle", ""]
    assert (ids[2] == 0).all()  # the empty prompt is all padding
    assert tok.decode(tok.encode(["a red circle a red circle"])) == ["a red circle a red"]  # truncated
    with pytest.raises(ValueError, match="'square'.*'a red square'"):
        tok.encode(["a red square"])


def test_encode_shapes_and_empty_prompt():
    model = small()
    cond = model.encode(PROMPTS + [""])
    assert cond.batch_size == torch.Size([4])
    assert cond["prompt_embeds"].shape == (4, model.config.max_length, 16)
    assert cond["pooled_embeds"].shape == (4, 16)
    assert not cond["prompt_embeds"].requires_grad
    assert torch.isfinite(cond["prompt_embeds"]).all()
    assert (cond["pooled_embeds"][3] == 0).all()  # nothing to pool in ""
    torch.testing.assert_close(model.unconditional(2)["prompt_embeds"], model.encode(["", ""])["prompt_embeds"])


def test_velocity_shape_dtype_and_decode():
    model = small()
    x, sigma, cond = inputs(model)
    v = model.velocity(x, sigma, cond)
    assert v.shape == x.shape == (3, 3, 32, 32) and v.dtype == torch.float32
    images = model.decode(x)
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(model.decode(model.to_latent(images.clamp(0, 1))), images)


def test_cfg_combines_conditional_and_unconditional():
    model = small(guidance_scale=1.0)
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        v_c = model._velocity(x, sigma, cond)
        v_u = model._velocity(x, sigma, model.unconditional(3))
        torch.testing.assert_close(model.velocity(x, sigma, cond), v_c)
        model.guidance_scale = 3.0
        torch.testing.assert_close(model.velocity(x, sigma, cond), v_u + 3.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)
    assert model.nfe_per_velocity == 2


def test_lora_trains_only_adapters_and_reference_is_the_base():
    model = small(finetune="lora", lora_rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and n.startswith("transformer.") for n in trainable)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for n, p in model.named_parameters() if n in trainable}
    assert any(t.replace(".", "_") in n.replace(".", "_") for n in trainable for t in DEFAULT_LORA_TARGETS)
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        base = small(finetune="none")._velocity(x, sigma, cond)
        torch.testing.assert_close(model.velocity(x, sigma, cond), base)  # lora_B starts at zero
        perturb(model.trainable_parameters())
        assert not torch.allclose(model.velocity(x, sigma, cond), base)
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sigma, cond), base)
        assert not torch.allclose(model.velocity(x, sigma, cond), base)  # adapter back on
    assert all(p.requires_grad for p in model.trainable_parameters()) and model.trainable_parameters()


def test_full_finetune_reference_is_a_frozen_copy():
    model = small(finetune="full")
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.transformer.parameters()}
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not any(p.requires_grad for p in model.reference_transformer.parameters())
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        base = model.velocity(x, sigma, cond)
        perturb(model.trainable_parameters())
        assert not torch.allclose(model.velocity(x, sigma, cond), base)
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sigma, cond), base)


def test_trainable_state_dict_round_trip():
    trained = small(finetune="lora")
    perturb(trained.trainable_parameters())
    state = trained.trainable_state_dict()
    assert state and all("lora_" in k for k in state)
    fresh = small(finetune="lora")
    fresh.load_trainable_state_dict(state)
    x, sigma, cond = inputs(trained)
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, sigma, cond), trained.velocity(x, sigma, cond))


def test_weights_save_load_and_errors(tmp_path):
    model = small(finetune="none")
    save_weights(tmp_path / "w", model.config, model.text_encoder, model.transformer, training={"seed": 0})
    loaded = TinyShapeModel(weights=tmp_path / "w", finetune="none")
    x, sigma, cond = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, sigma, cond), model.velocity(x, sigma, cond))

    with pytest.raises(FileNotFoundError, match=r"nowhere.*transformer\.safetensors"):
        TinyShapeModel(weights=tmp_path / "nowhere")
    (tmp_path / "w" / "transformer.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"transformer\.safetensors"):
        TinyShapeModel(weights=tmp_path / "w")
    with pytest.raises(ValueError, match="pretrained=False"):
        TinyShapeModel(weights=tmp_path / "w", num_layers=1)


def test_shipped_weights_load_and_give_finite_velocities():
    model = load("tiny")
    assert model.weights_meta["training"]["steps_done"] > 0
    x, sigma, cond = inputs(model, n=2)
    with torch.no_grad():
        v = model.velocity(x, sigma, cond)
    assert v.shape == (2, 3, 32, 32) and torch.isfinite(v).all()
