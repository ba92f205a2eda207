"""`genrl train | eval | sample | export | bench` (docs/architecture.md, "Configuration and the CLI")."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from genrl import stopping
from genrl.errors import ConfigError, PromptError, UserError
from genrl.launch import run_launcher


def cmd_train(args: argparse.Namespace) -> int:
    from genrl import config
    from genrl.trainer import Trainer

    if args.help_config:
        _print_config_help(*config.split_config_and_overrides(args.items))
        return 0
    path, overrides = config.split_config_and_overrides(args.items)
    if _launched_here(args):
        _check_before_launch(args, _train_config(args, path, overrides))  # one clear error, not one per worker
        rest = [*args.items] + (["--resume", args.resume] if args.resume else []) + (["--overwrite"] if args.overwrite else [])
        return _relaunch_with_accelerate(args, rest)
    cfg = _train_config(args, path, overrides)
    trainer = Trainer(cfg, run_dir=args.resume, overwrite=args.overwrite)
    if args.resume:
        trainer.load_checkpoint()
    summary = trainer.run()
    if trainer.dist.is_main:
        _print_summary(summary)
    return stopping.exit_code(summary.get("signal")) if "interrupted_at" in summary else 0


def _train_config(args: argparse.Namespace, path: str | None, overrides: list[str]):
    """The run's config: the saved one for --resume (which must then have a checkpoint)."""
    from genrl import checkpoint, config
    from genrl.resume import resume_config

    if not args.resume:
        return config.load(path, overrides)
    if args.overwrite:
        raise ConfigError("--overwrite starts a run afresh and --resume continues one: give one of them")
    cfg = resume_config(args.resume, overrides)
    if not checkpoint.candidates(args.resume):
        raise checkpoint.CheckpointError(
            f"no checkpoint in {Path(args.resume) / 'checkpoints'}: the run stopped before its first checkpoint; "
            f"start it again with `genrl train {Path(args.resume) / 'config.yaml'} run_dir={args.resume}`"
        )
    return cfg


def _check_before_launch(args: argparse.Namespace, cfg) -> None:
    """What every worker would refuse, refused once by the launching process."""
    from genrl import rundir
    from genrl.distributed import require_device

    n = args.num_processes
    if cfg.train.prompts_per_update % n:
        raise ConfigError(f"train.prompts_per_update={cfg.train.prompts_per_update} cannot be split whole over "
                          f"--num-processes {n} (each process samples whole prompt groups): make it a multiple of {n}")
    require_device(cfg.device)
    if not args.resume and cfg.run_dir:
        rundir.plan_start(cfg.run_dir, resumed=False, overwrite=args.overwrite)


def _print_config_help(path: str | None, overrides: list[str]) -> None:
    """Every config key with the value `genrl train [CONFIG] [overrides]` would use, and its help."""
    from genrl import config

    cfg = config.load(path, overrides)
    source = path or f"the bundled {config.DEFAULT_CONFIG.name}"
    print(f"values of {source}{' with the overrides' if overrides else ''} (key, value, help):")
    for key, _, help_text in config.describe():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        print(f"{key:32s} {node!r:24s} {help_text}")
    by_options: dict[type, list[str]] = {}  # the config's algorithm sections, by the options class of each
    for name, options in cfg.algorithms.items():
        by_options.setdefault(type(options), []).append(name)
    for options_class, names in by_options.items():
        print(f"\nalgorithm sections ({', '.join(n + ':' for n in names)}), as this config sets them:")
        print(f"  {'key':22s} " + " ".join(f"{n:18s}" for n in names) + " help")
        for key, _, help_text in config.describe(options_class):
            values = " ".join(f"{getattr(cfg.algorithms[n], key)!r:18s}" for n in names)
            print(f"  {key:22s} {values} {help_text}")


def _launched_here(args: argparse.Namespace) -> bool:
    """True when `--num-processes N` asks this process to start N others (and is not one of them)."""
    if args.sharding and args.num_processes < 2:
        raise ConfigError("--sharding needs --num-processes 2 or more")
    return args.num_processes > 1 and "WORLD_SIZE" not in os.environ


def _relaunch_with_accelerate(args: argparse.Namespace, rest: list[str]) -> int:
    """`genrl CMD --num-processes N ...` = `accelerate launch --num_processes N -m genrl CMD ...`.

    One process per GPU where there are GPUs (the run's `device` decides where each process
    computes, e.g. `device=cpu` keeps gloo on CPU), else CPU processes (gloo).
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes)]
    if args.sharding:  # an FSDP launcher config (genrl.sharding); accelerate takes the GPUs if any, else gloo on CPU
        command += ["--config_file", str(Path(__file__).parent / "configs" / "accelerate" / f"{args.sharding}.yaml")]
    else:
        # `--multi_gpu` is accelerate's torch.distributed launcher, whatever the device: with `--cpu`
        # accelerate starts a single process, so N CPU processes would silently be one.
        command += ["--multi_gpu"]
    command += ["-m", "genrl", args.command, *rest]
    return run_launcher(command)


def _print_summary(summary: dict) -> None:
    print(f"run directory: {summary['run_dir']}")
    if "interrupted_at" in summary:
        by = f" ({signal.Signals(summary['signal']).name})" if summary.get("signal") else ""
        print(f"interrupted after update {summary['interrupted_at']}{by}; checkpoint saved, resume with "
              f"`genrl train --resume {summary['run_dir']}`")
        return
    base, final = summary.get("base_eval"), summary.get("final_eval")
    if final:
        line = f"eval score (held-out prompts): final {final['score']:.3f}"
        if base:
            line += f", base {base['score']:.3f}, change {final['score'] - base['score']:+.3f}"
        print(line)
        if base and "per_category" in final:
            for cat, value in final["per_category"].items():
                print(f"  {cat:14s} base {base['per_category'].get(cat, float('nan')):.3f} -> final {value:.3f}")


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


def cmd_eval(args: argparse.Namespace) -> int:
    from genrl import evaluation
    from genrl.build import build_reward
    from genrl.grids import save_scored
    from genrl.prompts import check_prompts, numbered_prompts, prompt_checks

    numbered = numbered_prompts(args.prompts) if args.prompts else None
    cfg, adapter = _load_policy_model(args.run)
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
    title = f"{args.run or 'the base model'} | {record.headline()}\n{record.marks()}"  # as a run's evaluation grids
    grid = save_scored(out.with_suffix(".png"), record.thumbnails, record.blocks(), title, images_per_row=seeds * 2)
    print(f"score {result['score']:.3f}" + (f"  partial {result['partial']:.3f}" if "partial" in result else ""))
    for cat, value in result.get("per_category", {}).items():
        print(f"  {cat:14s} {value:.3f}")
    print(f"wrote {out} and {grid}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from genrl import evaluation
    from genrl.grids import save_grid
    from genrl.prompts import check_prompts, numbered_prompts, prompt_checks

    numbered = [("--prompt", p) for p in args.prompt or []] + (numbered_prompts(args.prompts) if args.prompts else [])
    if not numbered:
        raise PromptError("give at least one --prompt TEXT or --prompts FILE")
    cfg, adapter = _load_policy_model(args.run)
    check_prompts(numbered, "genrl sample", prompt_checks(adapter=adapter))
    prompts = [prompt for _, prompt in numbered]
    per_prompt = args.seeds or cfg.log.eval_seeds
    repeated, seeds = evaluation.evaluation_seeds(prompts, per_prompt)
    seeds = [s + args.seed for s in seeds]
    images = evaluation.sample_ode(adapter, repeated, seeds, args.steps or cfg.sampling.eval_steps,
                                   cfg.eval_shift_for(adapter), cfg.sampling.micro_batch)
    path = save_grid(images, repeated, Path(args.out), columns=per_prompt)
    print(f"wrote {len(repeated)} images to {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from genrl.export import export_run

    out, how = export_run(args.run, args.out, merge=args.merge)
    print(f"wrote {out}; load it with {how}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from genrl.plot import plot_runs

    print(f"wrote {plot_runs(args.runs, args.out)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from genrl.benchmarks.harness import run_suite

    if _launched_here(args):
        rest = [args.suite, *args.overrides] + (["--out", args.out] if args.out else []) + (["--dry-run"] if args.dry_run else [])
        return _relaunch_with_accelerate(args, rest)
    run_suite(args.suite, args.out, dry_run=args.dry_run, overrides=args.overrides, jobs=args.jobs)
    return 0


def add_launch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="data-parallel processes through accelerate launch (one per GPU if there are GPUs, else CPU/gloo)")
    p.add_argument("--sharding", choices=("zero2", "fsdp"),
                   help="with --num-processes: shard gradients and optimizer states (zero2) or also parameters "
                        "(fsdp, ZeRO-3) with FSDP2 instead of keeping full replicas")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrl", description="RL for text-to-image flow models")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,sample,export,plot,bench}")

    p = sub.add_parser("train", help="train a policy: genrl train [CONFIG] [dotted.key=value ...]")
    p.add_argument("items", nargs="*", help="optional config file (or bundled name), then dotted.key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint")
    p.add_argument("--help-config", action="store_true",
                   help="list every config key with the value this config (default: the bundled one) gives it, and its help")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run_dir that holds a previous run, deleting that run's outputs")
    add_launch_options(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run (or the base model) on held-out prompts")
    p.add_argument("run", nargs="?", help="run directory or checkpoint directory (default: the base model)")
    p.add_argument("--prompts", help="prompt file, one per line, or shapeworld:eval (default: the config's eval prompts)")
    p.add_argument("--out", default="eval.json", help="where to write the JSON result (and a PNG grid beside it)")
    p.add_argument("--seeds", type=int, help="images per prompt, fixed seeds per prompt (default: log.eval_seeds of "
                   "the run's config, or of the bundled config for the base model: the number training evaluates with)")
    p.add_argument("--steps", type=int, help="ODE steps (default: sampling.eval_steps)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("sample", help="draw images for prompts with a run's (or the base) model")
    p.add_argument("run", nargs="?", help="run or checkpoint directory (default: the base model)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a prompt file, one per line")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--seeds", type=int, help="images per prompt (default: log.eval_seeds of the run's or the bundled config)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--steps", type=int, help="ODE steps (default: sampling.eval_steps)")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("export", help="write a run's policy for diffusers: a LoRA folder, or a transformer folder")
    p.add_argument("run", help="run directory (its latest checkpoint) or checkpoint directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--merge", action="store_true",
                   help="sd3 / flux LoRA runs: fold the adapter into the weights and write the whole transformer "
                        "(the tiny ShapeWorld model is always written whole)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("plot", help="plot runs' reward, held-out score, KL, clip fraction, grad norm, images/s")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (several are overlaid)")
    p.add_argument("--out", default="curves.png", help="PNG to write")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("bench", help="run a benchmark suite: every algorithm x seed under one budget")
    p.add_argument("suite", help="suite name (smoke, tiny, chunk-ablation, sd35m-geneval-like, flux-hps, flux-pickscore) or YAML path")
    p.add_argument("--out", default=None, help="output directory (default bench_out/SUITE)")
    p.add_argument("--dry-run", action="store_true", help="tiny random components, one update per run (CPU check)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs side by side, each with 1/N of the threads")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied to every run")
    add_launch_options(p)
    p.set_defaults(fn=cmd_bench)
    return parser


# Positional lists that take dotted.key=value overrides, per command.
OVERRIDE_LISTS = {"train": "items", "bench": "overrides"}


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but overrides may also follow options (`bench smoke --out D k=v`): argparse alone
    fills a positional list only from the first run of positionals and rejects the rest."""
    args, extra = parser.parse_known_args(argv)
    listed = OVERRIDE_LISTS.get(args.command)
    if extra and listed and not any(item.startswith("-") for item in extra):
        setattr(args, listed, list(getattr(args, listed)) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = _parse(parser, argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    try:
        with stopping.handled(stopping.raise_interrupted, (signal.SIGTERM,)):  # SIGTERM stops like Ctrl-C
            return args.fn(args)
    except KeyboardInterrupt as err:
        code = err.exit_code if isinstance(err, stopping.Interrupted) else 130
        print(f"genrl: interrupted ({signal.Signals(code - 128).name}); the last checkpoint, if any, is kept", file=sys.stderr)
        return code
    except UserError as err:  # one line; anything else is a bug or the machine's and keeps its traceback
        if os.environ.get("GENRL_DEBUG"):
            raise
        print(f"genrl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
