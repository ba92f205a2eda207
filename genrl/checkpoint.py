"""Atomic checkpoints: a kill during a write leaves the previous checkpoint intact.

RUN_DIR/checkpoints/update_000010/{trainable.safetensors, state.pt} is written
into a temporary directory, renamed into place, and only then does
RUN_DIR/checkpoints/latest (one line: the directory name) point to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genrl.errors import CheckpointError


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: str | Path, update: int, trainable: dict[str, torch.Tensor], state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"update_{update:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        torch.save(state, tmp / "state.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the latest
        raise
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("update_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: str | Path) -> Path:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint in {root} (expected {pointer} naming a checkpoint directory)")
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    files = (path / "trainable.safetensors", path / "state.pt")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {f.name} is missing")
    try:
        trainable = load_file(str(files[0]))
        state = torch.load(files[1], weights_only=False)
    except Exception as err:  # corrupt file: name it, do not guess
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None
    return trainable, state
