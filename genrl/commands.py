"""What `genrl eval | sample | export | plot | probe | serve-reward` do: the commands that read a run
or a model rather than train one. `genrl.cli` parses their arguments and calls these with the result."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from genrl.errors import ConfigError, PromptError


def _load_policy_model(run: str | None):
    """The base model of the default config, or a run's model with its latest (or given) checkpoint."""
    from genrl import config
    from genrl.build import build_model
    from genrl.runs import open_run

    if run is None:
        cfg = config.load()
        return cfg, build_model(cfg)
    loaded = open_run(run)
    return loaded.config, loaded.adapter


def _check_request(args: argparse.Namespace, *outputs: Path) -> None:
    """--seeds and --steps, when given, at least 1, and every file the command will write (`outputs`) a file it can
    create: refused in one line before any model is loaded or image sampled."""
    for name in ("seeds", "steps"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} {value} is not allowed: give a number >= 1, or leave it out for the config's value")
    for out in outputs:
        if out.is_dir():
            raise ConfigError(f"--out {args.out!r}: {out} is a directory, and --out names the file to write; give a file name")
        blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(f"--out {args.out!r} cannot be written: {blocked} is a file, not a directory")


def cmd_eval(args: argparse.Namespace) -> int:
    from genrl import evaluation
    from genrl.build import build_reward
    from genrl.grids import save_scored
    from genrl.prompts import check_prompts, numbered_prompts, prompt_checks

    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ConfigError(f"--guidance {args.guidance} is not a guidance scale: give a number >= 0 (1: no guidance)")
    if Path(args.out).suffix.lower() == ".png":  # the JSON would be written, then overwritten by its own grid
        raise ConfigError(f"--out {args.out!r} names the JSON summary; give a .json name (the grid goes beside it as .png)")
    _check_request(args, Path(args.out), Path(args.out).with_suffix(".png"))  # before the evaluation, not after
    numbered = numbered_prompts(args.prompts) if args.prompts else None
    cfg, adapter = _load_policy_model(args.run)
    if args.guidance is not None:  # a free baseline: the same model sampled with (classifier-free) guidance
        evaluation.set_guidance(adapter, args.guidance)
    numbered = numbered or numbered_prompts(cfg.prompts.eval)
    reward = build_reward(cfg)
    check_prompts(numbered, "--prompts" if args.prompts else "prompts.eval", prompt_checks(reward, adapter))
    prompts = [prompt for _, prompt in numbered]
    steps = args.steps or cfg.sampling.eval_steps
    seeds = args.seeds or cfg.log.eval_seeds  # as training evaluates, so the scores compare
    record = evaluation.evaluate_record(adapter, prompts, seeds, steps, cfg.eval_shift_for(adapter),
                                        cfg.sampling.micro_batch, reward=reward, shown_per_prompt=seeds)
    result, out = record.result, Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    guided = f" at guidance {args.guidance:g}" if args.guidance is not None else ""
    title = f"{args.run or 'the base model'}{guided} | {record.headline()}\n{record.marks()}"  # as a run's evaluation grids
    grid = save_scored(out.with_suffix(".png"), record.thumbnails, record.blocks(), title, images_per_row=seeds * 2,
                       frames=record.frames)
    print(f"score {result['score']:.3f}" + (f"  partial {result['partial']:.3f}" if "partial" in result else "")
          + (f"  guidance {result['guidance']:g}" if result.get("guidance") is not None else ""))
    if result.get("texture_bg") is not None:  # the reward-hacking guard (genrl.shapeworld.quality)
        print(f"  {evaluation.texture_words(result)}")
    for cat, value in result.get("per_category", {}).items():
        print(f"  {cat:14s} {value:.3f}")
    if record.frames > 1:  # a video model's clips also play, as a run's evaluations do (eval/{tag}.gif)
        from genrl.video_outputs import save_eval_gif

        gif = save_eval_gif(out.with_suffix(".gif"), record.thumbnails, record.frames, record.blocks(), title,
                            cfg.log.fps, images_per_row=seeds * 2)
        grid = f"{grid} and {gif}"
    print(f"wrote {out} and {grid}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from genrl import evaluation
    from genrl.grids import save_grid, save_scored, thumbnails
    from genrl.prompts import check_prompts, is_shapeworld, numbered_prompts, prompt_checks

    numbered = [("--prompt", p) for p in args.prompt or []] + (numbered_prompts(args.prompts) if args.prompts else [])
    if not numbered:
        raise PromptError("give at least one --prompt TEXT or --prompts FILE")
    _check_request(args, Path(args.out))
    prompts = [prompt for _, prompt in numbered]
    if args.score and not is_shapeworld(prompts):
        bad = next(p for p in prompts if not is_shapeworld([p]))
        raise PromptError(f"--score scores ShapeWorld prompts on the image, and {bad!r} is not one; "
                          "`genrl eval RUN --prompts FILE` scores any prompts with the run's reward")
    cfg, adapter = _load_policy_model(args.run)
    check_prompts(numbered, "genrl sample", prompt_checks(adapter=adapter))
    per_prompt = args.seeds or cfg.log.eval_seeds
    repeated, seeds = evaluation.evaluation_seeds(prompts, per_prompt)
    seeds = [s + args.seed for s in seeds]
    images = evaluation.sample_ode(adapter, repeated, seeds, args.steps or cfg.sampling.eval_steps,
                                   cfg.eval_shift_for(adapter), cfg.sampling.micro_batch)
    if args.score:  # each image marked pass / fail with its partial credit, as evaluation grids are
        scores, result = evaluation.shapeworld_scores(images, repeated, seeds)
        record = evaluation.EvalRecord(result | {"images_per_prompt": per_prompt}, repeated, seeds, scores,
                                       list(range(len(repeated))), thumbnails(images))
        path = save_scored(Path(args.out), record.thumbnails, record.blocks(), f"{record.headline()}\n{record.marks()}",
                           images_per_row=per_prompt)
        print(record.headline())
    else:
        path = save_grid(images, repeated, Path(args.out), columns=per_prompt)
    print(f"wrote {len(repeated)} images to {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from genrl.export import export_run

    out, how = export_run(args.run, args.out, merge=args.merge, overwrite=args.overwrite)
    print(f"wrote {out}; load it with {how}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from genrl.plot import plot_runs

    _check_request(args, Path(args.out))
    print(f"wrote {plot_runs(args.runs, args.out)}")
    return 0


def cmd_serve_reward(args: argparse.Namespace) -> int:
    from genrl.reward_server import serve_command

    serve_command(args.items, args.host, args.port, args.token, args.max_batch, args.timeout_s, args.device)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from genrl.benchmarks import credit_probe

    summary = credit_probe.run_probe(args.run, args.out, args.children, args.seeds, args.prompts, args.max_prompts)
    print("\n".join(credit_probe.describe(summary)))
    print(f"wrote {Path(args.out) / 'credit.json'} and {Path(args.out) / 'credit.png'}")
    return 0
