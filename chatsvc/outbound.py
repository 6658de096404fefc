"""The outbound writer: one thread that sends to, shuts down and closes client sockets.

Reader threads and admin threads never write to a client socket.  They append
ready-encoded lines to a member's outbox under ``Hub.lock`` and put the member
on ``OutboundWriter.dirty``; this thread takes the outboxes (under the lock),
joins each into a single buffer and sends it with a non-blocking ``send``
outside the lock.  What the kernel does not take waits in the connection's
``wbuf`` and the socket is watched with epoll until it is writable again.  A
client that stops reading therefore costs the others nothing, and its backlog
is bounded by ``send_queue_bytes`` (checked by the hub at enqueue time).

Closing is also done here, so that a file descriptor is never closed while this
thread may still send to it (which could hit a new connection reusing the
number):

* ``closing``: the hub began closing a member.  With ``close_flush`` its queue
  is delivered first (bounded by ``flush_timeout``), then the socket is shut for
  writing so the client sees EOF; the reader keeps discarding input until the
  client closes or ``linger`` passes, then the read side is shut too, which
  wakes the reader thread.  Without ``close_flush`` both sides are shut at once.
* ``retired``: the reader thread has ended; the socket is closed here.

Fields: ``dirty``, ``closing``, ``retired`` and ``pending`` are guarded by
``Hub.lock``; ``wbuf``, ``wstate``, ``deadline`` and ``polled`` of a connection
belong to this thread alone.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Optional, cast

from chatsvc.hub import Member
from chatsvc.wakeup import WakePipe, block_process_signals

_SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)

# wstate values
OPEN, FLUSHING, LINGERING, SHUT, DONE = range(5)


class Conn(Member):
    """A member with a socket, plus the writer's private per-connection state."""

    __slots__ = ("deadline", "gone", "polled", "sock", "wbuf", "wstate")

    def __init__(self, sock: socket.socket, addr: str, port: int) -> None:
        super().__init__(addr, port)
        self.sock = sock
        self.wbuf = b""
        self.wstate = OPEN
        self.deadline = 0.0
        self.polled = False
        self.gone = False  # its reader has ended; close once the queue is delivered


class OutboundWriter:
    def __init__(
        self,
        lock: threading.Lock,
        *,
        linger: float = 2.0,
        flush_timeout: float = 10.0,
        name: str = "chatsvc-writer",
    ) -> None:
        self.lock = lock
        self.name = name
        self.linger = linger
        self.flush_timeout = flush_timeout
        # guarded by lock
        self.dirty: list[Member] = []
        self.closing: list[Member] = []
        self.retired: list[Member] = []
        self.pending = False
        self._stop = False
        # this thread only
        self._ep = select.epoll()
        self._wake = WakePipe()
        self._ep.register(self._wake.read_fd, select.EPOLLIN)
        self._by_fd: dict[int, Conn] = {}
        self._timed: dict[Conn, None] = {}  # FLUSHING or LINGERING, with a deadline
        self._thread: Optional[threading.Thread] = None

    # --- called by other threads ---------------------------------------------------

    def claim_wake(self) -> bool:
        """Lock held: True if the caller must call ``wake`` after releasing it."""
        if not self.pending and (self.dirty or self.closing or self.retired):
            self.pending = True
            return True
        return False

    def wake(self) -> None:
        self._wake.wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.lock:
            self._stop = True
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the writer thread ---------------------------------------------------------

    def run(self) -> None:
        block_process_signals()
        try:
            while self._step():
                pass
        finally:
            self._close_all()

    def _step(self) -> bool:
        events = self._ep.poll(self._timeout())
        ready: list[Conn] = []
        for fd, _ in events:
            if fd == self._wake.read_fd:
                self._wake.drain()
            else:
                c = self._by_fd.get(fd)
                if c is not None:
                    ready.append(c)
        with self.lock:
            self.pending = False
            dirty, self.dirty = self.dirty, []
            closing, self.closing = self.closing, []
            retired, self.retired = self.retired, []
            for c in _conns(dirty):
                c.dirty = False
                if c.out:
                    data = b"".join(c.out) if len(c.out) > 1 else c.out[0]
                    c.out = []
                    c.wbuf = c.wbuf + data if c.wbuf else data
            stop = self._stop
        done: list[tuple[Conn, int]] = []  # (conn, bytes sent or dropped)
        for c in _conns(closing):
            if c.wstate < SHUT:
                self._start_close(c, done)
        for c in ready:
            self._send(c, done)
        for c in _conns(dirty):
            if c.wbuf and not c.polled:
                self._send(c, done)
            elif c.gone and not c.wbuf and c.wstate == FLUSHING:
                self._close(c)
        self._check_timed(done)
        for c in _conns(retired):
            self._retire(c)
        if done:
            with self.lock:
                for c, n in done:
                    c.queued -= n
        return not stop

    def _timeout(self) -> float:
        if not self._timed:
            return -1
        soonest = min(c.deadline for c in self._timed)
        return max(0.0, min(1.0, soonest - time.monotonic()))

    def _send(self, c: Conn, done: list[tuple[Conn, int]]) -> None:
        if not c.wbuf or c.wstate >= SHUT:
            return
        try:
            n = c.sock.send(c.wbuf, _SEND_FLAGS)
        except BlockingIOError:
            n = 0
        except OSError:
            # The peer is gone; its reader will notice.  Drop what cannot be sent.
            done.append((c, len(c.wbuf)))
            c.wbuf = b""
            self._unpoll(c)
            self._shutdown(c, socket.SHUT_RDWR)
            return
        if n:
            done.append((c, n))
        if n == len(c.wbuf):
            c.wbuf = b""
            self._unpoll(c)
            if c.wstate == FLUSHING:
                self._shut_for_writing(c)
        else:
            c.wbuf = c.wbuf[n:]
            if not c.polled:
                c.polled = True
                self._by_fd[c.sock.fileno()] = c
                self._ep.register(c.sock.fileno(), select.EPOLLOUT)

    def _unpoll(self, c: Conn) -> None:
        if c.polled:
            c.polled = False
            fd = c.sock.fileno()
            self._by_fd.pop(fd, None)
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def _start_close(self, c: Conn, done: list[tuple[Conn, int]]) -> None:
        if c.close_flush:
            c.wstate = FLUSHING
            c.deadline = time.monotonic() + self.flush_timeout
            self._timed[c] = None
            if c.wbuf:
                self._send(c, done)
            if not c.wbuf and c.wstate == FLUSHING and not c.dirty:
                self._shut_for_writing(c)
        else:
            if c.wbuf:
                done.append((c, len(c.wbuf)))
                c.wbuf = b""
            self._unpoll(c)
            self._timed.pop(c, None)
            c.wstate = SHUT
            self._shutdown(c, socket.SHUT_RDWR)

    def _shut_for_writing(self, c: Conn) -> None:
        """Queue delivered: send EOF, then give the client ``linger`` to close."""
        if c.gone:  # the reader already saw the client's EOF: nothing to wait for
            self._close(c)
            return
        self._shutdown(c, socket.SHUT_WR)
        c.wstate = LINGERING
        c.deadline = time.monotonic() + self.linger
        self._timed[c] = None

    def _check_timed(self, done: list[tuple[Conn, int]]) -> None:
        if not self._timed:
            return
        now = time.monotonic()
        for c in [c for c in self._timed if c.deadline <= now]:
            del self._timed[c]
            if c.wstate == FLUSHING:  # could not deliver in time: give up on the rest
                if c.wbuf:
                    done.append((c, len(c.wbuf)))
                    c.wbuf = b""
                self._unpoll(c)
            c.wstate = SHUT
            self._shutdown(c, socket.SHUT_RDWR)
            if c.gone:
                self._close(c)

    @staticmethod
    def _shutdown(c: Conn, how: int) -> None:
        try:
            c.sock.shutdown(how)
        except OSError:
            pass  # already reset or closed by the peer: nothing left to shut

    def _retire(self, c: Conn) -> None:
        """The reader has ended.  Close now, or once what is queued is delivered."""
        if c.close_flush and c.wstate in (OPEN, FLUSHING) and (c.wbuf or c.dirty):
            c.gone = True
            if c.wstate == OPEN:
                c.wstate = FLUSHING
                c.deadline = time.monotonic() + self.flush_timeout
                self._timed[c] = None
            return
        self._close(c)

    def _close(self, c: Conn) -> None:
        self._unpoll(c)
        self._timed.pop(c, None)
        c.wbuf = b""
        c.wstate = DONE
        c.sock.close()

    def _close_all(self) -> None:
        for c in list(self._by_fd.values()) + list(self._timed):
            if c.wstate != DONE:
                c.sock.close()
        self._ep.close()
        self._wake.close()


def _conns(members: list[Member]) -> list[Conn]:
    """The writer's lists hold only ``Conn`` objects (the hub types them as members)."""
    return cast("list[Conn]", members)
