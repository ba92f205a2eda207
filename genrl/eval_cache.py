"""A cache of base-model evaluations, so that repeated runs do not sample the same evaluation again.

An entry is one `EvalRecord` file named by a SHA-256 over everything the evaluation's outcome
depends on:
  - the weights evaluated: every tensor of the adapter's state_dict (name, dtype, shape, bytes);
  - the adapter's class and the model config (name, options), the device, torch's version;
  - the prompts, images per prompt (which fix the seeds), ODE steps, shift and micro-batch;
  - the reward config, when the prompts are not ShapeWorld's (ShapeWorld prompts are scored by
    ShapeEval, whatever the run's reward);
  - the source of genrl's modules and of the adapter's and reward's modules: after an edit of
    the sampler, the scorer or the model code a new entry is computed.
A cached record is the saved record of the evaluation that made it: the same scores (bit for
bit), summary and grid images as evaluating again.

Every edit of genrl's code makes new keys, so the directory keeps only the KEEP_ENTRIES entries
used most recently (a hit refreshes an entry's time; a ShapeWorld entry is about 0.3 MB). Only files
named as the cache names its entries (64 hex digits, .pt) are ever pruned: other files in the
directory are left alone. An entry holds its own key; one whose key, prompts, seeds or sizes do not fit
the evaluation asked for is dropped with a warning and evaluated afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from genrl.evaluation import GRID_SEEDS, EvalRecord, evaluate_record, evaluation_seeds, sample_ode
from genrl.prompts import is_shapeworld

CACHE_ENV = "GENRL_CACHE"  # the root of genrl's caches; evaluations go under $GENRL_CACHE/eval
FORMAT = 2  # bump when the entry's layout changes (2: a header with the key, checked before use)
HEADER = "genrl_eval_cache"  # the entry's own key and format, saved beside the record
SUFFIX = ".pt"
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.pt")  # what prune may delete: nothing else in the directory is the cache's
KEEP_ENTRIES = 32  # the least recently used beyond these are deleted when an entry is written


def directory(enabled: bool, path: str | None) -> Path | None:
    """Where entries live: `path`, else $GENRL_CACHE/eval, else ~/.cache/genrl/eval; None when disabled."""
    if not enabled:
        return None
    if path:
        return Path(path).expanduser()
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() / "eval" if root else Path.home() / ".cache" / "genrl" / "eval"


def run_settings(cfg, adapter, prompts) -> tuple[dict, dict]:
    """(settings, context) of a run's held-out evaluation (`cfg` a genrl.config.Config), as cached_evaluate takes them."""
    settings = {"prompts": list(prompts), "images_per_prompt": cfg.log.eval_seeds, "num_steps": cfg.sampling.eval_steps,
                "shift": cfg.eval_shift_for(adapter), "micro_batch": cfg.sampling.micro_batch}
    context = {"model": dataclasses.asdict(cfg.model), "reward": dataclasses.asdict(cfg.reward), "device": str(cfg.device)}
    return settings, context


def cached_evaluate(cache_dir: Path | None, adapter, reward, settings: dict, context: dict,
                    sampler=sample_ode, progress: str | None = None) -> tuple[EvalRecord, bool]:
    """(evaluate_record(adapter, reward=reward, **settings, ...), whether it came from the cache).

    `settings`: evaluate_record's keyword arguments that shape the record (prompts,
    images_per_prompt, num_steps, shift, micro_batch, and shown_per_prompt if not the default);
    `context`: what else decides the images (model config, reward config, device). `sampler`
    must draw what sample_ode draws (the trainer's shares rows out among processes).
    With `cache_dir` None this is a plain evaluation.
    """
    def evaluate() -> EvalRecord:
        return evaluate_record(adapter, reward=reward, sampler=sampler, progress=progress, **settings)

    if cache_dir is None:
        return evaluate(), False
    key = entry_key(adapter, reward, settings, context)
    entry = cache_dir / f"{key}{SUFFIX}"
    if entry.is_file():
        try:
            record = load_entry(entry, key, settings)
            with contextlib.suppress(OSError):  # a read-only cache still serves its entries
                os.utime(entry)
            return record, True
        except Exception as err:  # a damaged, stale or crafted entry is dropped and recomputed, never trusted
            warnings.warn(f"genrl: ignoring the damaged evaluation cache entry {entry}: {err}", stacklevel=2)
            with contextlib.suppress(OSError):
                entry.unlink()
    record = evaluate()
    try:
        save_entry(record, entry, key)
    except OSError as err:
        warnings.warn(f"genrl: cannot write the evaluation cache {cache_dir} ({err}); "
                      "set log.eval_cache_dir or log.eval_cache=false", stacklevel=2)
    else:
        prune(cache_dir, KEEP_ENTRIES)
    return record, False


def save_entry(record: EvalRecord, entry: Path, key: str) -> None:
    """The record with a header naming its key: written whole (a temporary file renamed) or not at all."""
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "images"}
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")  # one per process: two runs may write one key
    try:
        torch.save({HEADER: {"format": FORMAT, "key": key}, "record": fields}, tmp)
        tmp.replace(entry)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_entry(entry: Path, key: str, settings: dict) -> EvalRecord:
    """The record of `entry`, after checking that it is this cache's, made for `key`, and that its sizes are
    those of an evaluation with `settings` (a stale or crafted entry would write a wrong base.json and then
    break the grids); raises ValueError naming what does not fit."""
    data = torch.load(entry, weights_only=True)
    header = data.get(HEADER) if isinstance(data, dict) else None
    if header != {"format": FORMAT, "key": key}:
        raise ValueError(f"not an entry of this cache for key {key[:12]}… (header {header!r})")
    record = EvalRecord(**data["record"])
    check_record(record, settings)
    return record


def check_record(record: EvalRecord, settings: dict) -> None:
    """Raise ValueError unless `record` has the prompts, seeds and sizes `evaluate_record(**settings)` gives."""
    prompts, seeds = evaluation_seeds(settings["prompts"], settings["images_per_prompt"])
    n, per_prompt = len(prompts), settings["images_per_prompt"]
    shown = [i for i in range(n) if i % per_prompt < settings.get("shown_per_prompt", GRID_SEEDS)]
    result = record.result
    problems = [what for what, ok in [
        ("prompts", record.prompts == prompts),
        ("seeds", record.seeds == seeds),
        ("shown images", record.shown == shown),
        ("scores", isinstance(record.scores, dict) and record.scores and all(
            isinstance(v, torch.Tensor) and tuple(v.shape) == (n,) for v in record.scores.values())),
        ("thumbnails", isinstance(record.thumbnails, torch.Tensor) and record.thumbnails.dtype == torch.uint8
         and record.thumbnails.dim() == 4 and record.thumbnails.shape[:2] == (len(shown), 3)),
        ("result", isinstance(result, dict) and isinstance(result.get("score"), (int, float)) and math.isfinite(result["score"])
         and result.get("num_steps") == settings["num_steps"] and result.get("images_per_prompt") == per_prompt
         and isinstance(result.get("per_prompt"), dict) and set(result["per_prompt"]) == set(settings["prompts"])),
    ] if not ok]
    if problems:
        raise ValueError(f"its {', '.join(problems)} do not fit an evaluation of {len(settings['prompts'])} prompts "
                         f"x {per_prompt} images")


def prune(cache_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used entries; return what was deleted. Only files named as
    this cache names its entries are counted or deleted, never anything else in the directory. Another
    process pruning the same directory at the same time is harmless (a file already gone is skipped)."""
    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return float("inf")  # gone already: nothing to delete

    entries = sorted((p for p in cache_dir.glob(f"*{SUFFIX}") if is_entry_name(p.name)), key=last_used, reverse=True)
    stale = entries[keep:]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale


def is_entry_name(name: str) -> bool:
    """True for a name this cache gives an entry: a SHA-256 in lower-case hex, then SUFFIX."""
    return ENTRY_NAME.fullmatch(name) is not None


def entry_key(adapter, reward, settings: dict, context: dict) -> str:
    """The hex SHA-256 naming an entry (see the module docstring for what it covers)."""
    shapeworld = is_shapeworld(list(settings["prompts"]))
    fields = {
        "format": FORMAT,
        "settings": settings,
        "context": {k: v for k, v in context.items() if not (shapeworld and k == "reward")},
        "adapter": f"{type(adapter).__module__}.{type(adapter).__qualname__}",
        "torch": torch.__version__,
        "weights": weights_digest(adapter),
        "code": code_digest([type(adapter)] + ([] if shapeworld else [type(reward)])),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every tensor of `module.state_dict()`: name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()


def code_digest(classes: list[type]) -> str:
    """SHA-256 over the source files of genrl's package and of the modules defining `classes`."""
    files = set(Path(__file__).resolve().parent.rglob("*.py"))  # genrl/ (its initial noise: genrl/noise.py)
    for module in [c.__module__ for c in classes]:
        source = getattr(sys.modules.get(module), "__file__", None)
        if source:
            files.add(Path(source))
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path.name}|".encode())
        h.update(path.read_bytes())
    return h.hexdigest()
