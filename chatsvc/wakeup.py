"""Waking the main thread: a self-pipe, and keeping signals off worker threads."""

from __future__ import annotations

import os
import signal

# The signals the server acts on; only the main thread may receive them.
PROCESS_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def block_process_signals() -> None:
    """Called first thing in every worker thread: signals then reach the main thread.

    The kernel hands a process-directed signal to any thread that does not block
    it, but Python runs handlers only in the main thread, and only a main thread
    the signal itself interrupted wakes from a lock wait or join.  When a second
    SIGINT landed on a reader thread, the drain slept on until its grace ran out
    instead of exiting at once.  Blocking them here makes the main thread the
    only candidate.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)


class WakePipe:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass  # full (a wake-up is already pending) or being torn down

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)
