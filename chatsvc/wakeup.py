"""Waking the main thread: a self-pipe, and keeping signals off worker threads."""

from __future__ import annotations

import os
import select
import signal
import threading

# The signals the server acts on; only the main thread may receive them.
PROCESS_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def block_process_signals() -> None:
    """Called first thing in every worker thread: signals then reach the main thread.

    The kernel hands a process-directed signal to any thread that does not block
    it, but Python runs handlers only in the main thread, when it next runs
    Python code.  A signal that lands on a worker does not interrupt whatever
    system call the main thread is sleeping in (a join, say), so its handler
    would wait for that call to end.  Blocking them here makes the main thread
    the only candidate.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)


class WakePipe:
    """``wake()`` may be called from any thread, also after ``close()`` (then it does nothing)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        # wake() never writes to a descriptor number that close() has given back
        # (a new socket could have it by then)
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self.write_fd, b"\0")
            except OSError:
                pass  # full: a wake-up is already pending

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> None:
        """Sleep until woken (or a signal arrives, with set_wakeup_fd) or ``timeout`` passes.

        Unlike a lock or condition wait, this cannot miss a signal that arrives
        just before it starts: the signal's byte is already in the pipe.
        """
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        if poller.poll(max(0.0, timeout) * 1000):
            self.drain()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self.read_fd)
            os.close(self.write_fd)
