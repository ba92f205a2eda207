"""`genrl export RUN_DIR --out DIR [--merge] [--overwrite]`: a run's trained policy in the formats other tools load.

    sd3 / flux / wan, LoRA   DIR/pytorch_lora_weights.safetensors       pipe.load_lora_weights(DIR)
    sd3 / flux / wan, merge  DIR/transformer/ (LoRA folded in)         SD3Transformer2DModel / FluxTransformer2DModel
                                                                  / WanTransformer3DModel
                                                                  .from_pretrained(DIR, subfolder="transformer")
    sd3 / flux / wan, full   DIR/transformer/ (with or without --merge) the same
    tiny (ShapeWorld)  DIR/transformer/, DIR/text_encoder/, DIR/config.json (LoRA always folded in)
                                                                  SD3Transformer2DModel.from_pretrained(DIR, subfolder=
                                                                  "transformer"); genrl.models.load("tiny", weights=DIR)

The weights are those `genrl.load_run` returns: the run's average when it kept one (`train.ema`).

Export writes only its own files. DIR/.genrl-export.json lists what the last export wrote there, so
exporting into the same DIR again replaces exactly those entries. Any other non-empty DIR is refused
unless `--overwrite`, which then replaces only the entries export writes and leaves every other file
alone. A DIR that is, holds, or lies inside a genrl run directory is always refused. The files are
written into a temporary folder inside DIR and each is then renamed into place, so a reader never
sees a half-written file and DIR itself (perhaps the current directory) is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from genrl.dirlock import LOCK_NAME
from genrl.errors import ConfigError, RunDirError
from genrl.rundir import RECORD
from genrl.runs import locate, open_run

MARKER = ".genrl-export.json"  # the entries the last export wrote into DIR
STAGING_PREFIX = ".genrl-export-"  # the temporary folder inside DIR (one left by a kill is export's own)
# Every entry an export may write: a marker naming anything else is not trusted.
EXPORT_ENTRIES = ("config.json", "transformer", "text_encoder", "pytorch_lora_weights.safetensors")
RUN_DEPTH = 2  # how deep inside DIR a run directory is looked for (a bench --out holds runs/LABEL__SEED)


def export_run(run: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False) -> tuple[Path, str]:
    """Write the policy of `run` (run or checkpoint directory) to `out`; returns (out, how to load it).
    `out` is checked before the run is loaded, and nothing is written for a run without an export format."""
    from genrl.models.sd3 import DiffusersFlowModel
    from genrl.models.tiny import TinyShapeModel
    from genrl.models.wan import WanModel

    out = Path(out)
    run_dir, _ = locate(run)
    previous = check_destination(out, run_dir, overwrite)
    loaded = open_run(run, device="cpu")
    adapter = loaded.adapter
    if isinstance(adapter, TinyShapeModel):
        write: Callable[[Path], object] = adapter.save_pretrained
        how = (f'SD3Transformer2DModel.from_pretrained("{out}", subfolder="transformer"), '
               f'or genrl.models.load("tiny", weights="{out}")')
    elif isinstance(adapter, (DiffusersFlowModel, WanModel)):
        if adapter.finetune == "none":
            raise ConfigError(f"run {str(run)!r} trained nothing (model.options.finetune=none): there is nothing to export")
        how = f'{adapter.TRANSFORMER}.from_pretrained("{out}", subfolder="transformer")'
        if adapter.finetune == "lora" and not merge:
            write = adapter.save_diffusers
            how = f'{adapter.PIPELINE}.from_pretrained(BASE_MODEL).load_lora_weights("{out}")'
        else:
            write = lambda directory: _save_merged(adapter, directory)  # noqa: E731
    else:
        raise ConfigError(
            f"model {loaded.config.model.name!r} of run {str(run)!r} has no export format "
            "(genrl export writes the tiny ShapeWorld model and sd3 / flux / wan); load it with genrl.load_run"
        )
    _write_into(out, write, previous)
    return out, how


def _save_merged(adapter, directory: Path) -> None:
    from genrl.models.lora import fold_lora

    directory.mkdir(parents=True, exist_ok=True)
    fold_lora(adapter.transformer).save_pretrained(directory / "transformer")  # this adapter was loaded only to export


# ------------------------------------------------------------------------------------- the destination


def check_destination(out: Path, run_dir: Path, overwrite: bool) -> list[str]:
    """Refuse a destination export may not write (before anything is written); return the entries a previous
    export recorded there (empty for a new or empty directory)."""
    where = f"--out {str(out)!r}"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{where} is a file, not a directory: choose a directory to export into")
    target, source = out.resolve(), run_dir.resolve()
    relation = ("is the run directory" if target == source else "is inside the run directory"
                if source in target.parents else "holds the run directory" if target in source.parents else "")
    if relation:
        raise RunDirError(f"{where} {relation} {str(run_dir)!r}: export never writes among a run's files; "
                          "choose another directory")
    inside = next((p for p in (target, *target.parents) if is_run_directory(p)), None)
    below = None if inside else _run_below(target)
    if inside or below:
        raise RunDirError(f"{where} {('is' if inside == target else 'is inside') if inside else 'holds'} the genrl run directory "
                          f"{str(inside or below)!r}: choose a directory outside every run")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    previous = _recorded(out) if MARKER in entries else []
    if MARKER in entries:  # an earlier export: only someone else's entry under an export name is in the way
        foreign = [name for name in entries if name in EXPORT_ENTRIES and name not in previous]
    else:  # a killed export's temporary folder is export's own
        foreign = [name for name in entries if not name.startswith(STAGING_PREFIX)]
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirError(f"{where} holds files genrl export did not write ({shown}); choose "
                          "an empty or new directory, or pass --overwrite to replace only the files export writes "
                          f"({', '.join(EXPORT_ENTRIES)}) and keep the others")
    return previous


def is_run_directory(path: Path) -> bool:
    """A genrl run directory: the record a run writes at its start, its metrics, its config with checkpoints or
    with a run's lock file (a project folder holding only some config.yaml is not one)."""
    try:
        return ((path / RECORD).is_file() or (path / "metrics.jsonl").is_file()
                or (path / "checkpoints" / "latest").exists()
                or ((path / "config.yaml").is_file() and (path / "checkpoints").is_dir())
                or ((path / "config.yaml").is_file() and (path / LOCK_NAME).is_file()))
    except OSError:  # unreadable: not known to be a run
        return False


def _run_below(directory: Path) -> Path | None:
    """A run directory up to RUN_DEPTH levels inside `directory`, or None."""
    level = [directory]
    for _ in range(RUN_DEPTH):
        children = []
        for parent in level:
            with contextlib.suppress(OSError):
                children += [p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()]
        found = next((p for p in children if is_run_directory(p)), None)
        if found is not None:
            return found
        level = children
    return None


def _recorded(out: Path) -> list[str]:
    """The entries DIR/.genrl-export.json lists, keeping only names export writes (a crafted marker cannot
    make export remove anything else)."""
    try:
        names = json.loads((out / MARKER).read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in names if name in EXPORT_ENTRIES] if isinstance(names, list) else []


def _write_into(out: Path, write: Callable[[Path], object], previous: list[str]) -> None:
    """Write the export into a temporary folder inside `out`, then rename each entry into place (replacing
    only export's own entries: those written now and those the previous export recorded)."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for leftover in out.glob(STAGING_PREFIX + "*"):  # a killed export's temporary folder
            shutil.rmtree(leftover, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as err:
        raise RunDirError(f"--out {str(out)!r} cannot be written: {err.strerror}") from None
    try:
        files, old = stage / "files", stage / "old"
        write(files)
        old.mkdir()
        written = sorted(p.name for p in files.iterdir())
        for name in sorted(set(written) | set(previous)):
            target = out / name
            if target.exists() or target.is_symlink():
                os.replace(target, old / name)  # moved aside, deleted once the new entries are in place
            if name in written:
                os.replace(files / name, target)
        marker = stage / MARKER
        marker.write_text(json.dumps({"written_by": "genrl export", "entries": written}, indent=1) + "\n")
        os.replace(marker, out / MARKER)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if nothing else appeared in it
        raise
    shutil.rmtree(stage, ignore_errors=True)
