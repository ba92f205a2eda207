"""`genrl.load_run` and `genrl export`: a run's trained weights, loaded back by genrl and by plain diffusers.

Runs are written by hand (config.yaml + one checkpoint of perturbed trainable weights), so that the
loaded and exported policies are compared with known weights, on tiny random components.
"""

import json

import pytest
import torch
import yaml

import genrl
from genrl import checkpoint, cli, config, models
from genrl.build import build_model


def make_run(tmp_path, model: str, options: dict, ema: bool = False, name: str = "run"):
    """A run directory whose latest checkpoint holds perturbed trainable weights (and an average if `ema`);
    returns (run directory, the weights a loaded run must hold)."""
    cfg = config.load(overrides=[f"model.name={model}", f"model.options={json.dumps(options)}",
                                 f"train.ema={0.9 if ema else 0.0}"])
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    adapter = build_model(cfg)
    generator = torch.Generator().manual_seed(1)
    perturbed = lambda: {k: v + 0.05 * torch.randn(v.shape, generator=generator)  # noqa: E731
                         for k, v in adapter.trainable_state_dict().items()}
    trained, state = perturbed(), {"update": 3}
    if ema:
        state["ema"] = perturbed()
    checkpoint.save(run, 3, trained, state)
    return run, state.get("ema", trained)


def velocity_inputs(adapter, prompts=("a red circle", "a blue square")):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(len(prompts), *adapter.latent_shape, generator=generator)
    return x, torch.tensor([0.9, 0.4]), adapter.encode(list(prompts))


def same_velocity(a, b, inputs):
    with torch.no_grad():
        torch.testing.assert_close(a.velocity(*inputs), b.velocity(*inputs), atol=1e-5, rtol=1e-4)


TINY = {"pretrained": False, "num_layers": 1, "attention_head_dim": 8, "finetune": "lora", "lora_rank": 4}


def test_load_run_returns_the_checkpoint_weights_and_prefers_the_average(tmp_path):
    run, average = make_run(tmp_path, "tiny", TINY, ema=True)
    adapter = genrl.load_run(run)
    state = adapter.trainable_state_dict()
    assert state.keys() == average.keys() and all(torch.equal(state[k], average[k]) for k in state)
    from_checkpoint_dir = genrl.load_run(run / "checkpoints" / "update_000003")
    assert all(torch.equal(from_checkpoint_dir.trainable_state_dict()[k], average[k]) for k in state)
    live_run, live = make_run(tmp_path, "tiny", TINY, ema=False, name="live")
    assert all(torch.equal(genrl.load_run(live_run).trainable_state_dict()[k], live[k]) for k in live)
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        genrl.load_run(tmp_path / "nowhere")


def test_tiny_export_loads_in_diffusers_and_in_genrl(tmp_path, capsys):
    from diffusers import SD3Transformer2DModel

    from genrl.models.tiny_text import TinyTextEncoder

    run, _ = make_run(tmp_path, "tiny", TINY, ema=True)
    out = tmp_path / "export"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert "SD3Transformer2DModel.from_pretrained" in capsys.readouterr().out
    trained = genrl.load_run(run)
    inputs = velocity_inputs(trained)

    base = models.load("tiny", **{**TINY, "finetune": "none"})
    base.transformer = SD3Transformer2DModel.from_pretrained(out, subfolder="transformer")
    assert not any("lora" in name for name, _ in base.transformer.named_parameters())
    same_velocity(base, trained, inputs)

    reloaded = models.load("tiny", weights=out, finetune="none")  # transformer, text encoder and vocabulary
    same_velocity(reloaded, trained, inputs)
    ids = trained.tokenizer.encode(["two green triangles"])
    encoder = TinyTextEncoder.from_pretrained(out / "text_encoder")
    torch.testing.assert_close(encoder(ids)[0], trained.text_encoder(ids)[0])


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_real_model_lora_export_loads_into_a_diffusers_pipeline(tmp_path, name):
    import diffusers

    from genrl.testing import components as random_tiny

    run, _ = make_run(tmp_path, f"tiny-random-{name}", {"lora_rank": 4, "lora_alpha": 8})
    trained = genrl.load_run(run)
    inputs = velocity_inputs(trained, ("a red cat", "a blue dog"))
    out = tmp_path / "lora"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "transformer").exists()

    pipe = getattr(diffusers, trained.PIPELINE).from_pretrained(random_tiny._built(name))
    pipe.load_lora_weights(out)
    plain = models.load(f"tiny-random-{name}", finetune="none")
    plain.transformer = pipe.transformer
    same_velocity(plain, trained, inputs)

    merged = tmp_path / "merged"
    assert cli.main(["export", str(run), "--out", str(merged), "--merge"]) == 0
    plain.transformer = getattr(diffusers, trained.TRANSFORMER).from_pretrained(merged, subfolder="transformer")
    assert not any("lora" in n for n, _ in plain.transformer.named_parameters())
    same_velocity(plain, trained, inputs)


def test_full_finetune_export_is_the_transformer_folder(tmp_path):
    from diffusers import SD3Transformer2DModel

    run, _ = make_run(tmp_path, "tiny-random-sd3", {"finetune": "full"})
    out = tmp_path / "full"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    trained = genrl.load_run(run)
    plain = models.load("tiny-random-sd3", finetune="none")
    plain.transformer = SD3Transformer2DModel.from_pretrained(out, subfolder="transformer")
    same_velocity(plain, trained, velocity_inputs(trained, ("a red cat", "a blue dog")))


def test_export_of_a_model_without_a_format_is_a_one_line_error(tmp_path, capsys):
    run, _ = make_run(tmp_path, "toy", {})
    assert cli.main(["export", str(run), "--out", str(tmp_path / "never")]) == 2
    assert "model 'toy'" in capsys.readouterr().err and not (tmp_path / "never").exists()
