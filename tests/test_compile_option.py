"""`model.compile` (docs/performance.md, "torch.compile"): the denoiser torch.compiled for rollouts, training passes
and evaluations, with ratios still exactly 1, resume still bit-exact and checkpoints those of the eager model.

Each compile costs tens of seconds on a busy CPU, so the tests share a few tiny models; inductor must work here:
a compiler that is missing fails these tests, it does not skip them."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from genrl import cli, config, dynamics, keys, models
from genrl.envs import DenoisingEnv
from genrl.policy import make_policy, stochastic_steps
from genrl.trainer import Trainer

TINY = ["model.name=tiny", "model.options={pretrained: false, num_layers: 1, attention_head_dim: 8, finetune: full}",
        "log.eval_at_start=false", "chunk_grpo.beta=0.04"]  # the KL term runs the frozen reference copy too
MEASURED = {"wall_s", "images_per_s", "peak_mem_mb"}  # timings and memory, not results


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def graphs() -> dict:
    return dict(counters["stats"])


@pytest.mark.parametrize("model", ["tiny", "tiny_video"])
def test_a_reevaluated_action_has_ratio_exactly_one_and_the_lora_reference_compiles_once(model):
    """As tests/test_env_policy.py's ratio test, compiled: the rollout's forward runs without gradients, the
    re-evaluation with them (as a training pass does), and both give the same bits. Switching LoRA off for the
    reference and back does not compile again. The video model too: the video main job runs compiled."""
    from conftest import TOY_PROMPTS

    head_dim, prompts = (8, TOY_PROMPTS) if model == "tiny" else (24, ["a red circle moving left",
                                                                        "a blue square staying still"])
    adapter = models.load(model, pretrained=False, num_layers=1, attention_head_dim=head_dim, finetune="lora", seed=3)
    adapter.compile_denoiser()
    sigmas = dynamics.flow_sigmas(4)
    env = DenoisingEnv(adapter, prompts, sigmas, group_size=3, prompts_per_batch=2, seed=1)
    policy = make_policy(adapter, sigmas, stochastic_steps(4), "flow_sde", micro_batch=4, a=0.7)
    before = graphs()
    with torch.no_grad():
        flat = env.rollout(policy=policy).reshape(-1)
    assert graphs().get("unique_graphs", 0) > before.get("unique_graphs", 0)  # it did compile
    old = flat[keys.LOG_PROB]

    def reevaluate(batch: int) -> torch.Tensor:
        return torch.cat([policy.get_dist(flat[i: i + batch]).log_prob(flat[i: i + batch][keys.ACTION])
                          for i in range(0, flat.shape[0], batch)])

    for round_ in range(2):
        for batch in (1, 3, flat.shape[0]):  # padded last micro-batches included
            new = reevaluate(batch)
            assert new.requires_grad
            assert torch.equal(torch.exp(new.detach() - old), torch.ones_like(old)), f"batch {batch}"
        with adapter.reference():
            reference = reevaluate(flat.shape[0])
            with torch.no_grad():
                assert torch.equal(reevaluate(flat.shape[0]), reference.detach())
        if round_ == 0:
            compiled = graphs()
    assert graphs() == compiled  # the second round, adapters off and on again, reused every graph


def run_config(toy_overrides, run_dir, *extra):
    return config.load(overrides=[*toy_overrides, *TINY, f"run_dir={run_dir}", *extra])


def test_resume_is_bit_exact_and_checkpoints_are_the_eager_models(toy_overrides, tmp_path, capsys):
    Trainer(run_config(toy_overrides, tmp_path / "a", "model.compile=true", "train.updates=2")).run()
    assert capsys.readouterr().out.count("genrl: model.compile is on") == 1
    before = graphs()
    Trainer(run_config(toy_overrides, tmp_path / "b", "model.compile=true", "train.updates=1")).run()
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "train.updates=2"]) == 0
    strip = lambda ms: [{k: v for k, v in m.items() if k not in MEASURED} for m in ms]  # noqa: E731
    straight, resumed = strip(read_metrics(tmp_path / "a")), strip(read_metrics(tmp_path / "b"))
    assert len(straight) == 2 and straight == resumed
    a = load_file(tmp_path / "a" / "checkpoints" / "update_000002" / "trainable.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "update_000002" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert graphs() == before  # a second model of the same structure reuses the compiled graphs

    eager = Trainer(run_config(toy_overrides, tmp_path / "eager", "train.updates=2", "log.eval_at_end=false"))
    eager.run()
    e = load_file(tmp_path / "eager" / "checkpoints" / "update_000002" / "trainable.safetensors")
    assert list(e) == list(a) and not any("_orig_mod" in k for k in a)
    assert not all(torch.equal(a[k], e[k]) for k in a)  # the compiled run was compiled: not the eager bits
    state_a, state_e = (torch.load(tmp_path / r / "checkpoints" / "update_000002" / "state.pt") for r in ("a", "eager"))
    assert sorted(state_a) == sorted(state_e)
    assert sorted(state_a["optimizer"]["state"]) == sorted(state_e["optimizer"]["state"])
    saved = {r: yaml.safe_load((tmp_path / r / "config.yaml").read_text())["model"] for r in ("a", "eager")}
    assert saved["a"]["compile"] is True and "compile" not in saved["eager"]  # an eager run's config.yaml as before
    # like device, the setting may change on resume: the checkpoint of an eager run resumes compiled
    assert cli.main(["train", "--resume", str(tmp_path / "eager"), "train.updates=3", "model.compile=true"]) == 0
    assert len(read_metrics(tmp_path / "eager")) == 3


def test_an_adapter_that_was_compiled_saves_and_copies_as_the_eager_one(tmp_path):
    import copy

    adapter = models.load("tiny", pretrained=False, num_layers=1, attention_head_dim=8, finetune="full")
    keys_before = list(adapter.state_dict())
    adapter.compile_denoiser()
    x, sigma, cond = torch.zeros(2, *adapter.latent_shape), torch.full((2,), 0.5), adapter.encode(["a red circle"] * 2)
    with torch.no_grad():
        v = adapter.velocity(x, sigma, cond)
        assert list(adapter.state_dict()) == keys_before
        adapter.save_pretrained(tmp_path / "out")
        saved = load_file(tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors")
        assert sorted(saved) == sorted(adapter.transformer.state_dict())
        twin = copy.deepcopy(adapter)  # runs its own modules, not the original's
        for p in twin.transformer.parameters():
            p.zero_()
        assert not torch.equal(twin.velocity(x, sigma, cond), v)


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_bad_value_is_one_line(toy_overrides, tmp_path, capsys, value):
    assert cli.main(["train", *toy_overrides, f"model.compile={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.compile" in err and not (tmp_path / "run").exists()


def test_a_model_without_a_transformer_is_refused_before_the_run_starts(toy_overrides, tmp_path, capsys):
    assert cli.main(["train", *toy_overrides, "model.compile=true"]) == 2  # the toy adapter has no transformer
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.compile=true" in err and not (tmp_path / "run").exists()


def test_cpu_speed_times_the_main_job_eager_against_compiled_in_one_run():
    """`python -m genrl.benchmarks.cpu_speed --compile`, at a tiny shape: both runs, the compile in the first update."""
    from genrl.benchmarks import cpu_speed

    assert "model.compile=true" in cpu_speed.command(cpu_speed.compile_layouts(1)[1], 2, "R", [])
    assert not any("model.compile" in a for a in cpu_speed.command(cpu_speed.layouts(1, 2)[0], 2, "R", []))
    tiny = ["model.options={pretrained: false, num_layers: 1, attention_head_dim: 8, finetune: full}",
            "train.prompts_per_update=2", "train.group_size=2", "sampling.num_steps=6"]
    eager, compiled = cpu_speed.measure(updates=2, warmup=1, repeats=1, processes=1, cores=1, overrides=tiny,
                                        compiled=True)
    assert (eager["compiled"], compiled["compiled"]) == (False, True) and eager["same_metrics_as"] is None
    assert compiled["same_metrics_as"] in (eager["layout"], False)  # compared with eager's, to a tolerance
    assert all(0 < r["first_update_s"] <= r["run_s"] and r["s_per_update"] > 0 for r in (eager, compiled))


def test_compiling_never_falls_back_to_eager_silently():
    """Every diffusers transformer's forward is one code object to dynamo (peft_utils' wrapper), so the variants of
    all compiled models in a process share one recompile limit; past it dynamo would run eager without a word (a
    video model compiled before an image one once made this file's resume test see eager bits)."""
    from genrl.models.finetune import RECOMPILE_LIMIT

    adapter = models.load("tiny", pretrained=False, num_layers=1, attention_head_dim=8, finetune="full", seed=3)
    adapter.compile_denoiser()
    assert torch._dynamo.config.fail_on_recompile_limit_hit
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
