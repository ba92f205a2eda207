"""Errors a user can fix: one family, so the CLI can tell them from bugs.

`genrl` prints a `UserError` as one line naming the key, file or value at fault and exits with
status 2; any other exception (a RuntimeError, a KeyError, CUDA running out of memory) is a bug
or an environment problem and keeps its traceback. `GENRL_DEBUG=1` shows the traceback of a
`UserError` too.

Each subclass also derives from the built-in exception it replaced (ValueError, RuntimeError),
so `except ValueError` around `config.load` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave (config, prompts, files, checkpoints); the message says what to change."""


class ConfigError(UserError, ValueError):
    """A configuration key, option or command-line argument that cannot be used; the message names the key."""


class PromptError(UserError, ValueError):
    """A prompt or prompt set that cannot be used (outside the ShapeWorld grammar, missing, empty)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or run directory that is missing, incomplete or does not fit this run."""


class RunNotFoundError(CheckpointError, FileNotFoundError):
    """A path that is neither a run directory nor a checkpoint directory."""


class ModelError(UserError, ValueError):
    """Model files or weights that cannot be read or do not fit the model they are loaded into."""


class RunDirError(UserError, ValueError, OSError):
    """A run directory a run may not use (not writable, or holding another run); the message says what to do."""


class TrainingStopped(UserError, RuntimeError):
    """The run stopped itself (e.g. too many non-finite updates); its checkpoint and metrics are kept."""


class RewardError(UserError, ValueError):
    """A reward that returned something unusable (wrong shape, NaN or inf), or whose weights cannot be read."""


__all__ = ["CheckpointError", "ConfigError", "ModelError", "PromptError", "RewardError", "RunDirError", "RunNotFoundError",
           "TrainingStopped", "UserError"]
