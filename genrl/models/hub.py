"""Finding model weights on this machine, never downloading them.

genrl runs on machines without access to the Hugging Face Hub (clusters,
CI), so weights come from a local directory in diffusers format or from a
snapshot already in the Hugging Face cache. When they are not there the error
says what was tried, which files are expected and the command that fetches
them on a machine with access.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Mapping, Sequence

from genrl.errors import ConfigError, UserError

# What one component folder of a diffusers-format model must hold.
MODEL = "model"  # config.json + weights (*.safetensors, or *.bin)
TOKENIZER = "tokenizer"  # tokenizer_config.json (+ vocab/merges, spiece.model or tokenizer.json)
CONFIG = "config"  # a scheduler: scheduler_config.json only

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ModelFilesNotFound(UserError, FileNotFoundError):
    """Weights of a model are not on this machine; the message says how to get them."""


def download_command(model_id: str, components: Mapping[str, str] | None = None) -> str:
    """The command that fetches only the diffusers-format folders genrl reads (not the single-file checkpoints)."""
    folders = [c for c in (components or {}) if c]
    include = "" if not folders else " --include model_index.json " + " ".join(shlex.quote(f"{c}/*") for c in folders)
    return f"hf download {model_id}{include}"


def _component_problems(directory: Path, components: Mapping[str, str]) -> list[str]:
    """Files missing from `directory`; a component "" is the folder itself (a transformers model)."""
    problems = []
    for sub, kind in components.items():
        folder = directory / sub
        at = f"{sub}/" if sub else ""
        if kind == MODEL:
            if not (folder / "config.json").is_file():
                problems.append(f"{at}config.json")
            if not folder.is_dir() or not any(f.name.endswith(_WEIGHT_SUFFIXES) for f in folder.iterdir()):
                problems.append(f"{at}*.safetensors")
        elif kind == TOKENIZER:
            if not (folder / "tokenizer_config.json").is_file():
                problems.append(f"{at}tokenizer_config.json")
        elif kind == CONFIG:
            if not any((folder / n).is_file() for n in ("scheduler_config.json", "config.json")):
                problems.append(f"{at}scheduler_config.json")
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown component kind {kind!r}")
    return problems


def _expected(components: Mapping[str, str]) -> str:
    what = {MODEL: "config.json + *.safetensors", TOKENIZER: "tokenizer files", CONFIG: "scheduler_config.json"}
    if not components:  # a folder whose files the caller checks itself (e.g. a reward's checkpoint folder)
        return "the model's files"
    return ", ".join(f"{sub + '/' if sub else ''}{what[kind]}" for sub, kind in components.items())


def _cached_snapshot(model_id: str, cache_dir: str | Path | None, revision: str | None) -> Path | None:
    """The cached snapshot of `model_id`, looked up with local_files_only (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, cache_dir=cache_dir, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _cache_location(cache_dir: str | Path | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def resolve_model_dir(
    name: str,
    components: Mapping[str, str],
    *,
    path: str | os.PathLike | None = None,
    model_id: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> Path:
    """The local diffusers-format directory of model `name` (e.g. "sd3").

    `path` wins if given (it must hold the components; `model_id` then only
    names the download in messages); otherwise `model_id`
    ("stabilityai/stable-diffusion-3.5-medium") is looked up in the Hugging
    Face cache (`cache_dir`, else HF_HUB_CACHE). `components` maps each folder
    to what it must contain (MODEL, TOKENIZER, CONFIG).
    """
    if path is not None:
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise ModelFilesNotFound(
                f"{name}: model directory {directory} does not exist; expected a diffusers-format folder with "
                f"{_expected(components)}"
                + (f". To get it: `{download_command(model_id, components)} --local-dir {directory}`" if model_id else "")
            )
        tried = f"path={directory}"
    elif model_id is not None:
        snapshot = _cached_snapshot(model_id, cache_dir, revision)
        if snapshot is None:
            raise ModelFilesNotFound(
                f"{name}: {model_id} is not in the Hugging Face cache ({_cache_location(cache_dir)}) and genrl never "
                f"downloads weights. Expected {_expected(components)}. On a machine with access run "
                f"`{download_command(model_id, components)}` (gated models need `hf auth login` first; "
                "`huggingface-cli download` with huggingface_hub < 1.0), then copy the cache or pass path=DIR."
            )
        directory, tried = snapshot, f"cached snapshot {snapshot} of {model_id}"
    else:
        raise ConfigError(f"{name}: give path=DIR (a diffusers-format model folder) or model_id=ORG/NAME in the HF cache")

    problems = _component_problems(directory, components)
    if problems:
        fix = f"`{download_command(model_id, components)}`" if model_id else "re-save it with `save_pretrained(DIR)`"
        raise ModelFilesNotFound(
            f"{name}: {tried} is incomplete: missing {', '.join(problems)}. Expected {_expected(components)}. "
            f"To get the files: {fix}."
        )
    return directory


def find_file(
    name: str,
    filenames: Sequence[str],
    *,
    path: str | os.PathLike | None = None,
    model_id: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """One weight file of a reward model: `path` (a file, or a folder holding one of `filenames`),
    else the first of `filenames` found in the cached snapshot of `model_id`."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        for f in filenames:
            if (p / f).is_file():
                return p / f
        raise ModelFilesNotFound(
            f"{name}: no weights at {p}; expected a file, or a folder holding one of {list(filenames)}"
            + (f". To get them: `hf download {model_id} {filenames[0]} --local-dir DIR`" if model_id else "")
        )
    if model_id is None:
        raise ConfigError(f"{name}: give path=FILE (one of {list(filenames)})")
    snapshot = _cached_snapshot(model_id, cache_dir, None)
    for f in filenames:
        if snapshot is not None and (snapshot / f).is_file():
            return snapshot / f
    raise ModelFilesNotFound(
        f"{name}: none of {list(filenames)} from {model_id} is in the Hugging Face cache "
        f"({_cache_location(cache_dir)}) and genrl never downloads weights. On a machine with access run "
        f"`hf download {model_id} {filenames[0]}`, then copy the cache or pass path=FILE."
    )
