"""The outbound writers: threads that send to, shut down and close client sockets.

Reader threads and admin threads never write to a client socket.  The hub
renders events into a member's outbox under ``Hub.lock`` and puts the member
on its writer's :class:`~chatsvc.hub.Mailbox`; the writer takes the mailbox
with ``Hub.collect`` (the hub takes its own lock), then sends each member's
bytes with one non-blocking ``send`` outside any lock.  What the kernel does
not take waits in the connection's :class:`Link` and the socket is watched
with epoll until it is writable again.  A client that stops reading
therefore costs the others nothing, and its backlog is bounded by
``send_queue_bytes`` (checked by the hub at enqueue time).

Closing is also done here, so that a file descriptor is never closed while this
thread may still send to it (which could hit a new connection reusing the
number):

* a close: the hub began closing a member.  With ``flush`` its queue is
  delivered first (bounded by ``flush_timeout``), then the socket is shut for
  writing so the client sees EOF; the reader keeps discarding input until the
  client closes or ``linger`` passes, then the read side is shut too, which
  wakes the reader thread.  Without ``flush`` both sides are shut at once.
* a retirement: the reader thread has ended; the socket is closed here, once
  what is queued is delivered (with ``flush``) or at once.

A :class:`Link` belongs to its writer thread alone; the only other thread that
touches its socket is the member's reader, which only receives (and, over TLS,
sends its part of the handshake before the writer has anything to send).

TLS links (``Link.tls``, a :class:`~chatsvc.tls.TlsChannel`) keep plaintext in
``wbuf`` as plain links do and encrypt lazily: one chunk of at most one record
(16 KiB) is encrypted only when no ciphertext is pending (``cbuf``), so a slow
TLS client holds at most ``send_queue_bytes`` of plaintext plus about one
record.  The hub's queue accounting is in plaintext bytes, reported when a
chunk is encrypted.  A flushing close sends close_notify before ``SHUT_WR``.
A member whose reader left ciphertext behind (an alert, a key-update reply) is
scheduled with nothing to send (``Hub.poke``) and the writer sends it.

Link states (``Link.state``)::

    OPEN --close(flush)--> FLUSHING --queue sent--> LINGERING --linger over--> SHUT
      |                        |                        |  (reader gone)        |
      +--close(no flush)-------+--flush_timeout---------+----------> SHUT       |
                                                                    retire --> DONE
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Optional

from chatsvc.hub import Hub, Member
from chatsvc.tls import RECORD, TlsChannel
from chatsvc.wakeup import WakePipe, block_process_signals

_SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)

# Link.state values
OPEN, FLUSHING, LINGERING, SHUT, DONE = range(5)


class Link:
    """A member's socket as its writer thread sees it.  Writer thread only."""

    __slots__ = ("cbuf", "deadline", "gone", "polled", "sock", "state", "tls", "wbuf")

    def __init__(self, sock: socket.socket, tls: Optional[TlsChannel] = None) -> None:
        self.sock = sock
        self.wbuf = b""  # taken from the outbox, not yet accepted by the kernel (plaintext)
        self.tls = tls  # None: a plain connection
        self.cbuf = b""  # TLS only: ciphertext not yet accepted by the kernel
        self.state = OPEN
        self.deadline = 0.0  # FLUSHING or LINGERING ends here
        self.polled = False  # registered with epoll for EPOLLOUT
        self.gone = False  # its reader has ended; close once the queue is delivered


def link_of(m: Member) -> Link:
    link: Link = m.link
    return link


class OutboundWriter:
    def __init__(
        self,
        hub: Hub,
        *,
        linger: float = 2.0,
        flush_timeout: float = 10.0,
        name: str = "chatsvc-writer",
    ) -> None:
        self.hub = hub
        self.name = name
        self.linger = linger
        self.flush_timeout = flush_timeout
        self._wake = WakePipe()
        self.mailbox = hub.new_mailbox(self._wake.wake)
        # this thread only
        self._ep = select.epoll()
        self._ep.register(self._wake.read_fd, select.EPOLLIN)
        self._by_fd: dict[int, Member] = {}  # polled for EPOLLOUT
        self._timed: dict[Member, None] = {}  # FLUSHING or LINGERING, with a deadline
        self._thread: Optional[threading.Thread] = None

    # --- called by other threads ---------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.hub.stop_writer(self.mailbox)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the writer thread ---------------------------------------------------------

    def run(self) -> None:
        block_process_signals()
        try:
            while self.step(self._timeout()):
                pass
        finally:
            self._close_all()

    def step(self, timeout: float) -> bool:
        """Wait up to ``timeout`` (-1: no limit) for work, do it; False once stopped."""
        ready: list[Member] = []
        for fd, _ in self._ep.poll(timeout):
            if fd == self._wake.read_fd:
                self._wake.drain()
            else:
                m = self._by_fd.get(fd)
                if m is not None:
                    ready.append(m)
        batch = self.hub.collect(self.mailbox)
        done: list[tuple[Member, int]] = []  # (member, bytes sent or dropped)
        closing = {m for m, _ in batch.closes} if batch.closes else None
        other: list[Member] = []  # what the fast path below does not cover
        for m, data in batch.sends:
            k: Link = m.link
            if (
                k.wbuf
                or k.polled
                or k.tls is not None
                or k.state != OPEN
                or not data  # empty: a TLS link has ciphertext of its own to send (Hub.poke)
                or (closing is not None and m in closing)
            ):
                if data:
                    k.wbuf = k.wbuf + data if k.wbuf else data
                other.append(m)
                continue
            # The common case, a fan-out to members who keep up: an open plain link
            # with nothing pending gets its bytes in one send, nothing copied.
            try:
                n = k.sock.send(data, _SEND_FLAGS)
            except BlockingIOError:
                n = 0
            except OSError:
                k.wbuf = data
                self._send_failed(m, k, done)
                continue
            if n:
                done.append((m, n))
            if n != len(data):
                k.wbuf = data[n:]
                k.polled = True
                fd = k.sock.fileno()
                self._by_fd[fd] = m
                self._ep.register(fd, select.EPOLLOUT)
        for m, flush in batch.closes:
            if link_of(m).state < SHUT:
                self._start_close(m, flush, done)
        for m in ready:
            self._send(m, done)
        for m in other:
            k = link_of(m)
            if (k.wbuf or k.tls is not None) and not k.polled:
                self._send(m, done)
            elif k.gone and not k.wbuf and not k.cbuf and k.state == FLUSHING:
                self._close(m)
        self._check_timed(done)
        for m, flush in batch.retires:
            self._retire(m, flush, done)
        if done:
            self.hub.sent(done)
        return not batch.stop

    def _timeout(self) -> float:
        if not self._timed:
            return -1
        soonest = min(link_of(m).deadline for m in self._timed)
        return max(0.0, min(1.0, soonest - time.monotonic()))

    def _send(self, m: Member, done: list[tuple[Member, int]]) -> None:
        k = link_of(m)
        if k.tls is not None:
            self._send_tls(m, k, k.tls, done)
            return
        if not k.wbuf:
            return
        if k.state >= LINGERING:
            # Queued after the final line (a reply the reader was still making):
            # the socket is shut for writing, a send would only end the linger.
            done.append((m, len(k.wbuf)))
            k.wbuf = b""
            return
        try:
            n = k.sock.send(k.wbuf, _SEND_FLAGS)
        except BlockingIOError:
            n = 0
        except OSError:
            self._send_failed(m, k, done)
            return
        if n:
            done.append((m, n))
        if n == len(k.wbuf):
            k.wbuf = b""
            self._unpoll(m)
            if k.state == FLUSHING:
                self._shut_for_writing(m)
        else:
            k.wbuf = k.wbuf[n:]
            if not k.polled:
                k.polled = True
                self._by_fd[k.sock.fileno()] = m
                self._ep.register(k.sock.fileno(), select.EPOLLOUT)

    def _send_tls(self, m: Member, k: Link, ch: TlsChannel, done: list[tuple[Member, int]]) -> None:
        """Encrypt a record at a time, only once the previous one is sent."""
        if k.state >= LINGERING:
            if k.wbuf:
                done.append((m, len(k.wbuf)))
                k.wbuf = b""
            k.cbuf = b""
            return
        if not ch.established:
            # Still handshaking (its reader sends that): nothing can be sent yet,
            # and a close need not wait for it.
            if k.state == FLUSHING:
                if k.wbuf:
                    done.append((m, len(k.wbuf)))
                    k.wbuf = b""
                self._shut_for_writing(m)
            return
        while True:
            if not k.cbuf:
                k.cbuf = ch.take_out()  # alerts, key-update replies
            if not k.cbuf and k.wbuf:
                chunk = k.wbuf[:RECORD]
                k.wbuf = k.wbuf[RECORD:]
                done.append((m, len(chunk)))  # the queue bound counts plaintext
                try:
                    k.cbuf = ch.encrypt(chunk)
                except Exception:  # a broken TLS state: treat it like a reset
                    k.cbuf = b""
                    self._send_failed(m, k, done)
                    return
            if not k.cbuf:
                break
            try:
                n = k.sock.send(k.cbuf, _SEND_FLAGS)
            except BlockingIOError:
                n = 0
            except OSError:
                k.cbuf = b""
                self._send_failed(m, k, done)
                return
            k.cbuf = k.cbuf[n:]
            if k.cbuf:
                break  # the kernel is full
        if k.cbuf or k.wbuf:
            if not k.polled:
                k.polled = True
                self._by_fd[k.sock.fileno()] = m
                self._ep.register(k.sock.fileno(), select.EPOLLOUT)
            return
        self._unpoll(m)
        if k.state == FLUSHING:
            self._shut_for_writing(m)

    def _send_failed(self, m: Member, k: Link, done: list[tuple[Member, int]]) -> None:
        """The peer is gone; its reader will notice.  Drop what cannot be sent."""
        if k.wbuf:
            done.append((m, len(k.wbuf)))
            k.wbuf = b""
        self._unpoll(m)
        _shutdown(k, socket.SHUT_RDWR)
        if k.gone:  # nobody left to wait for: free the descriptor now
            self._close(m)

    def _unpoll(self, m: Member) -> None:
        k = link_of(m)
        if k.polled:
            k.polled = False
            fd = k.sock.fileno()
            self._by_fd.pop(fd, None)
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def _start_close(self, m: Member, flush: bool, done: list[tuple[Member, int]]) -> None:
        k = link_of(m)
        if flush:
            k.state = FLUSHING
            k.deadline = time.monotonic() + self.flush_timeout
            self._timed[m] = None
            if k.wbuf or k.cbuf:
                self._send(m, done)
            if not k.wbuf and not k.cbuf and k.state == FLUSHING:
                self._shut_for_writing(m)
        else:
            if k.wbuf:
                done.append((m, len(k.wbuf)))
                k.wbuf = b""
            k.cbuf = b""
            self._unpoll(m)
            self._timed.pop(m, None)
            k.state = SHUT
            _shutdown(k, socket.SHUT_RDWR)

    def _shut_for_writing(self, m: Member) -> None:
        """Queue delivered: send EOF, then give the client ``linger`` to close."""
        k = link_of(m)
        if k.tls is not None:
            _close_notify(k, k.tls)
        if k.gone:  # the reader already saw the client's EOF: nothing to wait for
            self._close(m)
            return
        _shutdown(k, socket.SHUT_WR)
        k.state = LINGERING
        k.deadline = time.monotonic() + self.linger
        self._timed[m] = None

    def _check_timed(self, done: list[tuple[Member, int]]) -> None:
        if not self._timed:
            return
        now = time.monotonic()
        for m in [m for m in self._timed if link_of(m).deadline <= now]:
            del self._timed[m]
            k = link_of(m)
            if k.state == FLUSHING:  # could not deliver in time: give up on the rest
                if k.wbuf:
                    done.append((m, len(k.wbuf)))
                    k.wbuf = b""
                k.cbuf = b""
                self._unpoll(m)
            k.state = SHUT
            _shutdown(k, socket.SHUT_RDWR)
            if k.gone:
                self._close(m)

    def _retire(self, m: Member, flush: bool, done: list[tuple[Member, int]]) -> None:
        """The reader has ended.  Close now, or once what is queued is delivered."""
        k = link_of(m)
        if flush and k.state in (OPEN, FLUSHING) and (k.wbuf or k.cbuf):
            k.gone = True
            if k.state == OPEN:
                k.state = FLUSHING
                k.deadline = time.monotonic() + self.flush_timeout
                self._timed[m] = None
            return
        if k.wbuf:
            done.append((m, len(k.wbuf)))  # never sent: out of the queue count
        self._close(m)

    def _close(self, m: Member) -> None:
        k = link_of(m)
        self._unpoll(m)
        self._timed.pop(m, None)
        k.wbuf = k.cbuf = b""
        k.state = DONE
        k.sock.close()

    def _close_all(self) -> None:
        for m in list(self._by_fd.values()) + list(self._timed):
            k = link_of(m)
            if k.state != DONE:
                k.sock.close()
        self._ep.close()
        self._wake.close()


def _close_notify(k: Link, ch: TlsChannel) -> None:
    """Best effort: one non-blocking send of our close_notify before EOF."""
    try:
        alert = ch.close_notify()
        if alert:
            k.sock.send(alert, _SEND_FLAGS)
    except Exception:  # a full buffer, a gone peer, a broken TLS state: EOF follows anyway
        pass


def _shutdown(k: Link, how: int) -> None:
    try:
        k.sock.shutdown(how)
    except OSError:
        pass  # already reset or closed by the peer: nothing left to shut
