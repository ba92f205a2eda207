"""Running accelerate's launcher as a child that stops when genrl stops: no orphaned workers.

`genrl train --num-processes N` starts `accelerate launch` (torchrun), which starts N workers,
each in a session of its own. A job scheduler's SIGTERM, or Ctrl-C, reaches only genrl, so genrl
passes it on and waits; torchrun passes it on to every worker once (they finish the update,
checkpoint and exit 143 together, see genrl.stopping).

Several machines (`--num-machines M --machine-rank R --main-process-ip IP --main-process-port P`): one
such launcher per machine, passed through to accelerate's flags of the same names. `--num-processes`
is the total over all machines, as in accelerate. The workers agree on a stop over the network, so a
signal to one machine stops them all; each worker leaves the signal's number in a folder its launcher
names (STOP_NOTES), so every machine's `genrl` exits 128 + that number, not only the one signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import psutil  # an accelerate dependency

from genrl import stopping
from genrl.errors import ConfigError

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
    notes = env[stopping.STOP_NOTES] = tempfile.mkdtemp(prefix="genrl-stop-")
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
        agreed = stopping.read_notes(notes)  # the workers stopped on a signal, maybe one sent to another machine
        shutil.rmtree(notes, ignore_errors=True)
    if returncode != 0 and (received or agreed):
        return stopping.exit_code(received[0] if received else agreed)
    return returncode


@dataclass(frozen=True)
class Machines:
    """Where this launcher stands among the machines of one run: accelerate's multi-node options."""

    count: int = 1
    rank: int = 0
    main_ip: str | None = None
    main_port: int | None = None

    @classmethod
    def from_args(cls, args) -> "Machines":
        """The options checked (one line each, before anything runs or is written)."""
        count, rank, ip, port = args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port
        if count < 1:
            raise ConfigError(f"--num-machines {count} is not allowed: give 1 (this machine) or more")
        if not 0 <= rank < count:
            raise ConfigError(f"--machine-rank {rank} is out of range for --num-machines {count}: give 0 (the machine "
                              f"of the main process){f' to {count - 1}' if count > 1 else ''}")
        if count > 1 and not ip:
            raise ConfigError(f"--num-machines {count} needs --main-process-ip: the address of machine 0 (where the main "
                              "process listens), the same on every machine")
        lowest = 1 if count > 1 else 0  # 0 asks accelerate for a free port: each machine would pick its own
        if port is not None and not lowest <= port <= 65535:
            raise ConfigError(f"--main-process-port {port} is out of range: give a port from {lowest} to 65535"
                              + (", the same on every machine" if count > 1 else ""))
        return cls(count, rank, ip, port)

    @property
    def writes_here(self) -> bool:
        """Whether the run's main process (rank 0, the run directory's one writer) runs on this machine."""
        return self.rank == 0

    def check_processes(self, total: int) -> None:
        if self.count > 1 and (total < self.count or total % self.count):
            raise ConfigError(f"--num-processes {total} is the total over all machines (as accelerate's --num_processes) "
                              f"and must be a multiple of --num-machines {self.count}: e.g. {2 * self.count} for 2 per machine")

    def check_port_free(self) -> None:
        """On machine 0 of several, a port in use: one line here, not accelerate's traceback."""
        from accelerate.utils import is_port_in_use

        if self.count > 1 and self.rank == 0 and is_port_in_use(self.main_port or 29500):
            raise ConfigError(f"--main-process-port {self.main_port or 29500} is in use on this machine (machine 0): "
                              "choose a free port and give the same one to every machine")

    def accelerate_flags(self) -> list[str]:
        """accelerate launch's options for these machines (none on one machine, but a port given)."""
        flags = ["--num_machines", str(self.count), "--machine_rank", str(self.rank)] if self.count > 1 else []
        if self.main_ip:
            flags += ["--main_process_ip", self.main_ip]
        if self.main_port is not None:
            flags += ["--main_process_port", str(self.main_port)]
        return flags


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
