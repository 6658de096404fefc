"""Classic daemon mode (python-daemon) with a locked pidfile, for hosts without systemd.

Everything that can fail -- config, listening socket, admin socket, pidfile lock,
log file -- is done by the caller *before* ``detach`` so the error reaches the
terminal with a non-zero exit; ``detach`` runs before any thread is started.
"""

from __future__ import annotations

import fcntl
import os
import signal
from types import TracebackType
from typing import IO, Optional

import daemon

from chatsvc.errors import StartupError


class PidFile:
    """A pidfile held with ``flock`` for the life of the process.

    The lock, not the file's existence, says whether an instance runs: a file
    left by a process that died is unlocked, so it is taken over (stale).
    python-daemon enters it after detaching, which writes the daemon's own pid.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd: Optional[int] = None
        self.stale_pid: Optional[str] = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(f"cannot open pidfile {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(
                f"chatsvc is already running (pid {pid}, pidfile {self.path})"
            ) from None
        self.stale_pid = os.read(fd, 32).decode(errors="replace").strip() or None
        self.fd = fd
        # Empty until the pid that will serve is known (the daemon's, after the forks).
        os.ftruncate(fd, 0)

    def write(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> PidFile:
        self.write()  # now the daemon's pid, after the forks
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()


def open_fds() -> list[int]:
    """Every descriptor this process has open (all ours, before any thread starts)."""
    return [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]


def detach(pidfile: PidFile, log: Optional[IO[str]]) -> daemon.DaemonContext:
    """Fork into the background keeping our descriptors; returns the open context."""
    ctx = daemon.DaemonContext(
        detach_process=True,
        working_directory="/",
        umask=0o022,
        pidfile=pidfile,
        files_preserve=open_fds(),
        stdout=log,
        stderr=log,
        # chatsvc installs its own SIGTERM/SIGINT/SIGHUP handlers after detaching
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    ctx.open()
    return ctx
