"""The performance benchmarks' own code (no timing asserted): the scaling fit on synthetic times, the
storage count of the memory benchmark, and the byte bounds at the FLUX suite's shapes, which are
counts of bytes, not timings."""

import pytest
import torch
from tensordict import TensorDict

from genrl.benchmarks import cpu_speed, memory, packing, scaling


def test_the_fit_recovers_a_linear_cost_and_shows_a_super_linear_one_in_its_residuals():
    shapes = scaling.SHAPES
    rows = [s["prompts"] * s["group"] for s in shapes]
    sampled, trained = [s["steps"] for s in shapes], [s["trained"] for s in shapes]
    linear = [1e-3 * r * k + 4e-3 * r * t + 0.25 for r, k, t in zip(rows, sampled, trained)]
    f = scaling.fit(rows, sampled, trained, linear)
    assert (f.a, f.b, f.c) == pytest.approx((1e-3, 4e-3, 0.25), rel=1e-9)
    assert max(abs(e) for e in f.residuals) < 1e-9
    with_images = [t + 5e-3 * r for t, r in zip(linear, rows)]  # decoding and scoring: per image, not per step
    assert max(abs(e) for e in scaling.fit(rows, sampled, trained, with_images).residuals) > 0.01
    h = scaling.fit(rows, sampled, trained, with_images, per_row=True)
    assert h.d == pytest.approx(5e-3, rel=1e-6) and max(abs(e) for e in h.residuals) < 1e-9
    quadratic = [t + 2e-6 * (r * k) ** 2 for t, r, k in zip(linear, rows, sampled)]
    g = scaling.fit(rows, sampled, trained, quadratic)
    corner = max(range(len(shapes)), key=lambda i: rows[i] * sampled[i])
    assert max(abs(e) for e in g.residuals) > 0.2 and g.residuals[corner] > 0.2  # the corner sits above the line


def test_storage_bytes_count_a_tensors_views_once():
    x = torch.zeros(4, 6, 3)
    td = TensorDict({"latents": x[:, :-1], "action": x[:, 1:], "scale": torch.zeros(4, 5)}, batch_size=[4, 5])
    assert memory.storage_bytes([td]) == x.numel() * 4 + 4 * 5 * 4


def test_the_previous_rule_closed_a_pass_before_it_would_exceed_the_micro_batch():
    assert packing.previous_rule([2, 7, 3, 1, 4], 4) == [2, 7, 4, 4]


def test_a_balanced_minibatch_draw_removes_the_lockstep_fillers_of_sharded_runs():
    configs = {"flux.yaml": packing.CONFIGS["flux.yaml"]}
    random, balanced = (packing.measure(2, processes=8, sharded=True, configs=configs, draw=d) for d in ("random", "balanced"))
    by_algorithm = {r["algorithm"]: r for r in random}
    for r in balanced:
        assert r["padding"] < by_algorithm[r["algorithm"]]["padding"]
        if r["algorithm"] != "chunk_grpo":  # the same units in every trajectory: the processes' passes line up
            assert r["padding"] == 0 and by_algorithm[r["algorithm"]]["padding"] >= 0.3


def test_at_the_flux_suites_shapes_the_rollout_and_a_minibatch_stay_near_their_minimum():
    r = memory.computed("flux-hps", "chunk_grpo")
    assert (r["trajectories"], r["K"], r["rows"]) == (192, 17, 17)
    assert r["rollout"] <= 1.1 * r["rollout_minimum"] and r["rollout_before"] > 2 * r["rollout_minimum"]
    assert r["minibatch_peak"] <= 1.2 * r["minibatch_need"] < r["minibatch_before"]


def test_the_gpu_update_loads_its_random_weight_folders_and_times_every_phase(monkeypatch):
    """benchmarks/gpu_update.py's GPU path on the CPU at toy sizes: the folders it writes load through the
    `sd3` adapter and the `clip_score` reward, one update runs, and every phase is timed and counted."""
    from genrl.benchmarks import gpu_update

    monkeypatch.setattr(gpu_update, "SD35M", dict(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm"))
    monkeypatch.setattr(gpu_update, "SD35_VAE", dict(gpu_update.SD35_VAE, block_out_channels=(8, 8, 8, 8),
                                                     layers_per_block=1, norm_num_groups=4))
    monkeypatch.setattr(gpu_update, "TEXT_ENCODERS", dict(
        clip_l=dict(hidden=8, layers=2, heads=2, projection=8), clip_g=dict(hidden=24, layers=2, heads=2, projection=24),
        t5=dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)))
    monkeypatch.setattr(gpu_update, "CLIP_L", dict(vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                               num_attention_heads=2, image_size=32, patch_size=8),
                                                   text=dict(hidden=16, layers=1, heads=2), projection=16))
    overrides = ["model.options.resolution=64", "model.options.dtype=fp32", "train.group_size=2", "sampling.micro_batch=2"]
    r = gpu_update.measure(dry_run=False, prompts=2, updates=1, device="cpu", overrides=overrides)
    assert r["model"] == "sd3" and r["images_per_update"] == 4 and r["loss_finite"]
    phases = r["phases"]
    assert all(phases[name]["seconds"] > 0 for name in ("rollout", "decode", "reward", "training"))
    assert phases["rollout"]["nfe"] == 4 * 10 * 2  # 4 images × 10 steps × CFG
    assert phases["training"]["nfe"] == 4 * 9 * 2 * 2  # 9 trained steps each, CFG, the policy and its KL reference
    assert r["gflops_per_row"]["forward_backward"] > r["gflops_per_row"]["forward"] > 0
    assert phases["training"]["tflops_per_s"] > 0 and phases["rollout"]["mfu"] is None  # no peak known on a CPU


def test_the_cpu_speed_benchmark_compares_one_process_with_data_parallel_processes(tmp_path):
    """Layouts, the time per update read from cumulative wall_s, and the metrics check, on synthetic rows;
    then one run of every layout of a tiny model, so the command lines are ones genrl accepts."""
    assert [(c.processes, c.threads, c.draw) for c in cpu_speed.layouts(cores=4, processes=2)] == [
        (1, 4, "random"), (1, 4, "balanced"), (2, 2, "random"), (2, 2, "balanced")]
    rows = [{"wall_s": w, "reward_mean": 0.5, "grad_norm": 0.01} for w in (5.0, 6.0, 8.0, 10.0)]
    assert cpu_speed.seconds_per_update(rows, warmup=1) == pytest.approx(5.0 / 3)
    assert cpu_speed.seconds_per_update(rows, warmup=0) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="leave none"):
        cpu_speed.seconds_per_update(rows, warmup=4)
    assert cpu_speed.same_metrics(rows, [dict(r, grad_norm=0.01 * (1 + 1e-6)) for r in rows])
    assert not cpu_speed.same_metrics(rows, [dict(r, reward_mean=0.51) for r in rows])
    assert not cpu_speed.same_metrics(rows, rows[:3])

    tiny = ["model.options={pretrained: false, num_layers: 1, attention_head_dim: 8, finetune: full}",
            "train.prompts_per_update=4", "train.group_size=2", "sampling.num_steps=6"]
    results = cpu_speed.measure(updates=2, warmup=1, repeats=1, processes=2, cores=2, overrides=tiny)
    assert [r["same_metrics_as"] for r in results] == [None, None, "1 process × 2 thread(s), random draw",
                                                        "1 process × 2 thread(s), balanced draw"]
    assert results[0]["speedup"] == 1.0 and all(r["s_per_update"] > 0 for r in results)


def test_the_autocast_check_times_both_precisions_and_measures_the_bf16_error():
    r = cpu_speed.autocast_check(micro_batch=4, repeats=1, calls=1)
    assert r["forward"] > 0 and r["forward_backward"] > 0 and len(r["ms"]) == 4
    assert 0 < r["relative_error"] < 0.1  # bf16 rounds (8 bits of mantissa), but computes the same velocity
    assert isinstance(r["grad_equals_no_grad"], bool)
