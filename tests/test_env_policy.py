"""docs/architecture.md, "The rollout": the torchrl env, the rollout contract, the policy's log-prob, the gymnasium env."""

import gymnasium
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torchrl.envs.utils import check_env_specs

from conftest import TOY_PROMPTS
from genrl import dynamics, keys
from genrl.envs import DenoisingEnv
from genrl.metrics import l1_rel
from genrl.policy import fixed_shape_calls, make_policy, stochastic_steps
from toy_adapter import ToyAdapter, TransformerToyAdapter

K = 5


def make(adapter=None, shared_noise=False, micro_batch=4, kind="flow_sde", **params):
    adapter = adapter or ToyAdapter()
    sigmas = dynamics.flow_sigmas(K)
    env = DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=3, prompts_per_batch=2, shared_noise=shared_noise, seed=1)
    params = params or ({"eta": 0.3} if kind == "dance_sde" else {"a": 0.7})
    policy = make_policy(adapter, sigmas, stochastic_steps(K), kind, micro_batch=micro_batch, **params)
    return env, policy


def test_check_env_specs_passes_with_and_without_policy():
    env, policy = make()
    check_env_specs(env)
    with torch.no_grad():
        td = env.rollout(policy=policy)
    assert env.observation_spec.is_in(td[:, 0].select(*env.observation_spec.keys(True, True)))


def test_rollout_contract_shapes_and_context_stored_once():
    env, policy = make()
    with torch.no_grad():
        td = env.rollout(policy=policy)
    n = 6
    assert td.batch_size == (n, K)
    assert td[keys.LATENTS].shape == (n, K, 3, 8, 8) and td[keys.ACTION].shape == (n, K, 3, 8, 8)
    assert torch.equal(td[keys.STEP][0], torch.arange(K))
    assert torch.equal(td[keys.LATENTS][:, 1:], td[keys.ACTION][:, :-1])  # the transition is x <- action
    embeds = td[keys.CONTEXT, "prompt_embeds"]
    assert embeds.stride(1) == 0, "per-trajectory context must not be copied per step"
    assert td[keys.L1_REL].shape == (n, K, K) and td[keys.L1_REL].stride(1) == 0  # per trajectory: every step
    assert td[keys.GROUP_ID].stride(1) == 0
    assert torch.equal(td[keys.NEXT, keys.DONE][:, -1], torch.ones(n, 1, dtype=torch.bool))
    assert not td[keys.NEXT, keys.DONE][:, :-1].any()
    assert torch.equal(td[keys.SCALE][:, -1], torch.zeros(n))  # the last step is deterministic
    assert torch.all(td[keys.SCALE][:, :-1] > 0)
    assert env.prompts[0] == env.prompts[1] == env.prompts[2]  # G copies of each prompt


def storages(td):
    """The distinct storages behind a TensorDict's tensors, and their bytes (a view costs nothing)."""
    seen = {}
    for value in td.values(include_nested=True, leaves_only=True):
        seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return seen


def test_each_latent_is_stored_once_and_nothing_the_objective_does_not_read():
    env, policy = make()
    with torch.no_grad():
        td = env.rollout(policy=policy)
    x = td[keys.LATENTS]
    assert x.untyped_storage().data_ptr() == td[keys.ACTION].untyped_storage().data_ptr() == td[keys.NEXT, keys.LATENTS].untyped_storage().data_ptr()
    assert x.untyped_storage().nbytes() == td.batch_size[0] * (K + 1) * x[0, 0].numel() * 4  # x_0 … x_K, once
    assert keys.LOC not in td.keys() and keys.VELOCITY not in td.keys()  # μ_θ, v_θ: re-evaluated by objectives
    latent_bytes = td.batch_size[0] * (K + 1) * x[0, 0].numel() * 4
    context_bytes = td[keys.CONTEXT, "prompt_embeds"][:, 0].numel() * 4
    assert sum(storages(td).values()) <= 1.1 * (latent_bytes + context_bytes)


def test_the_deterministic_tail_is_one_row_from_its_first_latent_to_the_final_sample():
    """SDE on steps 1-2 of 7 (ODE before and after): rows 0-2 are steps 0-2, row 3 the tail, steps 3-6.
    What is kept is the full rollout's (`keep_tail=True`) exactly: the trained steps, the final sample,
    its reward, L1rel of every step."""
    k, adapter = 7, ToyAdapter()
    sigmas = dynamics.flow_sigmas(k)
    policy = make_policy(adapter, sigmas, stochastic_steps(k, [1, 2]), "flow_sde", micro_batch=4, a=0.7)
    env = lambda: DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=2, prompts_per_batch=2, seed=3,  # noqa: E731
                               reward=lambda images, prompts: images.mean((1, 2, 3)))
    with torch.no_grad():
        td, full = env().rollout(policy=policy), env().rollout(policy=policy, keep_tail=True)
    assert td.batch_size == (4, 4) and full.batch_size == (4, k)
    assert td[keys.STEP][0].tolist() == [0, 1, 2, 3] and td[keys.NEXT, keys.STEP][0].tolist() == [1, 2, 3, k]
    assert td[keys.LATENTS].untyped_storage().nbytes() == 4 * 5 * 3 * 8 * 8 * 4  # x_0 … x_3 and x_7
    assert torch.equal(td[keys.ACTION][:, -1], full[keys.ACTION][:, -1])  # the final sample
    assert torch.equal(td[keys.LATENTS], full[keys.LATENTS][:, :4])
    for key in (keys.LOG_PROB, keys.SCALE, keys.SIGMA):
        assert torch.equal(td[key][:, :3], full[key][:, :3])
    assert torch.equal(td[keys.SCALE][:, 3], torch.zeros(4)) and torch.equal(td[keys.LOG_PROB][:, 3], torch.zeros(4))
    assert torch.equal(td[keys.NEXT, keys.REWARD], torch.cat([torch.zeros(4, 3, 1), full[keys.NEXT, keys.REWARD][:, -1:]], 1))
    assert td[keys.NEXT, keys.DONE][:, -1].all() and not td[keys.NEXT, keys.DONE][:, :-1].any()
    assert torch.equal(td[keys.L1_REL][:, 0], l1_rel(full))  # [N, K]: every step, as computed from all latents
    assert td[keys.L1_REL].stride(1) == 0 and (td[keys.L1_REL][:, 0] > 0).all()


def test_an_all_ode_rollout_keeps_its_first_and_final_latents_only():
    k, adapter = 5, ToyAdapter()
    sigmas = dynamics.flow_sigmas(k)
    policy = make_policy(adapter, sigmas, torch.zeros(k, dtype=torch.bool), "flow_sde", micro_batch=4, a=0.7)
    with torch.no_grad():
        td = DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=2, prompts_per_batch=1).rollout(policy=policy)
    assert td.batch_size == (2, 1)
    assert td[keys.ACTION][:, -1].shape == (2, 3, 8, 8) and td[keys.CONTEXT][:, 0].batch_size == (2,)
    assert td[keys.L1_REL][:, 0].shape == (2, k)


def test_shared_noise_shares_initial_latents_within_groups_only():
    env, _ = make(shared_noise=True)
    td = env.reset()
    x = td[keys.LATENTS]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) and not torch.equal(x[0], x[3])
    env, _ = make(shared_noise=False)
    x = env.reset()[keys.LATENTS]
    assert not torch.equal(x[0], x[1])


def test_env_reward_scores_the_final_image_only():
    adapter = ToyAdapter()
    env = DenoisingEnv(adapter, TOY_PROMPTS, dynamics.flow_sigmas(K), group_size=2, prompts_per_batch=1,
                       reward=lambda images, prompts: images.mean((1, 2, 3)))
    policy = make_policy(adapter, env.sigmas, stochastic_steps(K), "flow_sde", a=0.7)
    with torch.no_grad():
        td = env.rollout(policy=policy)
    reward = td[keys.NEXT, keys.REWARD]
    assert torch.all(reward[:, :-1] == 0)
    expected = adapter.decode(td[keys.ACTION][:, -1]).mean((1, 2, 3))
    torch.testing.assert_close(reward[:, -1, 0], expected)


@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde", "cps"])
def test_policy_log_prob_equals_the_dynamics_formula(kind):
    adapter = ToyAdapter()
    env, policy = make(adapter, kind=kind)
    with torch.no_grad():
        td = env.rollout(policy=policy)
        flat = td.reshape(-1)
        v = adapter.velocity(flat[keys.LATENTS], flat[keys.SIGMA], flat[keys.CONTEXT])
        sigmas = env.sigmas
        params = {"eta": 0.3} if kind == "dance_sde" else {"a": 0.7}
        if kind == "flow_sde":
            params["sigma_1"] = float(sigmas[1])
        step = flat[keys.STEP]
        for i in range(flat.shape[0]):
            k = int(step[i])
            kind_k, params_k = (kind, params) if k < K - 1 else ("ode", {})
            mean, std = dynamics.MEAN_STD[kind_k](flat[keys.LATENTS][i : i + 1], v[i : i + 1], sigmas[k], sigmas[k + 1], **params_k)
            expected = dynamics.gaussian_log_prob(flat[keys.ACTION][i : i + 1], mean, std)
            torch.testing.assert_close(flat[keys.LOG_PROB][i : i + 1], expected, rtol=1e-5, atol=1e-6)


def test_ratio_is_exactly_one_at_any_batch_size():
    """Re-evaluating stored actions with unchanged weights: exp(new − old) == 1 bit for bit, for batches of 1, 3, N."""
    adapter = TransformerToyAdapter()
    env, policy = make(adapter, micro_batch=4)
    with torch.no_grad():
        td = env.rollout(policy=policy)
        flat = td.reshape(-1)
        old = flat[keys.LOG_PROB]
        for batch in (1, 3, flat.shape[0]):
            new = torch.cat([policy.get_dist(flat[i : i + batch]).log_prob(flat[i : i + batch][keys.ACTION])
                             for i in range(0, flat.shape[0], batch)])
            assert torch.equal(torch.exp(new - old), torch.ones_like(old)), f"batch {batch}"


def test_plain_batched_calls_are_not_batch_invariant():
    """The control for the test above: the same rows through the model in batches of 1 and of N differ."""
    adapter = TransformerToyAdapter()
    torch.manual_seed(0)
    x, sigma = torch.randn(12, 3, 8, 8), torch.rand(12)
    cond = adapter.encode(["a red circle"] * 12)
    with torch.no_grad():
        full = adapter.velocity(x, sigma, cond)
        one_by_one = torch.cat([adapter.velocity(x[i : i + 1], sigma[i : i + 1], cond[i : i + 1]) for i in range(12)])
    assert not torch.equal(full, one_by_one)


def test_fixed_shape_calls_pads_to_one_shape():
    shapes = []

    def fn(x):
        shapes.append(x.shape[0])
        return x * 2

    out = fixed_shape_calls(fn, 7, 4, torch.arange(7.0).unsqueeze(1))
    assert shapes == [4, 4] and torch.equal(out[:, 0], torch.arange(7.0) * 2)


def test_fixed_shape_calls_min_calls_pads_with_calls_that_stay_in_the_graph():
    """Lockstep for sharded models: extra calls on padding rows, reached by backward, not in the output."""
    reached = []

    def fn(x):
        y = x * 2
        y.register_hook(lambda g: reached.append(g.shape[0]))
        return y

    leaf = torch.arange(5.0, requires_grad=True)
    x = leaf.unsqueeze(1)
    out = fixed_shape_calls(fn, 5, 4, x, min_calls=3)
    assert out.shape == (5, 1) and torch.equal(out[:, 0], torch.arange(5.0) * 2)
    out.sum().backward()
    assert reached == [4, 4, 4]  # backward passed through all three calls
    assert torch.equal(leaf.grad, torch.full((5,), 2.0))  # padding rows add nothing
    assert fixed_shape_calls(lambda r: r, 5, 4, x, min_calls=1).shape == (5, 1)  # never fewer calls than rows need


def test_stochastic_steps_window_and_last_step():
    assert stochastic_steps(5).tolist() == [True, True, True, True, False]
    assert stochastic_steps(6, [1, 2]).tolist() == [False, True, True, False, False, False]


def test_empty_prompt_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        DenoisingEnv(ToyAdapter(), [], dynamics.flow_sigmas(K))


def test_gymnasium_env_passes_the_checker_and_wraps_in_torchrl():
    import genrl.envs  # noqa: F401  (registers genrl/Denoise-v0)
    from torchrl.envs import GymWrapper

    env = gymnasium.make("genrl/Denoise-v0", model="toy", reward="toy_brightness", prompts=TOY_PROMPTS, num_steps=3)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0, options={"prompt": "a red circle"})
    assert obs["prompt"] == "a red circle" and obs["latents"].shape == (3, 8, 8)
    total = 0.0
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(obs["latents"] * 0.5)
        total += reward
    assert terminated and total > 0 and obs["step"] == 3
    rollout = GymWrapper(env.unwrapped).rollout(3)
    assert rollout["next", "reward"].shape == (3, 1)


def test_dynamics_head_keeps_its_step_mask_on_the_device_of_its_sigmas():
    """Steps arrive on the model's device; a step mask left on the CPU failed the first CUDA run."""
    from genrl.policy import DynamicsHead

    head = DynamicsHead(torch.linspace(1, 0, 5).to("meta"), stochastic_steps(4), "dance_sde")
    assert head.stochastic.device == head.sigmas.device == torch.device("meta")


def test_the_env_state_dict_holds_its_random_streams():
    """What a resumed run restores: the seeds and prompts of the next reset follow from env.state_dict() alone."""
    env, _ = make()
    env.reset()
    state = env.state_dict()
    assert set(state) == {"rng", "prompt_sampler"}
    first = env.reset()
    env.reset()
    env.load_state_dict(state)
    again = env.reset()
    for key in (keys.NOISE_SEED, keys.STEP_SEED, keys.PROMPT_INDEX, keys.LATENTS):
        assert torch.equal(first[key], again[key])
