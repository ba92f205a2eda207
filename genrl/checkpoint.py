"""Atomic, verified checkpoints: a kill or a full disk during a write leaves the previous checkpoint intact.

RUN_DIR/checkpoints/update_000010/{trainable.safetensors, state.pt, manifest.json} is written
into a temporary directory, renamed into place (swapped atomically with an existing one of
the same update), and only then does RUN_DIR/checkpoints/latest (one line: the directory
name) point to it. manifest.json holds the sha256 of both files and the run's fixed config
keys (see `genrl.resume.fixed_config`): loading checks both, so a corrupt file or another
experiment's checkpoint is refused with an error naming what differs. state.pt is read with
`torch.load(weights_only=True)`: a crafted run directory cannot run code.

A checkpoint without manifest.json loads unchecked only if it was written before manifests
existed: its state.pt carries no `checkpoint_format` (which every checkpoint written with a
manifest carries) and no other checkpoint of its run has a manifest. Otherwise a missing manifest
means it was deleted, and the checkpoint is refused. Nothing is followed out of the run directory:
`checkpoints/` itself, `latest` and the update_N entries must resolve inside it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from genrl.errors import CheckpointError

FORMAT = 1
FILES = ("trainable.safetensors", "state.pt")
MANIFEST = "manifest.json"
FORMAT_KEY = "checkpoint_format"  # in state.pt: written by a genrl that writes manifests
_NAME = re.compile(r"update_(\d+)")


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint written by a different experiment (another algorithm, model, seed, ...)."""


def update_of(path: Path) -> int | None:
    """The update number of a checkpoint directory name (update_000010 -> 10); None for other names."""
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


# -- writing ------------------------------------------------------------------------------


class _HashingFile:
    """A binary file that hashes what is written to it (no second read of the checkpoint)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        written = self.file.write(data)  # a buffered file writes everything or raises
        self.sha256.update(data)
        return written

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> str:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.sha256.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """The whole file or, after a kill or a full disk, the previous version: never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the files themselves are synced
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _put_in_place(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final`; an existing `final` (re-saving an update) is replaced
    only once the new directory is complete, in one atomic swap where the system allows it."""
    if not final.exists():
        os.replace(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the replaced checkpoint
    else:  # a brief gap: until the second rename, readers fall back to the previous checkpoint
        aside = final.with_name(f".{final.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)


def directory(run_dir: str | Path) -> Path:
    """RUN_DIR/checkpoints, refused when it leads out of the run directory (a symbolic link to another
    run would have a resume write into, prune and repoint that run)."""
    root = Path(run_dir) / "checkpoints"
    if root.is_symlink() and not root.resolve().is_relative_to(Path(run_dir).resolve()):
        raise CheckpointError(f"{root} is a symbolic link to {os.readlink(root)}, outside the run directory: genrl "
                              "reads and writes checkpoints only inside its run directory; replace the link by a directory")
    return root


def remove_orphans(run_dir: str | Path) -> list[str]:
    """Delete what an interrupted write left behind (.update_* and .latest.* temporaries); their names."""
    root = directory(run_dir)
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        if entry.name.startswith((".update_", ".latest.")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _remove_old(root: Path, written: int, keep: int) -> None:
    """Keep the `keep` newest checkpoints up to the one just written (by update number, not by name).

    Checkpoints of later updates belong to a continuation this run abandoned (it resumed from an
    earlier one, e.g. after a corrupt latest) and would otherwise be mistaken for newer.
    """
    numbered = sorted(((update_of(p), p) for p in root.iterdir()
                       if p.is_dir() and not p.is_symlink() and update_of(p) is not None), reverse=True)  # no links
    stale = [p for u, p in numbered if u > written]
    older = [p for u, p in numbered if u < written]
    for path in stale + older[max(keep - 1, 0):]:
        shutil.rmtree(path, ignore_errors=True)


def _disk_full(err: BaseException) -> bool:
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def save(run_dir: str | Path, update: int, trainable: dict[str, torch.Tensor], state: dict, keep: int = 2,
         fingerprint: dict | None = None) -> Path:
    """Write checkpoint `update`, point `latest` at it, keep the `keep` newest; returns its directory.

    `fingerprint`: the run's fixed config keys (`genrl.resume.fixed_config`), checked by `load`.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the checkpoint just written is kept")
    root = directory(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(run_dir)
    earlier = candidates(run_dir)
    name = f"update_{update:06d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        digests = {}
        out = _HashingFile(tmp / FILES[0])
        out.write(save_safetensors({k: v.detach().contiguous().cpu() for k, v in trainable.items()}))
        digests[FILES[0]] = out.close()
        out = _HashingFile(tmp / FILES[1])
        torch.save({**state, FORMAT_KEY: FORMAT}, out)
        digests[FILES[1]] = out.close()
        manifest = {"format": FORMAT, "update": update, "sha256": digests}
        if fingerprint is not None:
            manifest |= {"config": fingerprint, "config_sha256": config_sha256(fingerprint)}
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        _fsync_dir(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the latest
        if isinstance(err, Exception) and _disk_full(err):
            kept = (f"{earlier[0].name} is kept (free some space, then resume with `genrl train --resume {run_dir}`)"
                    if earlier else "it was the run's first, so there is none to resume from "
                    "(free some space, then run the same command again)")
            raise CheckpointError(f"no space left on device while writing checkpoint {final}; {kept}") from None
        raise
    _put_in_place(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / "latest", name + "\n")
    _remove_old(root, update, keep)
    return final


def config_sha256(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


# -- reading ------------------------------------------------------------------------------


def latest(run_dir: str | Path) -> Path:
    """The directory RUN_DIR/checkpoints/latest names: a plain update_N name inside checkpoints/."""
    root = directory(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint in {root} (expected {pointer} naming a checkpoint directory)")
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer} cannot be read ({err})") from None
    path = root / name
    if not _NAME.fullmatch(name):
        raise CheckpointError(f"{pointer} names {name[:80]!r}, which is not a checkpoint name (update_NNNNNN)")
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {name}, which does not exist")
    if path.resolve().parent != root.resolve():  # a symbolic link out of the run directory
        raise CheckpointError(f"{pointer} names {name}, which leads outside {root}")
    return path


def load(path: str | Path, fingerprint: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable tensors, state) of a checkpoint directory, verified against its manifest and,
    given `fingerprint`, against the fixed config keys of the run that loads it."""
    path = Path(path)
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    manifest = _read_manifest(path)
    if manifest is not None and fingerprint is not None and "config" in manifest:
        _check_fingerprint(path, manifest, fingerprint)
    for name in FILES:
        if manifest is not None and _sha256(path / name) != manifest["sha256"].get(name):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} does not match the sha256 in its {MANIFEST} "
                "(the file changed after it was written)"
            )
    try:
        trainable = load_file(str(path / FILES[0]))
        state = torch.load(path / FILES[1], weights_only=True)
    except Exception as err:  # corrupt or crafted file: name it, do not guess
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:300]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: state.pt holds a {type(state).__name__}, not a dict")
    for where, tensors in (("trainable.safetensors", trainable), ("state.pt ema", state.get("ema") or {})):
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"checkpoint {path} is corrupt: {where} holds non-finite values in {bad[0]!r}"
                                  f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}")
    if manifest is None:
        _check_written_before_manifests(path, state)
    return trainable, state


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as err:
        raise CheckpointError(f"checkpoint {file.parent}: {file.name} cannot be read ({err.strerror})") from None
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict | None:
    """The manifest, or None when there is none (`_check_written_before_manifests` decides if that may be)."""
    file = path / MANIFEST
    if not file.exists():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} cannot be read ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("sha256"), dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is not a genrl checkpoint manifest (format {FORMAT})")
    return manifest


def _check_written_before_manifests(path: Path, state: dict) -> None:
    """A checkpoint without a manifest loads (unchecked) only if written before manifests existed: deleting
    manifest.json must not switch off the checksum and same-experiment checks."""
    if FORMAT_KEY in state:
        why = f"its state.pt says it was written with one (format {state[FORMAT_KEY]!r})"
    elif siblings := [p.name for p in path.parent.iterdir() if p != path and update_of(p) is not None
                      and (p / MANIFEST).is_file()]:
        why = f"its run's other checkpoints have one ({sorted(siblings)[0]})"
    else:
        print(f"genrl: warning: checkpoint {path} has no {MANIFEST} (written by an older genrl): "
              "its files cannot be checked against a checksum", file=sys.stderr)
        return
    raise CheckpointError(f"checkpoint {path} has no {MANIFEST}, but {why}: it was deleted, and without it neither "
                          "the checksums nor the experiment can be checked; restore it, or resume from another checkpoint")


def _check_fingerprint(path: Path, manifest: dict, fingerprint: dict) -> None:
    saved = manifest["config"]
    if manifest.get("config_sha256") == config_sha256(fingerprint):
        return
    differ = [k for k in list(fingerprint) + [k for k in saved if k not in fingerprint] if saved.get(k) != fingerprint.get(k)]
    if not differ:  # the hash of the saved keys itself does not match them: the manifest was edited
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is corrupt (config_sha256 does not match its config)")
    shown = ", ".join(f"{k}={saved.get(k)!r} (this run: {fingerprint.get(k)!r})" for k in differ[:3])
    more = f" and {len(differ) - 3} more keys" if len(differ) > 3 else ""
    raise CheckpointMismatch(
        f"checkpoint {path} was written by a different experiment: {shown}{more}; "
        "a checkpoint resumes only the run that wrote it"
    )


def candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories to try, best first: the one `latest` names, then the others, newest first."""
    root = directory(run_dir)
    if not root.is_dir():
        return []
    found = sorted((p for p in root.iterdir() if update_of(p) is not None and p.is_dir()), key=update_of, reverse=True)
    try:
        first = [latest(run_dir)]
    except CheckpointError:
        first = []
    return first + [p for p in found if p not in first and p.resolve().parent == root.resolve()]


def load_latest(run_dir: str | Path, fingerprint: dict | None = None,
                warn: Callable[[str], None] | None = None) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """(path, trainable, state) of the newest usable checkpoint: the one `latest` names, or, when that
    one (or the pointer) is unreadable or corrupt, the newest checkpoint that loads. A checkpoint of
    another experiment is an error, not a reason to fall back."""
    warn = warn or (lambda message: print(f"genrl: warning: {message}", file=sys.stderr))
    root = directory(run_dir)
    try:
        latest(run_dir)
    except CheckpointError as err:
        pointer_problem = str(err)
    else:
        pointer_problem = None
    problems = [pointer_problem] if pointer_problem else []
    for path in candidates(run_dir):
        try:
            trainable, state = load(path, fingerprint)
        except CheckpointMismatch:
            raise
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warn(f"{'; '.join(problems)}; resuming from {path.name} instead")
        return path, trainable, state
    if pointer_problem and len(problems) == 1:
        raise CheckpointError(pointer_problem)
    raise CheckpointError(f"no usable checkpoint in {root}: " + "; ".join(problems))
