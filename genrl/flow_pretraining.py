"""Rectified-flow pretraining from scratch of the embedded worlds' tiny models: the loop, schedule,
checkpoints and command-line flags that `genrl.shapeworld.pretrain` (images, the `tiny` model) and
`genrl.shapeworld_motion.pretrain` (clips, the `tiny_video` model) share. What differs — the model,
the renderer, the conditioning and the evaluation — comes in a `Recipe`.

Training (text encoder + denoiser jointly):
    x0 = render(prompt, seed) mapped to [-1, 1] by the model's `to_latent`, ε ~ N(0, I),
    σ ~ logit-normal(0, 1) (SD3's choice: most samples at mid noise, where the
        layout — which shape, where, how many, which way — is decided),
    x_σ = (1 − σ)·x0 + σ·ε, loss = ‖v_θ(x_σ, σ, c) − (ε − x0)‖².
Prompts are drawn uniformly over the categories, then uniformly within one (the grammars'
categories differ in size by orders of magnitude). Each sample is rendered on the fly with a fresh
seed, and a fraction of captions (`--caption-dropout`) is dropped to "" so classifier-free guidance
is possible. AdamW with a linear warm-up, a constant learning rate, and a linear decay to zero over
the last `--decay-fraction` of `--steps` (annealing); the saved weights are an exponential moving
average (EMA) of the trained ones.

Reproducibility: everything random comes from `--seed` (model init, prompt order, render seeds,
noise, σ), and the schedule from `--steps`, so `--steps N` with the same seed reproduces the same
weights. `--minutes` is only a safety cap (a run it stops has not annealed). A run cut short
continues exactly with `--state FILE --resume` (model, EMA, optimizer and data RNGs are restored;
the data of step i depend on i only). Resuming with a larger `--steps` extends a finished run: the
learning rate returns to the constant phase and anneals again over the new schedule's end (a warm
restart); each such leg is recorded, and config.json's `reproduce` chains the legs' commands (a leg
cut before its end is replayed with `--stop-at`, the step it reached).
SIGINT or SIGTERM lets the step in flight finish, saves the weights and the state at once (without
the checkpoint's quick evaluation, so a scheduler's grace period suffices) and exits with 128 + the
signal's number; a second signal stops at once, and the last checkpoint, written atomically, stays.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tensordict import TensorDict
from torch import Tensor

from genrl import stopping
from genrl.dynamics import flow_shift
from genrl.models.base import ModelAdapter

CHECKPOINT_EVAL_STEPS = 10  # ODE steps of the quick evaluation at each checkpoint
# Recorded in config.json["training"]: what determines the weights (those a script has).
TRAINING_SETTINGS = ("seed", "steps", "batch", "lr", "warmup", "decay_fraction", "ema", "caption_dropout", "max_length",
                     "num_layers", "num_attention_heads", "attention_head_dim", "ffn_ratio", "temporal_patch", "sigma_shift")


class PromptSampler:
    """Uniform over categories, then uniform within the category; seeded."""

    def __init__(self, by_category: dict[str, list[str]], seed: int):
        self.by_category = by_category
        self.categories = sorted(self.by_category)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> list[str]:
        cats = torch.randint(len(self.categories), (n,), generator=self.generator).tolist()
        picks = torch.rand(n, generator=self.generator).tolist()
        return [self.by_category[self.categories[c]][int(u * len(self.by_category[self.categories[c]]))] for c, u in zip(cats, picks)]


@dataclass
class Recipe:
    """What a world's pretraining script supplies to `train`."""

    script: str  # the module run with `python -m`, for the "reproduce" line of config.json
    render: Callable[[list[str], list[int]], Tensor]  # ground truth in [0, 1], the layout `to_latent` takes
    condition: Callable[[ModelAdapter, list[str]], TensorDict]  # the conditioning, with gradients
    evaluate: Callable[[ModelAdapter, int, int], dict]  # (model, ODE steps, seeds) -> {"score", "partial", "per_category"}
    save: Callable[[Path, ModelAdapter, dict], None]  # write the model's weights with config.json extras


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last decay_fraction of the steps."""
    warm = min(1.0, (step + 1) / args.warmup)
    decay_steps = int(args.decay_fraction * args.steps)
    left = args.steps - step
    return args.lr * warm * (min(1.0, left / decay_steps) if decay_steps > 0 else 1.0)


def reproduce_command(script: str, flags: str, legs: list[dict]) -> str:
    """The commands that give these weights: one per schedule leg, each later one resuming the state."""
    commands = []
    for i, leg in enumerate(legs):
        resume = " --state S.pt --resume" if i else (" --state S.pt" if len(legs) > 1 else "")
        cut = f" --stop-at {leg['until']}" if "until" in leg else ""  # a leg extended before it ended
        commands.append(f"python -m {script} --out DIR {flags} --steps {leg['steps']}{cut}{resume}")
    return " && ".join(commands)


def format_scores(r: dict) -> str:
    cats = " ".join(f"{k}={_strict(v):.2f}" for k, v in r["per_category"].items())
    return f"strict={r['score']:.3f} partial={r['partial']:.3f} | {cats}"


def _strict(v) -> float:
    return v["score"] if isinstance(v, dict) else float(v)


def train(args: argparse.Namespace, model: ModelAdapter, sample_prompts: PromptSampler, recipe: Recipe) -> None:
    """Train `model` (a randomly initialised tiny adapter with finetune="none") as the module docstring says."""
    model.text_encoder.requires_grad_(True).train()
    model.transformer.requires_grad_(True).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    params = list(model.text_encoder.parameters()) + list(model.transformer.parameters())
    ema_params = list(ema.text_encoder.parameters()) + list(ema.transformer.parameters())
    n_params = sum(p.numel() for p in params)
    print(f"parameters: transformer {sum(p.numel() for p in model.transformer.parameters()):,}, "
          f"text encoder {sum(p.numel() for p in model.text_encoder.parameters()):,}", flush=True)

    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    settings = {k: v for k, v in vars(args).items() if k in TRAINING_SETTINGS}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if k not in ("steps", "minutes"))
    sigma_shift = getattr(args, "sigma_shift", 1.0)  # a model option where a script offers it (tiny_video)
    start, last_ckpt, history = time.time(), time.time(), []
    legs = [{"from_step": 0, "steps": args.steps}]  # the learning-rate schedules this run has followed
    running, step_i = None, 0

    def legs_so_far() -> list[dict]:  # a checkpoint inside a leg is replayed up to its own step
        return legs if step_i >= legs[-1]["steps"] else [*legs[:-1], {**legs[-1], "until": step_i}]

    def checkpoint(final: bool, evaluate: bool = True) -> None:
        ema.refresh_unconditional()  # the text encoder changed since the last time
        seeds = 4 if final else 1
        scores = recipe.evaluate(ema, CHECKPOINT_EVAL_STEPS, seeds) if evaluate else None
        wall = previous_wall + time.time() - start
        history.append({"step": step_i, "minutes": round(wall / 60, 2), "loss": running,
                        "strict_k10": scores["score"] if scores else None})
        if scores:
            print(f"[eval step {step_i}] K={CHECKPOINT_EVAL_STEPS} {format_scores(scores)}", flush=True)
        training = {**settings, "steps_done": step_i, "wall_minutes": round(wall / 60, 2), "parameters": n_params,
                    "sigma_sampling": "logit-normal(0, 1)" + (f", shifted by {sigma_shift:g}" if sigma_shift != 1 else ""),
                    "history": history, **({"schedule_legs": legs} if len(legs) > 1 else {}),
                    "reproduce": reproduce_command(recipe.script, flags, legs_so_far())}
        extra = {"training": training, "eval": {f"K{CHECKPOINT_EVAL_STEPS}_seeds{seeds}": scores} if scores else {}}
        recipe.save(Path(args.out), ema, extra)
        if args.snapshots:
            recipe.save(Path(args.snapshots) / f"step{step_i:05d}", ema, extra)
        if args.state:  # everything needed to continue exactly where this stopped
            state = {"step": step_i, "wall": wall, "running": running, "history": history, "legs": legs,
                     "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "prompt_rng": sample_prompts.generator.get_state(), "data_rng": data_gen.get_state()}
            torch.save(state, args.state + ".tmp")
            Path(args.state + ".tmp").replace(args.state)

    previous_wall = 0.0
    if args.resume:
        state = torch.load(args.state, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        sample_prompts.generator.set_state(state["prompt_rng"])
        data_gen.set_state(state["data_rng"])
        step_i, previous_wall, running, history = state["step"], state["wall"], state["running"], state["history"]
        legs = state.get("legs", legs)  # a state written before legs were recorded: one schedule, this one
        if legs[-1]["steps"] != args.steps:  # a new schedule from here on (a warm restart)
            if step_i < legs[-1]["steps"]:  # the last leg was cut short: its replay must stop here too
                legs[-1]["until"] = step_i
            legs.append({"from_step": step_i, "steps": args.steps})
        print(f"resumed from {args.state} at step {step_i} ({previous_wall / 60:.1f} min)", flush=True)
    first_step = step_i

    stop = stopping.StopRequest()  # SIGINT / SIGTERM: finish this step, save, exit 128 + signal
    with stopping.handled(stop):
        last_step = min(args.steps, args.stop_at or args.steps)
        while step_i < last_step and time.time() - start < args.minutes * 60 and not stop.requested:
            prompts = sample_prompts(args.batch)
            render_seeds = (args.seed * 1_000_003 + step_i * args.batch + torch.arange(args.batch)).tolist()
            x0 = model.to_latent(recipe.render(prompts, render_seeds))  # [B, *latent_shape] in [-1, 1]
            drop = torch.rand(args.batch, generator=data_gen) < args.caption_dropout
            captions = ["" if d else p for p, d in zip(prompts, drop.tolist())]
            noise = torch.randn(x0.shape, generator=data_gen)
            sigma = flow_shift(torch.sigmoid(torch.randn(args.batch, generator=data_gen)), sigma_shift)  # logit-normal(0, 1)
            s = sigma.view(-1, *[1] * (x0.dim() - 1))
            x_sigma = (1 - s) * x0 + s * noise

            cond = recipe.condition(model, captions)
            loss = torch.nn.functional.mse_loss(model._velocity(x_sigma, sigma, cond), noise - x0)

            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step_i, args)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            decay = min(args.ema, (1 + step_i) / (10 + step_i))  # short memory early, when weights move fast
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            step_i += 1
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if step_i % args.log_every == 0:
                elapsed = time.time() - start
                print(f"step {step_i} loss {running:.4f} grad_norm {grad_norm:.2f} "
                      f"{elapsed / (step_i - first_step):.2f}s/step {(previous_wall + elapsed) / 60:.1f}min", flush=True)
            if time.time() - last_ckpt > args.checkpoint_minutes * 60 and not stop.requested:
                checkpoint(final=False)
                last_ckpt = time.time()
        if stop.requested:
            checkpoint(final=False, evaluate=False)
            resume = f" (resume with --state {args.state} --resume)" if args.state else ""
            print(f"stopped by {stopping.signal_name(stop.signum)} at step {step_i}: weights in {args.out}{resume}", flush=True)
            raise SystemExit(stopping.exit_code(stop.signum))
    checkpoint(final=True)
    print(f"done: {step_i} steps in {(previous_wall + time.time() - start) / 60:.1f} min; weights in {args.out}", flush=True)


def run_eval(args: argparse.Namespace, model_class: type[ModelAdapter],
             evaluate: Callable[[ModelAdapter, int, int, float], dict]) -> None:
    """Score the weights in --eval for every (guidance, ODE steps, shift); --write records them in config.json."""
    torch.set_num_threads(args.threads)
    results = {}
    for w in args.guidance:
        model = model_class(weights=args.eval, finetune="none", guidance_scale=w)
        for k in args.sample_steps:
            for shift in args.shift or [getattr(model, "sigma_shift", None) or 1.0]:  # default: the model's own
                t = time.time()
                r = evaluate(model, k, args.seeds, shift)
                results[f"K{k}_cfg{w:g}_shift{shift:g}"] = r
                print(f"K={k} cfg={w:g} shift={shift:g} ({time.time() - t:.0f}s): {format_scores(r)}", flush=True)
    if args.write:
        path = Path(args.eval) / "config.json"
        meta = json.loads(path.read_text())
        meta["eval"] = {**meta.get("eval", {}), **{f"{k}_seeds{args.seeds}": v for k, v in results.items()}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(path)


def parser(doc: str, *, out: str, steps: int, batch: int, lr: float, warmup: int, minutes: float = 120.0,
           model_options: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The flags both scripts take; `model_options` adds a script's model sizes (recorded in config.json)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], epilog="\n".join(doc.split("\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, help="directory for the weights and config.json")
    p.add_argument("--seed", type=int, default=0, help="seeds init, data order, render seeds, noise and σ")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps; the learning-rate schedule spans them")
    p.add_argument("--minutes", type=float, default=minutes, help="safety cap on the wall time of this invocation")
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="end this invocation at STEP, mid-schedule (replays a leg that was cut; see `reproduce`)")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup, help="linear learning-rate warm-up steps")
    p.add_argument("--decay-fraction", type=float, default=0.4, help="final fraction of --steps with a linear decay to 0")
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the shipped weights")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="fraction of captions replaced by '' (for CFG)")
    p.add_argument("--max-length", type=int, default=12, help="tokens per prompt")
    model_options(p)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0, help="save (and quick-eval) this often")
    p.add_argument("--snapshots", default="", help="also keep every checkpoint in DIR/stepNNNNN")
    p.add_argument("--state", default="", help="also save the full trainer state (optimizer, RNGs) to this file")
    p.add_argument("--resume", action="store_true", help="continue exactly from --state")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval", metavar="WEIGHTS_DIR", help="evaluate these weights instead of training")
    p.add_argument("--sample-steps", type=int, nargs="+", default=[10, 20], help="ODE steps K (--eval)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="CFG scales (--eval)")
    p.add_argument("--shift", type=float, nargs="+", default=None,
                   help="schedule shifts (--eval; default the model's pretraining shift, else 1)")
    p.add_argument("--seeds", type=int, default=4, help="noise seeds per eval prompt (--eval)")
    p.add_argument("--write", action="store_true", help="record the --eval scores in config.json")
    return p


def parse_args(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, with the checks that must fail before anything is written (argparse's one-line error, exit 2)."""
    args = p.parse_args(argv)
    if args.resume and not args.state:
        p.error("--resume needs --state FILE (the trainer state a previous run wrote)")
    if args.resume and not Path(args.state).is_file():
        p.error(f"--resume: no trainer state at {args.state}; run without --resume to start one")
    if args.stop_at < 0 or args.stop_at > args.steps:
        p.error(f"--stop-at {args.stop_at}: must be a step between 1 and --steps {args.steps} (0, the default, "
                "runs to --steps)")
    return args


def main(p: argparse.ArgumentParser, argv: Sequence[str] | None, model_class: type[ModelAdapter],
         evaluate: Callable[[ModelAdapter, int, int, float], dict],
         train_model: Callable[[argparse.Namespace], None]) -> None:
    """A script's entry point: --eval DIR scores weights with `evaluate`, otherwise `train_model` trains."""
    args = parse_args(p, argv)
    try:
        run_eval(args, model_class, evaluate) if args.eval else train_model(args)
    except stopping.Interrupted as stop:  # a second signal: the last checkpoint, written atomically, stays
        print(f"stopped by {stopping.signal_name(stop.signum)}; the last checkpoint stays", flush=True)
        raise SystemExit(stop.exit_code) from None
