"""Pretrain the tiny ShapeWorld model (genrl.models.tiny) with rectified flow; evaluate it.

    python -m genrl.shapeworld.pretrain --out genrl/assets/tiny --steps 10000 --seed 0
    python -m genrl.shapeworld.pretrain --eval genrl/assets/tiny --sample-steps 10 20 --guidance 1 2

Training (text encoder + MMDiT jointly, from scratch):
    x0 = render(prompt, seed) mapped to [-1, 1], ε ~ N(0, I),
    σ ~ logit-normal(0, 1) (SD3's choice: most samples at mid noise, where the
        layout — which shape, where, how many — is decided),
    x_σ = (1 − σ)·x0 + σ·ε, loss = ‖v_θ(x_σ, σ, c) − (ε − x0)‖².
Prompts are drawn uniformly over the five categories, then uniformly within
one (position prompts outnumber single objects 70 to 1 in the grammar), from
ALL prompts, eval ones included: RL later holds out the eval split, the base
model need not. Each sample is rendered on the fly with a fresh seed, and 10%
of captions are dropped to "" so classifier-free guidance is possible.
AdamW with a linear warm-up, a constant learning rate, and a linear decay to
zero over the last `--decay-fraction` of `--steps` (annealing: measured on
the first shipped weights, 800 annealing steps alone took strict 0.18 → 0.26);
the shipped weights are an exponential moving average (EMA) of the trained ones.

Reproducibility: everything random comes from `--seed` (model init, prompt
order, render seeds, noise, σ), and the schedule from `--steps`, so
`--steps N` with the same seed reproduces the same weights on any machine.
`--minutes` is only a safety cap (a run it stops has not annealed).
A run cut short continues exactly with `--state FILE --resume` (model, EMA,
optimizer and data RNGs are restored; the data of step i depend on i only).

On a machine shared with other jobs, launch with OMP_WAIT_POLICY=PASSIVE:
OpenMP's spinning threads otherwise burn 2–5× the CPU per step when the
cores are oversubscribed (measured: 0.9 s/step instead of 4–9 s/step).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from tensordict import TensorDict

from genrl.evaluation import evaluate
from genrl.models.base import ModelAdapter
from genrl.models.tiny import POOLED_EMBEDS, PROMPT_EMBEDS, TinyConfig, TinyShapeModel, save_weights
from genrl.shapeworld import VOCABULARY, all_prompts, eval_prompts, render_batch
from genrl.shapeworld.grammar import category


# --- evaluation ---------------------------------------------------------------------


def evaluate_base(adapter: ModelAdapter, steps: int = 20, seeds: int = 4, shift: float = 1.0) -> dict:
    """Strict and partial ShapeWorld scores on the eval prompts × `seeds` images, with the trainer's
    evaluation (`genrl.evaluation`: the same fixed per-prompt seeds, the same ODE sampler)."""
    result, _, _ = evaluate(adapter, eval_prompts(), seeds, steps, shift, micro_batch=64)
    return {"score": result["score"], "partial": result["partial"], "per_category": result["per_category"]}


def _format_scores(r: dict) -> str:
    cats = " ".join(f"{k}={_strict(v):.2f}" for k, v in r["per_category"].items())
    return f"strict={r['score']:.3f} partial={r['partial']:.3f} | {cats}"


def _strict(v) -> float:
    return v["score"] if isinstance(v, dict) else float(v)


# --- training -----------------------------------------------------------------------


class PromptSampler:
    """Uniform over categories, then uniform within the category; seeded."""

    def __init__(self, seed: int):
        self.by_category: dict[str, list[str]] = {}
        for p in all_prompts():
            self.by_category.setdefault(category(p), []).append(p)
        self.categories = sorted(self.by_category)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> list[str]:
        cats = torch.randint(len(self.categories), (n,), generator=self.generator).tolist()
        picks = torch.rand(n, generator=self.generator).tolist()
        return [self.by_category[self.categories[c]][int(u * len(self.by_category[self.categories[c]]))] for c, u in zip(cats, picks)]


# Recorded in config.json["training"]: what determines the weights.
TRAINING_SETTINGS = ("seed", "steps", "batch", "lr", "warmup", "decay_fraction", "ema", "caption_dropout", "max_length",
                     "num_layers")


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, constant, then linear decay to 0 over the last decay_fraction of the steps."""
    warm = min(1.0, (step + 1) / args.warmup)
    decay_steps = int(args.decay_fraction * args.steps)
    left = args.steps - step
    return args.lr * warm * (min(1.0, left / decay_steps) if decay_steps > 0 else 1.0)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TinyConfig(vocabulary=list(VOCABULARY), max_length=args.max_length, num_layers=args.num_layers)
    longest = max(len(p.split()) for p in all_prompts())
    if longest > cfg.max_length:
        raise ValueError(f"--max-length {cfg.max_length} is shorter than the longest prompt ({longest} words)")
    sizes = {k: v for k, v in vars(cfg).items()}
    model = TinyShapeModel(pretrained=False, finetune="none", seed=args.seed, **sizes)
    model.text_encoder.requires_grad_(True).train()
    model.transformer.requires_grad_(True).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    params = list(model.text_encoder.parameters()) + list(model.transformer.parameters())
    ema_params = list(ema.text_encoder.parameters()) + list(ema.transformer.parameters())
    n_params = sum(p.numel() for p in params)
    print(f"parameters: transformer {sum(p.numel() for p in model.transformer.parameters()):,}, "
          f"text encoder {sum(p.numel() for p in model.text_encoder.parameters()):,}", flush=True)

    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    sample_prompts = PromptSampler(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    settings = {k: v for k, v in vars(args).items() if k in TRAINING_SETTINGS}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if k not in ("steps", "minutes"))
    start, last_ckpt, history = time.time(), time.time(), []
    running, step_i = None, 0

    def checkpoint(final: bool) -> None:
        ema.refresh_unconditional()  # the text encoder changed since the last time
        scores = evaluate_base(ema, steps=10, seeds=1 if not final else 4)
        wall = previous_wall + time.time() - start
        history.append({"step": step_i, "minutes": round(wall / 60, 2), "loss": running, "strict_k10": scores["score"]})
        print(f"[eval step {step_i}] K=10 {_format_scores(scores)}", flush=True)
        training = {**settings, "steps_done": step_i, "wall_minutes": round(wall / 60, 2), "parameters": n_params,
                    "sigma_sampling": "logit-normal(0, 1)", "history": history,
                    "reproduce": f"python -m genrl.shapeworld.pretrain --out DIR {flags} --steps {args.steps}"}
        extra = {"training": training, "eval": {"K10_seeds%d" % (4 if final else 1): scores}}
        save_weights(args.out, cfg, ema.text_encoder, ema.transformer, **extra)
        if args.snapshots:
            save_weights(Path(args.snapshots) / f"step{step_i:05d}", cfg, ema.text_encoder, ema.transformer, **extra)
        if args.state:  # everything needed to continue exactly where this stopped
            state = {"step": step_i, "wall": wall, "running": running, "history": history,
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
        print(f"resumed from {args.state} at step {step_i} ({previous_wall / 60:.1f} min)", flush=True)
    first_step = step_i

    while step_i < args.steps and time.time() - start < args.minutes * 60:
        prompts = sample_prompts(args.batch)
        render_seeds = (args.seed * 1_000_003 + step_i * args.batch + torch.arange(args.batch)).tolist()
        x0 = model.to_latent(render_batch(prompts, render_seeds))  # [B, 3, 32, 32] in [-1, 1]
        drop = torch.rand(args.batch, generator=data_gen) < args.caption_dropout
        captions = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        noise = torch.randn(x0.shape, generator=data_gen)
        sigma = torch.sigmoid(torch.randn(args.batch, generator=data_gen))  # logit-normal(0, 1)
        s = sigma.view(-1, 1, 1, 1)
        x_sigma = (1 - s) * x0 + s * noise

        embeds, pooled = model.text_encoder(model.tokenizer.encode(captions))
        cond = TensorDict({PROMPT_EMBEDS: embeds, POOLED_EMBEDS: pooled}, batch_size=[args.batch])
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
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            checkpoint(final=False)
            last_ckpt = time.time()
    checkpoint(final=True)
    print(f"done: {step_i} steps in {(previous_wall + time.time() - start) / 60:.1f} min; weights in {args.out}", flush=True)


def run_eval(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    results = {}
    for w in args.guidance:
        model = TinyShapeModel(weights=args.eval, finetune="none", guidance_scale=w)
        for k in args.sample_steps:
            for shift in args.shift:
                t = time.time()
                r = evaluate_base(model, steps=k, seeds=args.seeds, shift=shift)
                results[f"K{k}_cfg{w:g}_shift{shift:g}"] = r
                print(f"K={k} cfg={w:g} shift={shift:g} ({time.time() - t:.0f}s): {_format_scores(r)}", flush=True)
    if args.write:
        path = Path(args.eval) / "config.json"
        meta = json.loads(path.read_text())
        meta["eval"] = {**meta.get("eval", {}), **{f"{k}_seeds{args.seeds}": v for k, v in results.items()}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="genrl/assets/tiny", help="directory for the weights and config.json")
    p.add_argument("--seed", type=int, default=0, help="seeds init, data order, render seeds, noise and σ")
    p.add_argument("--steps", type=int, default=10_000, help="optimizer steps; the learning-rate schedule spans them")
    p.add_argument("--minutes", type=float, default=120.0, help="safety cap on the wall time of this invocation")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--decay-fraction", type=float, default=0.4, help="final fraction of --steps with a linear decay to 0")
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the shipped weights")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="fraction of captions replaced by '' (for CFG)")
    p.add_argument("--max-length", type=int, default=12, help="tokens per prompt")
    p.add_argument("--num-layers", type=int, default=4, help="MMDiT blocks")
    p.add_argument("--checkpoint-minutes", type=float, default=4.0, help="save (and quick-eval) this often")
    p.add_argument("--snapshots", default="", help="also keep every checkpoint in DIR/stepNNNNN")
    p.add_argument("--state", default="", help="also save the full trainer state (optimizer, RNGs) to this file")
    p.add_argument("--resume", action="store_true", help="continue exactly from --state")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval", metavar="WEIGHTS_DIR", help="evaluate these weights instead of training")
    p.add_argument("--sample-steps", type=int, nargs="+", default=[10, 20], help="ODE steps K (--eval)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="CFG scales (--eval)")
    p.add_argument("--shift", type=float, nargs="+", default=[1.0], help="schedule shifts (--eval)")
    p.add_argument("--seeds", type=int, default=4, help="noise seeds per eval prompt (--eval)")
    p.add_argument("--write", action="store_true", help="record the --eval scores in config.json")
    args = p.parse_args(argv)
    run_eval(args) if args.eval else train(args)


if __name__ == "__main__":
    main()
