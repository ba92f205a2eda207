"""Pretrain the tiny ShapeWorld-Motion video model (genrl.models.tiny_video) with rectified flow; evaluate it.

    python -m genrl.shapeworld_motion.pretrain --out genrl/assets/tiny_video --seed 0 --state S.pt
    python -m genrl.shapeworld_motion.pretrain --out genrl/assets/tiny_video --seed 0 --state S.pt --resume
    python -m genrl.shapeworld_motion.pretrain --eval genrl/assets/tiny_video --sample-steps 10 20 --guidance 1 2

The recipe (loss, σ sampling, prompt sampling per category, 10% caption dropout for CFG, warm-up,
linear decay at the end, EMA, exact resume with --state/--resume, the --minutes cap) is
genrl.flow_pretraining's, shared with the ShapeWorld image model. Here: the text encoder and a
diffusers WanTransformer3DModel are trained jointly from scratch on clips rendered by
`render_clips` (4 frames of 32×32, latents [3, 4, 32, 32] in [-1, 1]). Training prompts are every
prompt of the motion grammar whose scene is not held out (the held-out scenes are never seen under
any wording, as the world's split requires), uniformly over the four categories, then within one.
Checkpoints and --eval score the held-out prompts (eval_prompts.txt) with `score_clips` after the
trainer's Euler ODE sampler (genrl.evaluation.sample_ode, fixed per-prompt noise seeds).
The shipped weights took two schedule legs: 6,000 steps, then resumed with the default --steps
12000 (a warm restart that anneals again; config.json's `reproduce` chains both commands), 124
minutes on 2 cores in all.

Launch with OMP_WAIT_POLICY=PASSIVE on a shared machine (see genrl.shapeworld.pretrain).
"""

from __future__ import annotations

import argparse
from functools import cache
from typing import Sequence

import torch
from tensordict import TensorDict

from genrl import flow_pretraining
from genrl.evaluation import evaluation_seeds, sample_ode
from genrl.flow_pretraining import PromptSampler, Recipe, parser, train
from genrl.models.base import ModelAdapter
from genrl.models.tiny_video import TinyVideoConfig, TinyVideoModel
from genrl.shapeworld_motion import VOCABULARY, eval_prompts, evaluate_clips, parse, render_clips
from genrl.shapeworld_motion.grammar import all_prompts_by_category


def evaluate_base(adapter: ModelAdapter, steps: int = 20, seeds: int = 4, shift: float | None = None,
                  micro_batch: int = 16) -> dict:
    """Strict and partial motion scores (overall and per category) on the held-out prompts × `seeds` clips,
    sampled with `shift`, by default the schedule shift the model was pretrained on."""
    if shift is None:
        shift = getattr(adapter, "sigma_shift", None) or 1.0
    prompts, noise_seeds = evaluation_seeds(eval_prompts(), seeds)
    clips = sample_ode(adapter, prompts, noise_seeds, steps, shift, micro_batch=micro_batch)
    return evaluate_clips(clips, prompts)


@cache
def training_prompts() -> dict[str, list[str]]:
    """Every grammar prompt per category, less those whose scene is held out (under any wording)."""
    held_out = {parse(p).scene for p in eval_prompts()}
    return {name: [p for p in prompts if parse(p).scene not in held_out] for name, prompts in all_prompts_by_category().items()}


def _condition(model: TinyVideoModel, captions: list[str]) -> TensorDict:
    return model.condition(model.tokenizer.encode(captions))


RECIPE = Recipe(
    script="genrl.shapeworld_motion.pretrain",
    render=render_clips,
    condition=_condition,
    evaluate=evaluate_base,
    save=lambda directory, model, extra: model.save_weights(directory, **extra),
)


def train_video(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    by_category = training_prompts()
    longest = max(len(p.split()) for prompts in by_category.values() for p in prompts)
    if longest > args.max_length:
        raise SystemExit(f"error: --max-length {args.max_length} is shorter than the longest prompt ({longest} words)")
    cfg = TinyVideoConfig(vocabulary=list(VOCABULARY), max_length=args.max_length, num_layers=args.num_layers,
                          num_attention_heads=args.num_attention_heads, attention_head_dim=args.attention_head_dim,
                          ffn_ratio=args.ffn_ratio, temporal_patch=args.temporal_patch, sigma_shift=args.sigma_shift)
    model = TinyVideoModel(pretrained=False, finetune="none", seed=args.seed, **vars(cfg))
    train(args, model, PromptSampler(by_category, args.seed), RECIPE)


def build_parser() -> argparse.ArgumentParser:
    """The script's flags; their defaults are the shipped model's recipe (genrl/assets/tiny_video/config.json)."""
    sizes = TinyVideoConfig()

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--num-layers", type=int, default=sizes.num_layers, help="Wan blocks")
        p.add_argument("--num-attention-heads", type=int, default=sizes.num_attention_heads)
        p.add_argument("--attention-head-dim", type=int, default=sizes.attention_head_dim,
                       help="Wan's rotary embedding splits it over frame, row and column")
        p.add_argument("--ffn-ratio", type=int, default=sizes.ffn_ratio, help="Wan's ffn_dim = ratio × width")
        p.add_argument("--temporal-patch", type=int, default=sizes.temporal_patch, help="frames per token")
        p.add_argument("--sigma-shift", type=float, default=3.0,
                       help="train on σ shifted as sσ/(1+(s−1)σ) (more steps at high noise, as video models do); "
                            "recorded with the model, whose sampling then uses it")

    return parser(__doc__, out="genrl/assets/tiny_video", steps=12000, batch=64, lr=1e-3, warmup=200,
                  minutes=180, model_options=model_options)


def main(argv: Sequence[str] | None = None) -> None:
    flow_pretraining.main(build_parser(), argv, TinyVideoModel, evaluate_base, train_video)


if __name__ == "__main__":
    main()
