"""An algorithm of another family, registered from outside the package and trained by the unchanged trainer.

Reward-weighted flow matching on the forward process (the family of DiffusionNFT, arXiv 2509.16117,
and Advantage Weighted Matching, arXiv 2509.25050): ODE rollouts, no per-step log-probs; the final
samples x₀ are re-noised at random t, x_t = (1 − t)·x₀ + t·ε, and the velocity is regressed onto
ε − x₀ with a weight that grows with the sample's advantage. An "old" policy (an average of the
trained weights, soft-updated after every optimizer step, kept in checkpoints) anchors v_θ, as
DiffusionNFT's implicit policies need one: every model call it makes is counted in the NFEs.
"""

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import resumed_and_uninterrupted
from tensordict import TensorDict, TensorDictBase

from genrl import cli, config, keys
from genrl.algorithms import Algorithm, register
from genrl.ema import ParameterEMA
from genrl.objective import Objective
from genrl.policy import make_policy, velocity_module
from genrl.trainer import Trainer
from genrl.training_batch import TrajectoryRows, UpdateContext

N, K, M = 8, 6, 2  # trajectories per update (toy_overrides), denoising steps, re-noisings per sample


@dataclass
class FlowMatchingOptions:
    shift: float = 1.0  # timestep shift of the rollout's schedule
    schedule: str = "diffusers"  # its σ grid (dynamics.sigma_schedule)
    shared_noise: bool = False  # the G samples of a prompt share their initial noise
    advantage: str = "per_prompt"  # group-relative advantages, as the GRPO family's
    advantage_std: str = "population"
    advantage_eps: float = 1e-4
    draws: int = 1  # re-noisings of each final sample per update
    anchor: float = 0.1  # weight of ‖v_θ − v_old‖²
    old_decay: float = 0.5  # old ← decay·old + (1 − decay)·θ after every optimizer step


class ReNoisedFlowMatching(Objective):
    """mean_rows w·‖v_θ(x_t, t, c) − (ε − x₀)‖² + anchor·‖v_θ − v_old‖² over rows [S] of (x₀, t, ε, w, c)."""

    @dataclass
    class _AcceptedKeys:
        sample: str = "x0"
        sigma: str = "t"
        noise: str = "noise"
        weight: str = "weight"
        context: str = keys.CONTEXT

    def __init__(self, velocity, old: ParameterEMA, anchor: float):
        super().__init__()
        self.velocity, self.old, self.anchor = velocity, old, anchor

    def forward(self, td: TensorDictBase) -> TensorDict:
        k = self.tensor_keys
        x0, t, eps, context = td.get(k.sample), td.get(k.sigma), td.get(k.noise), td.get(k.context)
        x_t = (1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * eps
        with torch.no_grad(), self.old.applied():  # first: the old weights are swapped in and out in place
            v_old = self.velocity(x_t, t, context)
        v = self.velocity(x_t, t, context)
        error = ((v - (eps - x0)) ** 2).mean((1, 2, 3))  # [S]
        return TensorDict({"loss_flow": (td.get(k.weight) * error).mean(),
                           "loss_anchor": self.anchor * ((v - v_old) ** 2).mean(),
                           "flow_error": error.mean().detach()}, batch_size=[])


@register("flow_matching_for_test")
class RewardWeightedFlowMatching(Algorithm):
    name = "flow_matching_for_test"
    options_class = FlowMatchingOptions
    defaults = dict(draws=M)

    def stochastic_steps(self) -> torch.Tensor:
        return torch.zeros(self.num_steps, dtype=torch.bool)  # the ODE at every step

    def make_policy(self, adapter, sigmas, *, micro_batch, calls):
        return make_policy(adapter, sigmas, self.stochastic_steps(), "flow_sde", micro_batch=micro_batch, calls=calls, a=0.7)

    def make_objective(self, policy, adapter):
        self.old, self.steps = ParameterEMA(adapter, self.options.old_decay), 0
        return ReNoisedFlowMatching(velocity_module(policy), self.old, self.options.anchor)

    def training_batch(self, rollout: TensorDictBase, ctx: UpdateContext) -> TrajectoryRows:
        x0 = rollout.get(keys.ACTION)[:, -1]  # [n, C, H, W] the final samples
        n, m, device = x0.shape[0], self.options.draws, x0.device
        t = torch.rand(ctx.num_trajectories, m, generator=ctx.generator)[ctx.rows]  # drawn on the global batch
        noise = torch.randn(ctx.num_trajectories, m, *x0.shape[1:], generator=ctx.generator)[ctx.rows]
        weight = rollout.get(keys.ADVANTAGE)[:, 0].clamp(min=0)  # better than its group's mean, in proportion
        rows = TensorDict({
            "x0": x0.unsqueeze(1).expand(n, m, *x0.shape[1:]), "t": t.to(device), "noise": noise.to(device),
            "weight": weight.unsqueeze(1).expand(n, m), keys.CONTEXT: rollout.get(keys.CONTEXT)[:, 0].unsqueeze(1).expand(n, m),
            keys.UNIT: torch.arange(n * m, device=device).reshape(n, m),  # every row its own unit
        }, batch_size=[n, m], device=rollout.device)
        return TrajectoryRows(rows, {"t_mean": float(t.mean())})

    def after_step(self) -> None:
        self.old.update()
        self.steps += 1

    def state_dict(self) -> dict:
        return {"old": {k: v.detach().cpu() for k, v in self.old.average.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.old.load(state["old"])
        self.steps = state["steps"]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_forward_process_algorithm_from_outside_trains_with_its_calls_counted(toy_overrides, tmp_path):
    cfg = config.load(overrides=toy_overrides + ["algorithm=flow_matching_for_test", "log.eval_at_start=false"])
    assert cfg.algo == FlowMatchingOptions(draws=M)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.parts.adapter.trainable_state_dict().items()}
    trainer.run()
    metrics = read_metrics(tmp_path / "run")
    assert [m["update"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"loss_flow", "loss_anchor", "flow_error", "t_mean", "num_units", "grad_norm"} <= set(m)
        assert "clip_frac" not in m and m["skipped"] == 0 and m["grad_norm"] > 0
        assert m["num_units"] == N * M  # every row its own unit, all of them trained
    # Rollout: N trajectories x K ODE steps; objective: θ and the old policy on N x M re-noised samples.
    assert [m["nfe"] for m in metrics] == [u * (N * K + 2 * N * M) for u in (1, 2)]
    after = trainer.parts.adapter.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    algorithm = trainer.algorithm
    assert algorithm.steps == 2 * cfg.train.minibatches  # one soft update per optimizer step
    old = algorithm.old.average
    assert all(not torch.equal(old[k], before[k]) and not torch.equal(old[k], after[k]) for k in before)
    state = torch.load(tmp_path / "run" / "checkpoints" / "update_000002" / "state.pt", weights_only=False)
    assert state["algorithm"]["steps"] == 4 and state["algorithm"]["old"].keys() == before.keys()


def test_its_state_goes_through_checkpoints_and_a_resumed_run_continues_exactly(toy_overrides, tmp_path):
    common = toy_overrides + ["algorithm=flow_matching_for_test", "log.eval_at_start=false"]
    a, b = resumed_and_uninterrupted(common, tmp_path)
    assert a["algorithm"]["steps"] == b["algorithm"]["steps"] == 8
    assert all(torch.equal(a["algorithm"]["old"][k], b["algorithm"]["old"][k]) for k in a["algorithm"]["old"])


def test_an_option_of_another_family_is_an_error_naming_the_key(toy_overrides, capsys):
    assert cli.main(["train", *toy_overrides, "algorithm=flow_matching_for_test", "flow_matching_for_test.sde_window=[0, 2]"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'flow_matching_for_test.sde_window'" in err and "draws" in err


def test_the_objective_renames_its_keys_and_rejects_an_unknown_name():
    objective = ReNoisedFlowMatching(velocity=None, old=None, anchor=0.0)
    assert objective.set_keys(sample="final") is objective and objective.tensor_keys.sample == "final"
    with pytest.raises(ValueError, match="reads no key named advantage; accepted: context, noise, sample, sigma, weight"):
        objective.set_keys(advantage="adv")
