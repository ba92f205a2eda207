"""The built run uses the re-derived formulas: the policy's σ grid and step log-probs (float32, as
trained) match the references, and the loss's KL is Flow-GRPO's in the `reference` form."""

from __future__ import annotations

import pytest
import torch

from conftest import TOY_PROMPTS
from genrl import build, config, keys
from genrl.policy import mean_module

from . import reference as ref

K = 6
REFERENCE_SCHEDULE = {
    "flow_grpo": lambda: ref.diffusers_sigma_schedule(K, 1.0),  # the toy model has no shift of its own
    "dance_grpo": lambda: ref.dance_sigma_schedule(K, 3.0),
    "chunk_grpo": lambda: ref.dance_sigma_schedule(K, 3.0),
}


def build_toy(algorithm: str, tmp_path, **section):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TOY_PROMPTS) + "\n")
    return build.build(config.from_dict({
        "algorithm": algorithm, algorithm: section,
        "model": {"name": "toy", "options": {}}, "reward": {"name": "toy_brightness", "options": {}},
        "prompts": {"train": str(prompts), "eval": str(prompts)},
        "sampling": {"num_steps": K, "micro_batch": 8}, "train": {"prompts_per_update": 2, "group_size": 4},
    }))


def stochastic_steps_and_velocity(parts):
    """The rollout's stochastic steps, flat, with the velocity and mean μ_θ there (re-run with the same weights)."""
    with torch.no_grad():
        td = parts.env.rollout(policy=parts.policy)  # [N, K]
        steps = td[:, :-1].reshape(-1)
        steps.update(mean_module(parts.policy)(steps.clone()).select(keys.VELOCITY, keys.LOC))
    x, x_next = steps.get(keys.LATENTS).double(), steps.get(keys.ACTION).double()
    sigma = parts.sigmas.double()[steps.get(keys.STEP)]
    sigma_next = parts.sigmas.double()[steps.get(keys.STEP) + 1]
    return steps, x, steps.get(keys.VELOCITY).double(), x_next, sigma, sigma_next


def reference_step(algorithm, parts, x, v, x_next, sigma, sigma_next):
    o = parts.config.algo
    if o.dynamics == "dance_sde":
        return ref.dance_grpo_flux_step(v, x, o.noise_level, sigma, sigma_next, x_next)
    return ref.flow_grpo_sde_step(v, x, sigma, sigma_next, float(parts.sigmas[1]), o.noise_level, x_next)


@pytest.mark.parametrize("algorithm", list(REFERENCE_SCHEDULE))
def test_rollout_log_probs_are_the_references(algorithm, tmp_path):
    parts = build_toy(algorithm, tmp_path)
    torch.testing.assert_close(parts.sigmas.double(), REFERENCE_SCHEDULE[algorithm]().double(), rtol=1e-6, atol=1e-6)
    steps, x, v, x_next, sigma, sigma_next = stochastic_steps_and_velocity(parts)
    r_mean, _, r_log_prob = reference_step(algorithm, parts, x, v, x_next, sigma, sigma_next)
    torch.testing.assert_close(steps.get(keys.LOC).double(), r_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steps.get(keys.LOG_PROB).double(), r_log_prob, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["reference", "exact"])
def test_loss_kl_is_flow_grpos_in_the_reference_form(form, tmp_path):
    parts = build_toy("flow_grpo", tmp_path, kl=form)
    assert (parts.loss.kl, parts.loss.beta) == (form, 0.04)
    with torch.no_grad():
        td = parts.env.rollout(policy=parts.policy)
        for p in parts.adapter.net.parameters():  # move the policy away from the frozen reference
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    steps = td[:, :-1].reshape(-1)
    steps.set(keys.ADVANTAGE, torch.zeros(steps.batch_size[0]))
    steps.set("unit", torch.arange(steps.batch_size[0]))
    with torch.no_grad():
        out = parts.loss(steps.clone())
        chain = mean_module(parts.policy)
        ours = chain(steps.clone())
        with parts.adapter.reference():
            base = chain(steps.clone())
    x, v = steps.get(keys.LATENTS).double(), ours.get(keys.VELOCITY).double()
    sigma = parts.sigmas.double()[steps.get(keys.STEP)]
    sigma_next = parts.sigmas.double()[steps.get(keys.STEP) + 1]
    _, noise_level, _ = ref.flow_grpo_sde_step(v, x, sigma, sigma_next, float(parts.sigmas[1]), 0.7, x)
    denominator = noise_level if form == "reference" else noise_level * torch.sqrt(sigma - sigma_next)
    expected = ref.flow_grpo_kl(ours.get(keys.LOC).double(), base.get(keys.LOC).double(), denominator).mean()
    assert float(expected) > 0
    torch.testing.assert_close(out["kl"].double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss_kl"].double(), 0.04 * expected, rtol=1e-5, atol=0)


def test_cps_reference_log_prob_is_what_the_policy_records(tmp_path):
    parts = build_toy("flow_grpo", tmp_path, dynamics="cps")
    steps, x, v, x_next, sigma, sigma_next = stochastic_steps_and_velocity(parts)
    _, _, r_log_prob = ref.flow_grpo_cps_step(v, x, sigma, sigma_next, 0.7, x_next)
    torch.testing.assert_close(steps.get(keys.LOG_PROB).double(), r_log_prob, rtol=1e-5, atol=1e-9)
