"""train.ema: an average of the trained weights that evaluation, checkpoints and `genrl eval RUN_DIR` use."""

import json

import pytest
import torch

from genrl import cli, config
from genrl.build import build_model
from genrl.ema import ParameterEMA


def test_the_average_moves_by_one_minus_decay_and_applied_restores_the_live_weights(toy_overrides):
    adapter = build_model(config.load(overrides=toy_overrides))
    ema = ParameterEMA(adapter, decay=0.75)
    start = adapter.trainable_state_dict()
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(1.0)
    ema.update()
    live = adapter.trainable_state_dict()
    assert all(torch.allclose(ema.average[k], start[k] + 0.25) for k in start)
    with ema.applied():
        assert all(torch.equal(adapter.trainable_state_dict()[k], ema.average[k]) for k in start)
    assert all(torch.equal(adapter.trainable_state_dict()[k], live[k]) for k in start)


def test_applied_points_the_parameters_at_the_average_instead_of_copying_it(toy_overrides):
    """No second set of weights: inside the context each parameter (the same object, so the optimizer's
    state still points at it) reads the average's storage, and its own comes back after; a gradient
    taken across the context is the live weights' one."""
    adapter = build_model(config.load(overrides=toy_overrides))
    ema = ParameterEMA(adapter, decay=0.5)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.mul_(2.0).add_(0.1)
    names = dict(adapter.named_parameters())
    live_ptr = {k: names[k].data_ptr() for k in ema.average}
    average_ptr = {k: v.data_ptr() for k, v in ema.average.items()}
    x = torch.randn(2, *adapter.latent_shape)
    cond = adapter.encode(["a", "b"])
    loss = adapter.velocity(x, torch.full((2,), 0.5), cond).square().mean()  # a graph on the live weights
    with torch.no_grad(), ema.applied():
        assert {k: names[k].data_ptr() for k in ema.average} == average_ptr
        assert all(names[k] is p for k, p in dict(adapter.named_parameters()).items())
    assert {k: names[k].data_ptr() for k in ema.average} == live_ptr
    assert {k: v.data_ptr() for k, v in ema.average.items()} == average_ptr
    loss.backward()
    expected = torch.autograd.grad(adapter.velocity(x, torch.full((2,), 0.5), cond).square().mean(),
                                   adapter.trainable_parameters())
    assert all(torch.allclose(p.grad, g) for p, g in zip(adapter.trainable_parameters(), expected))


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_an_impossible_decay_is_a_config_error(toy_overrides, decay):
    with pytest.raises(config.ConfigError, match="train.ema"):
        config.load(overrides=toy_overrides + [f"train.ema={decay}"])


def test_a_run_evaluates_and_exports_the_average(toy_overrides, tmp_path):
    run = tmp_path / "run"
    prompt_file = tmp_path / "free_text.txt"  # not ShapeWorld: evaluated with the (toy brightness) reward
    prompt_file.write_text("a bright morning\na dim evening\n")
    overrides = toy_overrides + [f"prompts.train={prompt_file}", f"prompts.eval={prompt_file}"]
    assert cli.main(["train", *overrides, "train.updates=3", "train.ema=0.5", "train.lr=0.05"]) == 0
    ckpt = run / "checkpoints" / "update_000003"
    state = torch.load(ckpt / "state.pt")
    from safetensors.torch import load_file

    live = load_file(ckpt / "trainable.safetensors")
    assert state["ema"].keys() == live.keys() and any(not torch.equal(state["ema"][k], live[k]) for k in live)
    # `genrl eval RUN_DIR` with the run's own evaluation settings gives the run's final score: both use the average
    out = tmp_path / "again.json"
    assert cli.main(["eval", str(run), "--prompts", str(prompt_file), "--out", str(out), "--seeds", "1", "--steps", "4"]) == 0
    final = json.loads((run / "eval" / "final.json").read_text())
    assert final["score"] != json.loads((run / "eval" / "base.json").read_text())["score"]
    assert json.loads(out.read_text())["score"] == pytest.approx(final["score"], abs=1e-6)
