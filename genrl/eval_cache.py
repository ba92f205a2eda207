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
used most recently (a hit refreshes an entry's time; a ShapeWorld entry is about 0.3 MB).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from genrl.evaluation import EvalRecord, evaluate_record, sample_ode
from genrl.prompts import is_shapeworld

CACHE_ENV = "GENRL_CACHE"  # the root of genrl's caches; evaluations go under $GENRL_CACHE/eval
FORMAT = 1  # bump when EvalRecord's file layout changes
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
    entry = cache_dir / f"{entry_key(adapter, reward, settings, context)}.pt"
    if entry.is_file():
        try:
            record = EvalRecord.load(entry)
            with contextlib.suppress(OSError):  # a read-only cache still serves its entries
                os.utime(entry)
            return record, True
        except Exception as err:  # a damaged entry is recomputed, never trusted
            warnings.warn(f"genrl: ignoring the damaged evaluation cache entry {entry}: {err}", stacklevel=2)
    record = evaluate()
    try:
        record.save(entry)
    except OSError as err:
        warnings.warn(f"genrl: cannot write the evaluation cache {cache_dir} ({err}); "
                      "set log.eval_cache_dir or log.eval_cache=false", stacklevel=2)
    else:
        prune(cache_dir, KEEP_ENTRIES)
    return record, False


def prune(cache_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used entries; return what was deleted. Another process
    pruning the same directory at the same time is harmless (a file already gone is skipped)."""
    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return float("inf")  # gone already: nothing to delete

    entries = sorted(cache_dir.glob("*.pt"), key=last_used, reverse=True)
    stale = entries[keep:]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale


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
