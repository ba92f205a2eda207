"""Stopping on a signal: SIGINT (Ctrl-C) and SIGTERM (what SLURM, Kubernetes and most job
schedulers send before SIGKILL) are handled alike.

During training the first signal lets the update in flight finish; the trainer checkpoints and
the command exits with 128 + the signal's number (130, 143). A second signal abandons the update
in flight at once; the last checkpoint, written atomically, is the one a resume starts from.
Outside training a signal stops the command at once with the same exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A folder named by genrl's launcher (genrl.launch) in which its workers note an agreed stop's signal: a
# launcher whose workers stopped on a signal sent to another machine then exits 128 + that signal too.
STOP_NOTES = "GENRL_STOP_NOTES"


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal; `exit_code` is the shell's convention, 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The training loop's signal handler: the first signal asks to stop after the update in flight
    (the trainer then checkpoints), a second abandons the update at once (`Interrupted`)."""

    def __init__(self):
        self.requested, self.signum = False, None

    def __call__(self, signum: int, frame) -> None:
        if self.requested:  # a second signal: abandon the update in flight, the last checkpoint stays
            raise Interrupted(signum)
        self.requested, self.signum = True, signum

    def agreed(self, dist) -> bool:
        """Whether any process of `dist` was asked to stop (each gets its own signal, at its own moment of
        the update): all then stop after the same update. The signal's number is kept for the exit code."""
        agreed = dist.max(int(self.signum or (SIGNALS[0] if self.requested else 0)))
        if agreed:
            self.requested, self.signum = True, agreed
            note_for_launcher(agreed)
        return bool(agreed)


def note_for_launcher(signum: int) -> None:
    """Leave `signum` where genrl's launcher looks (nothing when started otherwise)."""
    folder = os.environ.get(STOP_NOTES)
    if folder and os.path.isdir(folder):
        with contextlib.suppress(OSError):  # a lost note costs only the exit code
            with open(os.path.join(folder, str(os.getpid())), "w") as note:
                note.write(str(int(signum)))


def read_notes(folder: str) -> int | None:
    """The signal noted by the workers in `folder`, None if none was."""
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(folder, name)) as note:
                    return int(note.read())
    return None


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def install(handler: Callable, signals: tuple = SIGNALS) -> dict:
    """Set `handler` for `signals`; returns the previous handlers, for `restore`. Python runs signal
    handlers in the main thread only: elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in signals}


def restore(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


@contextlib.contextmanager
def handled(handler: Callable, signals: tuple = SIGNALS) -> Iterator[None]:
    """`handler` for `signals` inside the block, the previous handlers after it."""
    previous = install(handler, signals)
    try:
        yield
    finally:
        restore(previous)


def exit_code(signum: int | None) -> int:
    return 128 + int(signum or signal.SIGINT)


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum or signal.SIGINT).name
