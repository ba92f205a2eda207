"""What a benchmark suite costs before it runs: FLOPs, GPU-hours, wall-clock and memory per GPU.

    genrl bench SUITE --estimate [--mfu 0.35] [--gpus 8]
    python -m genrl.benchmarks.estimate SUITE [--mfu 0.35] [--gpus 8]
    python -m genrl.benchmarks.estimate --check smoke     # a CPU suite: counts and projection against real updates

For each arm of the suite, one update is run as the trainer runs it (rollout, decode, reward,
advantages, every minibatch's passes and optimizer steps) with a stand-in model that records its
calls instead of computing them: how many denoiser calls run without gradients (rollout), with
gradients (training passes) and as the frozen reference (KL), how many latents are decoded, how
many calls the largest pass holds before its backward, and the NFEs the budget is charged. Every
call has the fixed shape of a micro-batch, so an update's FLOPs are those counts times the FLOPs of
one call, counted by FlopCounterMode on the real model at the config's shapes without weights or
a device (genrl.benchmarks.flop_count). A run's updates are its NFE budget over an update's NFEs;
its held-out evaluations (before, every `eval_every` updates, after) are counted at the eval
prompts' number, seeds and steps. Rewards and text encoders are not counted (they run once per
image and prompt: a few per cent of a denoiser's FLOPs).

Time = FLOPs / (GPUs × dense bf16 peak × MFU), the MFU an assumption (`--mfu`, default 0.35: large
diffusion-transformer training typically reaches 0.3-0.45 of the dense peak). Peak memory per GPU:
the transformer's training pass counted on the meta device (weights, LoRA, activations of the
largest pass, gradients) + AdamW's two fp32 moments of the trained weights + this process's share
of the rollout (its latents and prompt embeddings) + the weights of the text encoders, VAE and
reward (parameter counts, genrl docs/real_models.md).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict

from genrl import build, config, keys
from genrl.benchmarks import wan_shapes
from genrl.benchmarks.flop_count import CallCost, call_cost, real_model, rows_per_velocity, text_tokens
from genrl.benchmarks.suite import load_suite, plan_runs
from genrl.models.base import ModelAdapter

# Dense (no sparsity) bf16 tensor-core rates and memory, from NVIDIA's data sheets: H100 SXM5 989 TFLOP/s
# 80 GB; H200 SXM 989 TFLOP/s (the H100's compute) 141 GB; A100 SXM4 312 TFLOP/s 80 GB.
GPUS = {"H100": (989e12, 80e9), "H200": (989e12, 141e9), "A100": (312e12, 80e9)}
DEFAULT_MFU = 0.35
# Weights besides the transformer, bytes (docs/real_models.md): text encoders in bf16, fp32 VAE, reward.
TEXT_ENCODERS = {"sd35m": 11e9, "flux": 10e9, "wan21-1.3b": wan_shapes.UMT5_XXL_BYTES}
VAE_BYTES = 0.34e9  # 84M parameters in fp32 (SD3.5's, FLUX's)
REWARDS = {"clip_score": 1.7e9, "pickscore": 4e9, "hpsv2": 4e9, "hpsv3": 16.6e9, "imagereward": 1.8e9}
# Held-out prompts when the file is not on this machine (the suites' comments): GenEval's test set, HPDv2's, Flow-GRPO's OCR set.
EVAL_PROMPTS_IF_ABSENT = {"data/prompts/geneval/test_metadata.jsonl": 553, "data/prompts/hpdv2/test.txt": 400,
                          "data/prompts/ocr/test.txt": 1018}  # flow_grpo's dataset/ocr/test.txt
_CALL_COSTS: dict = {}  # one model setting's call, counted once per process (flux-hps and flux-pickscore share it)
STAND_IN = ["device=cpu", "prompts.train=shapeworld:train", "prompts.eval=shapeworld:eval", "log.trackers=[]",
            "log.progress=false"]


@dataclass
class CallLog:
    calls: Counter = field(default_factory=Counter)  # forward | train | reference -> calls
    rows: set = field(default_factory=set)  # latent rows per call (the micro-batch)
    images: int = 0  # latents decoded
    in_pass: int = 0
    largest_pass: int = 0  # calls with gradients before one backward


class CallRecorder(ModelAdapter):
    """A model that records its calls and computes nothing: a latent of one number, a zero velocity that
    depends on one weight (so that backward and the optimizer run), `rows` transformer rows per latent row."""

    latent_shape = (1,)

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.log, self._in_reference = rows, CallLog(), False
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @property
    def nfe_per_velocity(self) -> int:
        return self.rows

    def encode(self, prompts):
        return TensorDict({keys.PROMPT_EMBEDS: torch.zeros(len(prompts), 1)}, batch_size=[len(prompts)])

    def velocity(self, x, sigma, cond):
        kind = "reference" if self._in_reference else "train" if torch.is_grad_enabled() else "forward"
        self.log.calls[kind] += 1
        self.log.rows.add(x.shape[0])
        self.log.in_pass += kind == "train"
        return x.float() * 0 + self.weight

    def decode(self, x):
        self.log.images += x.shape[0]
        return torch.zeros(x.shape[0], 3, 1, 1)

    @contextlib.contextmanager
    def reference(self):
        self._in_reference = True
        try:
            yield
        finally:
            self._in_reference = False


@dataclass
class UpdateCalls:
    forward: int
    train: int
    reference: int
    images: int
    largest_pass: int
    nfe: int  # what the budget is charged (real rows, CFG counting 2)
    micro_batch: int


def record_update(cfg: config.Config, seed: int = 0) -> UpdateCalls:
    """One update of `cfg` through the trainer with a CallRecorder; its calls."""
    from genrl.trainer import Trainer

    small = config.from_dict(config.apply_overrides(cfg.to_dict(), STAND_IN))
    recorder = CallRecorder(rows_per_velocity(cfg))
    draws = torch.Generator().manual_seed(seed)
    parts = build.build(small, adapter=recorder, reward=lambda images, prompts: torch.rand(len(images), generator=draws),
                        env_reward=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(small, run_dir=tmp, components=parts)
        objective = trainer.objective

        def one_pass(td):  # the trainer calls the objective once per pass, then backward
            recorder.log.in_pass = 0
            out = objective(td)
            recorder.log.largest_pass = max(recorder.log.largest_pass, recorder.log.in_pass)
            return out

        trainer.objective = one_pass
        nfe = trainer.iteration()["nfe"]
    log = recorder.log
    (rows,) = log.rows  # every call has the micro-batch's shape
    return UpdateCalls(log.calls["forward"], log.calls["train"], log.calls["reference"], log.images,
                       max(log.largest_pass, 1), nfe, rows)


def eval_prompt_count(cfg: config.Config) -> tuple[int, str]:
    """Held-out prompts: the file's, or the known size of the suite's set when the file is not here."""
    from genrl.prompts import load_prompts

    source = str(cfg.prompts.eval)
    if source.startswith("shapeworld:") or Path(source).is_file():
        return len(load_prompts(source)), source
    if source in EVAL_PROMPTS_IF_ABSENT:
        return EVAL_PROMPTS_IF_ABSENT[source], f"{source} (not here: {EVAL_PROMPTS_IF_ABSENT[source]}, its known size)"
    raise config.ConfigError(f"prompts.eval={source!r} is not a file here: give the held-out prompts file "
                             "(prompts.eval=PATH) to count the evaluations")


@dataclass
class ArmCost:
    label: str
    cfg: config.Config
    seeds: int
    update: UpdateCalls
    call: CallCost
    updates: int  # per run
    evaluations: int  # per run
    eval_calls: int  # forward calls per evaluation
    eval_images: int
    rollout_bytes: int  # one process's rollout at one process

    @property
    def update_flops(self) -> int:
        u, c = self.update, self.call
        return (u.forward + u.reference) * c.forward_flops + u.train * c.train_flops + u.images * c.decode_flops

    @property
    def eval_flops(self) -> int:
        return self.eval_calls * self.call.forward_flops + self.eval_images * self.call.decode_flops

    @property
    def run_flops(self) -> int:
        return self.updates * self.update_flops + self.evaluations * self.eval_flops

    def memory_per_gpu(self, gpus: int) -> float:
        model = real_model(self.cfg)
        vae = wan_shapes.VAE_BYTES if model == "wan21-1.3b" else VAE_BYTES if model else 0
        others = TEXT_ENCODERS.get(model, 0) + vae + REWARDS.get(self.cfg.reward.name, 0)
        adam = 2 * 4 * self.call.trainable
        return self.call.train_peak_bytes + adam + self.rollout_bytes / gpus + others


def rollout_bytes(cfg: config.Config) -> int:
    """Latents (K + 1 per trajectory, fp32) and one prompt embedding per trajectory (bf16), as a rollout keeps
    them (docs/performance.md, Memory); the tiny model's are negligible."""
    model = real_model(cfg)
    if model is None:
        return 0
    if model == "wan21-1.3b":  # a clip's latent [16, F', h, w]; UMT5 embeddings, no pooled vector
        latent, context = math.prod(wan_shapes.latent_shape(cfg.model.options)) * 4, text_tokens(cfg) * 4096 * 2
    else:
        side = cfg.model.options.get("resolution", 512 if model == "sd35m" else 720) // 8
        latent = 16 * side * side * 4
        context = (text_tokens(cfg) * 4096 + (2048 if model == "sd35m" else 768)) * 2
    n = cfg.train.prompts_per_update * cfg.train.group_size
    return n * ((cfg.sampling.num_steps + 1) * latent + context)


def arm_cost(plans, costs: dict) -> ArmCost:
    """One arm (all its seeds): its update's calls, the call's FLOPs (shared by arms of one model setting)."""
    cfg = plans[0].cfg
    update = record_update(cfg)
    key = (cfg.model.name, repr(sorted(cfg.model.options.items())), cfg.sampling.micro_batch, update.largest_pass)
    if key not in costs:
        costs[key] = call_cost(cfg, update.largest_pass)
    call = costs[key]
    updates = math.ceil(cfg.train.nfe_budget / update.nfe)
    every = cfg.log.eval_every
    evaluations = int(cfg.log.eval_at_start) + int(cfg.log.eval_at_end) + ((updates - 1) // every if every else 0)
    prompts, _ = eval_prompt_count(cfg)
    images = prompts * cfg.log.eval_seeds
    eval_calls = cfg.sampling.eval_steps * math.ceil(images / cfg.sampling.micro_batch)
    return ArmCost(plans[0].label, cfg, len(plans), update, call, updates, evaluations, eval_calls, images,
                   rollout_bytes(cfg))


def estimate(suite_name: str, overrides: list[str] = ()) -> dict:
    suite = load_suite(suite_name)
    plans = plan_runs(suite, overrides=list(overrides))
    by_label: dict[str, list] = {}
    for plan in plans:
        by_label.setdefault(plan.label, []).append(plan)
    arms = [arm_cost(p, _CALL_COSTS) for p in by_label.values()]
    cfg = plans[0].cfg
    return {"suite": suite.name, "model": real_model(cfg) or cfg.model.name, "cfg": cfg, "arms": arms,
            "eval_prompts": eval_prompt_count(cfg)[1], "flops": sum(a.run_flops * a.seeds for a in arms)}


def gpu_table(result: dict, mfu: float, gpus: int) -> list[dict]:
    rows = []
    memory = max(a.memory_per_gpu(gpus) for a in result["arms"])
    for name, (peak, capacity) in GPUS.items():
        gpu_hours = result["flops"] / (peak * mfu) / 3600
        rows.append({"gpu": name, "gpu_hours": gpu_hours, "wall_h": gpu_hours / gpus, "memory": memory,
                     "fits": memory <= capacity, "capacity": capacity})
    return rows


def _n(x: float) -> str:
    """A number for a table: thousands separated when large, three significant digits when small."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def check_projection(mfu: float, gpus: int) -> None:
    if not 0 < mfu <= 1 or gpus < 1:
        raise config.ConfigError(f"--mfu {mfu} with {gpus} GPU(s): the MFU must be in (0, 1] and the GPUs at least 1")


def report(result: dict, mfu: float, gpus: int) -> str:
    check_projection(mfu, gpus)
    gib, t = 2**30, 1e12
    lines = [f"suite {result['suite']}: {result['model']}, held-out prompts {result['eval_prompts']}",
             "| arm | runs | NFE / update | calls / update: rollout, training, KL reference | TFLOP / update "
             "| updates / run | evaluations / run (TFLOP each) | PFLOP / run |", "|---|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        u = a.update
        lines.append(f"| {a.label} | {a.seeds} | {u.nfe:,} | {u.forward:,}, {u.train:,}, {u.reference:,} "
                     f"| {_n(a.update_flops / t)} | {a.updates} | {a.evaluations} ({_n(a.eval_flops / t)}) "
                     f"| {_n(a.run_flops / 1e15)} |")
    call = result["arms"][0].call
    lines.append(f"one call of {call.rows} transformer rows: {call.forward_flops / t:,.4g} TFLOP forward, "
                 f"{call.train_flops / t:,.4g} TFLOP forward + backward; decode {call.decode_flops / t:,.3g} TFLOP "
                 f"per image; {call.params / 1e9:.3g}B parameters, {call.trainable / 1e6:.1f}M trained")
    lines.append(f"whole suite: {result['flops'] / 1e18:,.4g} EFLOP; at MFU {mfu:.2f} of the dense bf16 peak, "
                 f"{gpus} GPU(s) per run:")
    lines += ["| GPU | dense bf16 TFLOP/s | GPU-hours | wall-clock | peak memory per GPU | fits |", "|---|---|---|---|---|---|"]
    for r in gpu_table(result, mfu, gpus):
        peak = GPUS[r["gpu"]][0]
        lines.append(f"| {r['gpu']} | {peak / t:,.0f} | {_n(r['gpu_hours'])} | {_n(r['wall_h'])} h "
                     f"| {r['memory'] / gib:,.1f} GiB | {'yes' if r['fits'] else 'no'} ({r['capacity'] / 1e9:.0f} GB) |")
    a = max(result["arms"], key=lambda arm: arm.memory_per_gpu(gpus))
    lines.append(f"memory ({a.label}): training pass of {a.call.calls_per_pass} call(s) {a.call.train_peak_bytes / gib:.1f} GiB "
                 f"(weights {a.call.weights_bytes / gib:.1f}) + AdamW {8 * a.call.trainable / gib:.2f} + rollout "
                 f"{a.rollout_bytes / gpus / gib:.1f} + text encoders, VAE, reward "
                 f"{(a.memory_per_gpu(gpus) - a.call.train_peak_bytes - 8 * a.call.trainable - a.rollout_bytes / gpus) / gib:.1f}")
    return "\n".join(lines)


def measured_update_flops(cfg: config.Config, updates: int = 1) -> tuple[int, float]:
    """(FLOPs counted by FlopCounterMode around one real update, the best time of `updates` more, uncounted)
    of a config that runs on this CPU: the independent count the estimate is checked against."""
    import time

    from torch.utils.flop_counter import FlopCounterMode

    from genrl.trainer import Trainer

    cfg = config.from_dict(config.apply_overrides(cfg.to_dict(), ["device=cpu", "log.trackers=[]", "log.progress=false"]))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, run_dir=tmp)
        with FlopCounterMode(display=False) as counter:
            trainer.iteration()
        best = float("inf")
        for _ in range(updates):
            start = time.perf_counter()
            trainer.iteration()
            best = min(best, time.perf_counter() - start)
        return counter.get_total_flops(), best


def check(suite_name: str, updates: int = 3) -> list[str]:
    """On a suite that runs on this CPU: each arm's counted FLOPs of an update against FlopCounterMode around a
    real one, and the update's time projected at this CPU's denoiser rates (rollout calls and training passes
    at the suite's micro-batch, genrl.benchmarks.cpu_ratio, measured just before) against its best measured time."""
    import os

    from genrl.benchmarks.cpu_ratio import measure

    result = estimate(suite_name)
    mb, threads = result["arms"][0].update.micro_batch, torch.get_num_threads()  # the updates run with as many
    lines = [f"this CPU, {threads} thread(s), fp32, micro-batch {mb}; load average {os.getloadavg()[0]:.2f} at the start",
             "| arm | counted GFLOP / update | FlopCounterMode on a real update | rollout, training GFLOP/s "
             f"| projected s / update | measured (best of {updates}) | measured / projected |",
             "|---|---|---|---|---|---|---|"]
    for a in result["arms"]:
        rates = {r.mode: r.achieved for r in measure((mb,), (threads,), calls=5, repeats=3, dtypes=("fp32",))}
        measured_flops, seconds = measured_update_flops(a.cfg, updates)
        u, c = a.update, a.call
        projected = (u.forward + u.reference) * c.forward_flops / rates["rollout"] + u.train * c.train_flops / rates["training"]
        lines.append(f"| {a.label} | {a.update_flops / 1e9:,.2f} | {measured_flops / 1e9:,.2f} "
                     f"| {rates['rollout'] / 1e9:.1f}, {rates['training'] / 1e9:.1f} | {projected:.2f} | {seconds:.2f} "
                     f"| {seconds / projected:.2f} |")
    return lines + [f"load average {os.getloadavg()[0]:.2f} at the end"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument("--check", action="store_true", help="a CPU suite (smoke, tiny): the counts and the projection "
                        "against real updates on this machine")
    parser.add_argument("suite")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied to every run")
    args = parser.parse_args(argv)
    if args.check:
        print("\n".join(check(args.suite)))
        return
    check_projection(args.mfu, args.gpus)
    print(report(estimate(args.suite, args.overrides), args.mfu, args.gpus))


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOPs utilisation assumed for the projection (default {DEFAULT_MFU})")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs each run uses, one process each (default 1)")


if __name__ == "__main__":
    main()
