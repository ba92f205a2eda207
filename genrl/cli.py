"""`genrl train | eval | sample | export | plot | bench | probe | serve-reward`: arguments, launching, errors
(docs/architecture.md, "Configuration and the CLI"); the commands that read a run live in genrl.commands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from genrl import plugins, stopping, threads
from genrl.errors import ConfigError, UserError
from genrl.commands import cmd_eval, cmd_export, cmd_plot, cmd_probe, cmd_sample, cmd_serve_reward
from genrl.launch import Machines, run_launcher


def cmd_train(args: argparse.Namespace) -> int:
    from genrl import config
    from genrl.trainer import Trainer

    if args.help_config:
        _print_config_help(*config.split_config_and_overrides(args.items))
        return 0
    path, overrides = config.split_config_and_overrides(args.items)
    if _launched_here(args):
        _check_before_launch(args, _train_config(args, path, overrides))  # one clear error, not one per worker
        rest = [*args.items, *plugins.import_flags(args.imports)] + (["--resume", args.resume] if args.resume else []) + (["--overwrite"] if args.overwrite else [])
        return _relaunch_with_accelerate(args, rest)
    cfg = _train_config(args, path, overrides)
    trainer = Trainer(cfg, run_dir=args.resume, overwrite=args.overwrite)
    threads.for_command(args.threads)  # after the run's checks: an error stays the only line on stderr
    if args.resume:
        trainer.load_checkpoint()
    summary = trainer.run()
    if trainer.dist.is_main:
        _print_summary(summary)
    return stopping.exit_code(summary.get("signal")) if "interrupted_at" in summary else 0


def _train_config(args: argparse.Namespace, path: str | None, overrides: list[str]):
    """The run's config: the saved one for --resume (which must then have a checkpoint)."""
    from genrl import config
    from genrl.resume import require_checkpoint, resume_config

    if not args.resume:
        return plugins.keep_imports(config.load(path, overrides), args.imports)
    if args.overwrite:
        raise ConfigError("--overwrite starts a run afresh and --resume continues one: give one of them")
    cfg = resume_config(args.resume, overrides)
    require_checkpoint(args.resume)
    return plugins.keep_imports(cfg, args.imports)


def _check_before_launch(args: argparse.Namespace, cfg) -> None:
    """What every worker would refuse, refused once by the launching process."""
    from genrl import rundir
    from genrl.build import build_algorithm, check_rollout_budget
    from genrl.distributed import require_device

    algorithm = build_algorithm(cfg)  # the algorithm's own options: grouping_options' names, types and ranges
    check_rollout_budget(cfg, algorithm.rollout_structure(cfg.train.group_size))  # a lower bound: no model yet
    n, machines = args.num_processes, Machines.from_args(args)
    if cfg.train.prompts_per_update % n:
        raise ConfigError(f"train.prompts_per_update={cfg.train.prompts_per_update} cannot be split whole over "
                          f"--num-processes {n}{' (the total over all machines)' if machines.count > 1 else ''} "
                          f"(each process samples whole prompt groups): make it a multiple of {n}")
    require_device(cfg.device)
    # Only machine 0 checks the run directory: the main process and so the directory's one writer (and its
    # lock) live there; another machine writes nothing, and on a shared filesystem it would see machine 0's lock.
    if cfg.run_dir and machines.writes_here:  # also refuses a run directory in use by another run, naming its PID
        rundir.plan_start(cfg.run_dir, resumed=bool(args.resume), overwrite=args.overwrite)
    machines.check_port_free()


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
    if args.num_processes < 1:
        raise ConfigError(f"--num-processes {args.num_processes} is not allowed: give 1 (this process) or more")
    if args.sharding and args.num_processes < 2:
        raise ConfigError("--sharding needs --num-processes 2 or more")
    Machines.from_args(args).check_processes(args.num_processes)
    return args.num_processes > 1 and "WORLD_SIZE" not in os.environ


def _relaunch_with_accelerate(args: argparse.Namespace, rest: list[str]) -> int:
    """`genrl CMD --num-processes N ...` = `accelerate launch --num_processes N -m genrl CMD ...`.

    One process per GPU where there are GPUs (the run's `device` decides where each process
    computes, e.g. `device=cpu` keeps gloo on CPU), else CPU processes (gloo).
    """
    machines = Machines.from_args(args)
    chosen = threads.plan(args.num_processes // machines.count, args.threads)  # the processes on this machine
    threads.announce(chosen)
    # accelerate sets each worker's OMP_NUM_THREADS to this (else to 1, whatever the cores).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes),
               "--num_cpu_threads_per_process", str(chosen.threads), *machines.accelerate_flags()]
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
            from genrl.evaluation import change_uncertainty

            line += f", base {base['score']:.3f}, change {final['score'] - base['score']:+.3f}"
            line += change_uncertainty(Path(summary["run_dir"]) / "eval")
        print(line)
        if final.get("texture_bg") is not None:  # the reward-hacking guard (genrl.shapeworld.quality)
            from genrl.evaluation import texture_words

            print(f"  final {texture_words(final)}"
                  + (f"; base {texture_words(base, clean=False)}" if base and base.get("texture_bg") is not None else ""))
        if base and "per_category" in final:
            for cat, value in final["per_category"].items():
                print(f"  {cat:14s} base {base['per_category'].get(cat, float('nan')):.3f} -> final {value:.3f}")


def cmd_bench(args: argparse.Namespace) -> int:
    from genrl.benchmarks.harness import run_suite

    if args.estimate:  # runs nothing: the suite's cost, counted without weights or a GPU
        from genrl.benchmarks.estimate import check_projection, estimate, report

        check_projection(args.mfu, args.num_processes)  # before minutes of counting
        print(report(estimate(args.suite, args.overrides), args.mfu, args.num_processes))
        return 0
    if _launched_here(args):
        rest = [args.suite, *args.overrides, *plugins.import_flags(args.imports)] + (["--out", args.out] if args.out else []) + (["--dry-run"] if args.dry_run else [])
        return _relaunch_with_accelerate(args, rest)
    threads.for_command(args.threads, runs_side_by_side=max(1, args.jobs))
    run_suite(args.suite, args.out, dry_run=args.dry_run, overrides=args.overrides, jobs=args.jobs, imports=args.imports)
    return 0


def add_launch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="data-parallel processes through accelerate launch (one per GPU if there are GPUs, else CPU/gloo); "
                        "with --num-machines the total over all machines, as accelerate's --num_processes")
    p.add_argument("--num-machines", type=int, default=1, metavar="M",
                   help="machines of the run: start one launcher on each (accelerate's --num_machines)")
    p.add_argument("--machine-rank", type=int, default=0, metavar="R",
                   help="this machine's rank, 0 to M-1; machine 0 runs the main process, the run directory's writer")
    p.add_argument("--main-process-ip", metavar="IP", help="the address of machine 0, the same on every machine")
    p.add_argument("--main-process-port", type=int, metavar="P",
                   help="a free port on machine 0, the same on every machine (accelerate's default: 29500)")
    p.add_argument("--sharding", choices=("zero2", "fsdp"),
                   help="with --num-processes: shard gradients and optimizer states (zero2) or also parameters "
                        "(fsdp, ZeRO-3) with FSDP2 instead of keeping full replicas")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per process (default: OMP_NUM_THREADS if set, else the cores shared by the "
                        "processes); processes x threads above the cores makes every process wait")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrl", description="RL for text-to-image flow models")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,sample,export,plot,bench,serve-reward}")

    p = sub.add_parser("train", help="train a policy: genrl train [CONFIG] [dotted.key=value ...]")
    p.add_argument("items", nargs="*", help="optional config file (or bundled name), then dotted.key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint")
    p.add_argument("--help-config", action="store_true",
                   help="list every config key with the value this config (default: the bundled one) gives it, and its help")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run_dir that holds a previous run, deleting that run's outputs")
    add_launch_options(p)
    plugins.add_import_option(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run (or the base model) on held-out prompts")
    p.add_argument("run", nargs="?", help="run directory or checkpoint directory (default: the base model)")
    p.add_argument("--prompts", help="prompt file, one per line, or shapeworld:eval (default: the config's eval prompts)")
    p.add_argument("--out", default="eval.json", help="where to write the JSON result (and a PNG grid beside it)")
    p.add_argument("--seeds", type=int, help="images per prompt, fixed seeds per prompt (default: log.eval_seeds of "
                   "the run's config, or of the bundled config for the base model: the number training evaluates with)")
    p.add_argument("--steps", type=int, help="ODE steps (default: sampling.eval_steps)")
    p.add_argument("--guidance", type=float, metavar="G",
                   help="sample with guidance scale G (classifier-free guidance, 1 = none; FLUX.1-dev: its embedded "
                        "guidance) instead of the model's configured one; recorded in the JSON as 'guidance'")
    plugins.add_import_option(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("sample", help="draw images for prompts with a run's (or the base) model")
    p.add_argument("run", nargs="?", help="run or checkpoint directory (default: the base model)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a prompt file, one per line")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--seeds", type=int, help="images per prompt (default: log.eval_seeds of the run's or the bundled config)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--score", action="store_true",
                   help="ShapeWorld prompts: score each image (pass / fail and partial credit under it, the totals printed)")
    p.add_argument("--steps", type=int, help="ODE steps (default: sampling.eval_steps)")
    plugins.add_import_option(p)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("export", help="write a run's policy for diffusers: a LoRA folder, or a transformer folder")
    p.add_argument("run", help="run directory (its latest checkpoint) or checkpoint directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--merge", action="store_true",
                   help="sd3 / flux / wan LoRA runs: fold the adapter into the weights and write the whole transformer "
                        "(the tiny ShapeWorld model is always written whole)")
    p.add_argument("--overwrite", action="store_true",
                   help="export into a directory holding other files: replace only the files export writes, keep the rest")
    plugins.add_import_option(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("plot", help="plot runs' reward, held-out score, KL, clip fraction, grad norm, images/s")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (several are overlaid)")
    p.add_argument("--out", default="curves.png", help="PNG to write")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("bench", help="run a benchmark suite: every algorithm x seed under one budget")
    p.add_argument("suite", help="suite name (smoke, tiny, chunk-ablation, sd35m-geneval-like, flux-hps, flux-pickscore, wan) or YAML path")
    p.add_argument("--out", default=None, help="output directory (default bench_out/SUITE)")
    p.add_argument("--dry-run", action="store_true", help="tiny random components, one update per run (CPU check)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs side by side, each with 1/N of the threads")
    p.add_argument("--estimate", action="store_true",
                   help="run nothing: print the suite's FLOPs (counted on the real model without weights), GPU-hours, "
                        "wall-clock on --num-processes GPUs and peak memory per GPU on H100 / H200 / A100")
    p.add_argument("--mfu", type=float, default=0.35,
                   help="with --estimate: the fraction of the GPU's dense bf16 peak assumed (default 0.35)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied to every run")
    add_launch_options(p)
    plugins.add_import_option(p)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("serve-reward", help="host a reward over HTTP for reward.name=remote (docs/rewards_remote.md)")
    p.add_argument("items", nargs="*", help="optional config file (its reward section), then reward.* / device= overrides")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8700, help="port (default 8700; 0 picks a free one and prints it)")
    p.add_argument("--token", default=None, help="refuse requests without it (401); default: $GENRL_REWARD_TOKEN")
    p.add_argument("--max-batch", type=int, default=256, help="most images in one request (default 256)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="a request scoring longer gets 504 (default 300)")
    p.add_argument("--device", default=None, help="torch device for the reward (default: the config's device)")
    plugins.add_import_option(p)
    p.set_defaults(fn=cmd_serve_reward)
    probes = sub.add_parser("probe", help="measure a model without training it: genrl probe credit [RUN_DIR] --out DIR")
    p = probes.add_subparsers(dest="probe", required=True).add_parser(
        "credit", help="fork siblings from the ODE at every step: how much of the reward each step decides")
    p.add_argument("run", nargs="?", default=None, help="a run directory or checkpoint (default: the base model)")
    p.add_argument("--out", required=True, help="directory for credit.json and credit.png")
    p.add_argument("--children", type=int, default=4, help="siblings forked at every step (default 4)")
    p.add_argument("--seeds", type=int, default=2, help="trunks per prompt (default 2)")
    p.add_argument("--prompts", default=None, help="prompt file (default: the run's held-out prompts)")
    p.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts (a quick look)")
    p.set_defaults(fn=cmd_probe)
    return parser


# Positional lists that take dotted.key=value overrides, per command.
OVERRIDE_LISTS = {"train": "items", "bench": "overrides", "serve-reward": "items"}


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
        plugins.load(getattr(args, "imports", []), "--import")  # before any config or run is read
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
