"""Running accelerate's launcher as a child that stops when genrl stops: no orphaned workers.

`genrl train --num-processes N` starts `accelerate launch` (torchrun), which starts N workers,
each in a session of its own. A job scheduler's SIGTERM, or Ctrl-C, reaches only genrl, so genrl
passes it on and waits; torchrun passes it on to every worker once (they finish the update,
checkpoint and exit 143 together, see genrl.stopping).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil  # an accelerate dependency

from genrl import stopping

# Seconds torchrun lets its workers take to finish an update and checkpoint after a signal, before SIGKILL.
WORKER_STOP_TIMEOUT_S = 600


def run_launcher(command: list[str]) -> int:
    """Run the launcher and wait for it; SIGINT / SIGTERM are forwarded to it, and it passes them on to
    every worker once (they finish their update and checkpoint together). A second signal kills the
    launcher and its workers at once: no process outlives this one.

    The launcher gets its own process group, so a terminal's Ctrl-C reaches it only through here,
    and (on Linux) SIGTERM should this process die without forwarding anything (SIGKILL).
    """
    env = dict(os.environ)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(WORKER_STOP_TIMEOUT_S))
    child = subprocess.Popen(command, start_new_session=True, env=env, preexec_fn=_terminate_with_parent())
    received: list[int] = []
    family: list = []

    def forward(signum, frame):
        received.append(signum)
        if len(received) == 1:
            family.extend(_descendants(child.pid))  # workers live in sessions of their own
            _signal_group(child.pid, signum)
        else:
            _kill(child.pid, family + _descendants(child.pid))

    try:
        with stopping.handled(forward):
            returncode = child.wait()
    finally:
        if child.poll() is None:  # this process is stopping for another reason (an exception)
            _kill(child.pid, family + _descendants(child.pid))
            child.wait()
    return stopping.exit_code(received[0]) if received and returncode != 0 else returncode


def _terminate_with_parent():
    """A preexec_fn asking Linux to send the child SIGTERM when this process dies (prctl PR_SET_PDEATHSIG);
    None elsewhere. prctl is looked up here: the function runs between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, signum)


def _kill(pid: int, processes: list) -> None:
    _signal_group(pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(psutil.Error):  # already gone
            process.kill()
