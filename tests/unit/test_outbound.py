"""The writer's Link states, one step at a time, over socketpairs.

Each member's socket is one end of a ``socketpair``; the test holds the other
end (the client).  ``OutboundWriter.step`` runs one iteration of the writer
loop, so the test thread plays the writer thread and may look inside each
``Link``.  Where a test checks a state between two deadlines, the writer's
clock is a fake one that only the test moves; the tests at the end run the
real writer thread with real, short timeouts and look only at what a client
and the reader thread would see.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple

import pytest

import chatsvc.outbound
from chatsvc import config, events
from chatsvc.dialects import LINE
from chatsvc.hub import Hub, Member
from chatsvc.outbound import DONE, FLUSHING, LINGERING, OPEN, SHUT, Link, OutboundWriter

WAIT = 10.0  # bound on any wait (generous for a loaded machine); normally milliseconds
LINGER = 0.05
FLUSH = 0.05
SMALL_SNDBUF = 4096  # the kernel makes it ~8 KiB: a BIG line never fits at once
BIG = 200_000
QUEUE_CAP = 1 << 20  # room for a BIG line without the hub cutting the member


class FakeClock:
    """Stands in for the ``time`` module inside chatsvc.outbound."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingSocket(socket.socket):
    """The member's end of the pair; counts the writer's sends and their errors."""

    sends = 0
    errors: tuple[OSError, ...] = ()

    def send(self, data: Any, flags: int = 0) -> int:
        self.sends += 1
        try:
            return super().send(data, flags)
        except OSError as exc:
            self.errors += (exc,)
            raise


class Client:
    """The test's end of a member's socketpair; every read has a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def available(self) -> bytes:
        """Whatever has arrived, without waiting (b"" if nothing or at EOF)."""
        out = b""
        self.sock.settimeout(0)  # (with a timeout set, Python would wait despite DONTWAIT)
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out
            if not data:
                return out
            out += data

    def read(self, n: int, timeout: float = WAIT) -> bytes:
        """Exactly ``n`` bytes (fails on EOF or timeout)."""
        deadline = time.monotonic() + timeout
        out = b""
        while len(out) < n:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = self.sock.recv(n - len(out))
            except socket.timeout:
                raise AssertionError(f"wanted {n} bytes, got {len(out)}: {out[:80]!r}") from None
            assert data, f"EOF after {len(out)} of {n} bytes: {out[:80]!r}"
            out += data
        return out

    def line(self, text: str) -> None:
        """The next bytes are ``text`` and a newline."""
        want = text.encode() + b"\n"
        assert self.read(len(want)) == want

    def until_eof(self, timeout: float = WAIT) -> bytes:
        """Everything up to EOF (fails if EOF does not come in time)."""
        deadline = time.monotonic() + timeout
        out = b""
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"no EOF in time; got {len(out)} bytes") from None
            if not data:
                return out
            out += data


class Conn(NamedTuple):
    member: Member
    link: Link
    sock: CountingSocket  # the member's end: the writer sends on it, the reader reads it
    client: Client


def read_side_shut(sock: socket.socket) -> bool:
    """True once a recv on the member's socket ends (EOF or reset): its reader would end.

    The clients in these tests send nothing, so a recv that does not block means
    the writer shut the socket (or the client reset it).
    """
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def unsent(hub: Hub, c: Conn) -> int:
    """Bytes the hub still counts against the member's queue."""
    with hub.lock:
        return c.member.queued


def assert_accounting(hub: Hub, c: Conn) -> None:
    """``queued`` is what sits in the outbox plus what the writer holds unsent."""
    with hub.lock:
        held = sum(map(len, c.member.outbox)) + len(c.link.wbuf)
        assert c.member.queued == held


def step_until(w: OutboundWriter, cond: Callable[[], bool], what: str) -> None:
    """Run writer steps until ``cond`` holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        w.step(0.01)


def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` while a writer thread runs; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def pump(w: OutboundWriter, c: Conn, n: int) -> bytes:
    """Play a client that reads again: collect ``n`` bytes while the writer steps."""
    got = b""

    def enough() -> bool:
        nonlocal got
        got += c.client.available()
        return len(got) >= n

    step_until(w, enough, f"{n} bytes delivered")
    return got


def big_line() -> bytes:
    return LINE.render(events.Announcement("x" * BIG))


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def hub() -> Hub:
    return Hub(config.with_overrides(config.Config(), limits={"send_queue_bytes": QUEUE_CAP}))


@pytest.fixture
def writer(hub: Hub) -> Iterator[OutboundWriter]:
    w = OutboundWriter(hub, linger=LINGER, flush_timeout=FLUSH, name="test-writer")
    yield w
    w.stop()
    w._close_all()  # the epoll and the wake pipe (a no-op if the thread already did it)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(chatsvc.outbound, "time", fake)
    return fake


@pytest.fixture
def connect(hub: Hub, writer: OutboundWriter) -> Iterator[Callable[..., Conn]]:
    """Log in a member whose socket is one end of a socketpair."""
    socks: list[socket.socket] = []

    def make(name: str, sndbuf: int = 0) -> Conn:
        raw, theirs = socket.socketpair()
        ours = CountingSocket(raw.family, raw.type, 0, fileno=raw.detach())
        socks.extend((ours, theirs))
        if sndbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        link = Link(ours)
        m = Member("127.0.0.1", 40000 + len(socks), LINE, link)
        assert hub.add(m) is None
        assert hub.login(m, name) is None
        return Conn(m, link, ours, Client(theirs))

    yield make
    writer.stop()  # no writer thread may still hold a socket we close
    for s in socks:
        s.close()


def greeted(w: OutboundWriter, c: Conn) -> None:
    """Deliver the login greeting and read it, so tests start from an empty queue."""
    w.step(0)
    c.client.line(f"* hello {c.member.name}, you are in lobby")
    c.sock.sends = 0


def partly_sent(hub: Hub, w: OutboundWriter, c: Conn) -> bytes:
    """Queue a BIG line for a client that does not read: the kernel takes only part."""
    line = big_line()
    hub.tell(c.member, events.Announcement("x" * BIG))
    w.step(0)
    assert 0 < len(c.link.wbuf) < len(line)
    assert c.link.polled
    assert_accounting(hub, c)
    return line


# --- OPEN: sending ---------------------------------------------------------------------


def test_open_link_sends_one_line_with_one_send(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    assert c.link.state == OPEN
    assert writer.step(0) is True
    assert c.sock.sends == 1
    c.client.line("* hello alice, you are in lobby")
    assert c.link.wbuf == b"" and not c.link.polled
    assert unsent(hub, c) == 0
    assert c.link.state == OPEN


def test_open_link_sends_all_queued_lines_in_one_send_in_order(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    hub.tell(c.member, events.Announcement("one"), events.Announcement("two"))
    assert hub.say(c.member, "three") == "lobby"
    writer.step(0)
    assert c.sock.sends == 1
    c.client.line("* hello alice, you are in lobby")
    c.client.line("* one")
    c.client.line("* two")
    c.client.line("[lobby] alice: three")
    assert unsent(hub, c) == 0
    writer.step(0)  # nothing queued: no send at all
    assert c.sock.sends == 1


def test_each_member_gets_its_own_lines_and_a_stalled_one_holds_up_nobody(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    slow = connect("slow", sndbuf=SMALL_SNDBUF)
    fast = connect("fast")
    greeted(writer, slow)
    slow.client.line("* fast joined lobby")
    fast.client.line("* hello fast, you are in lobby")
    partly_sent(hub, writer, slow)
    assert hub.say(fast.member, "hi") == "lobby"
    writer.step(0)
    fast.client.line("[lobby] fast: hi")
    assert unsent(hub, fast) == 0
    assert slow.link.polled
    assert_accounting(hub, slow)


def test_peer_that_does_not_read_keeps_the_rest_in_wbuf_until_it_reads_again(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    assert writer._by_fd[c.sock.fileno()] is c.member  # watched for EPOLLOUT
    assert c.sock.sends == 1
    # More lines while the socket is full: appended behind, not sent on their own.
    hub.tell(c.member, events.Announcement("after"))
    writer.step(0.05)  # the socket is not writable: this step sends nothing
    assert c.sock.sends == 1
    assert c.link.wbuf.endswith(b"* after\n")
    assert_accounting(hub, c)
    with hub.lock:
        assert c.member.outbox == []
    # The client reads again: EPOLLOUT resumes the sends until all is out, in order.
    got = pump(writer, c, len(line) + len(b"* after\n"))
    assert got == line + b"* after\n"
    assert c.link.wbuf == b"" and not c.link.polled
    assert c.sock.fileno() not in writer._by_fd
    assert unsent(hub, c) == 0
    assert c.link.state == OPEN


# --- closing -----------------------------------------------------------------------------


def test_close_with_flush_delivers_then_shuts_for_writing_then_lingers(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    assert hub.close(c.member, "bye", events.Goodbye()) is True
    writer.step(0)
    assert c.link.state == FLUSHING
    assert c.link.deadline == clock.now + FLUSH
    assert_accounting(hub, c)
    assert not read_side_shut(c.sock)
    # The client reads: the queue and the final line arrive, then EOF.
    got = pump(writer, c, len(line) + len(b"* goodbye\n"))
    assert got == line + b"* goodbye\n"
    assert c.link.state == LINGERING
    assert c.link.deadline == clock.now + LINGER
    assert c.client.until_eof() == b""
    assert unsent(hub, c) == 0
    # While lingering the reader keeps reading (discarding): the read side stays open.
    writer.step(0)
    assert c.link.state == LINGERING
    assert not read_side_shut(c.sock)
    clock.advance(LINGER / 2)
    writer.step(0)
    assert c.link.state == LINGERING
    clock.advance(LINGER)
    writer.step(0)
    assert c.link.state == SHUT
    assert read_side_shut(c.sock)  # wakes the reader thread
    assert c.sock.fileno() != -1  # only a retirement closes the descriptor
    assert hub.remove(c.member, "eof") == "bye"
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1


def test_close_with_flush_and_a_short_queue_lingers_after_one_step(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice")
    greeted(writer, c)
    hub.tell(c.member, events.Announcement("last words"))
    hub.close(c.member, "bye", events.Goodbye())
    writer.step(0)
    assert c.sock.sends == 1
    assert c.link.state == LINGERING
    assert c.client.until_eof() == b"* last words\n* goodbye\n"
    assert unsent(hub, c) == 0


def test_close_without_flush_shuts_at_once_and_drops_the_queue(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    hub.tell(c.member, events.Announcement("still in the outbox"))
    assert unsent(hub, c) > len(c.link.wbuf)
    assert hub.close(c.member, "send_queue_exceeded", None, flush=False) is True
    writer.step(0)
    assert c.link.state == SHUT
    assert c.link.wbuf == b"" and not c.link.polled
    assert c.member not in writer._timed
    assert unsent(hub, c) == 0
    assert read_side_shut(c.sock)
    got = c.client.until_eof()  # what the kernel had taken, then EOF
    assert line.startswith(got) and len(got) < len(line)


def test_flush_timeout_with_a_peer_that_never_reads_gives_up(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    hub.close(c.member, "idle", events.error("idle_timeout", seconds=1))
    writer.step(0)
    assert c.link.state == FLUSHING
    clock.advance(FLUSH / 2)
    writer.step(0)
    assert c.link.state == FLUSHING
    assert_accounting(hub, c)
    clock.advance(FLUSH)
    writer.step(0)
    assert c.link.state == SHUT
    assert c.link.wbuf == b"" and not c.link.polled
    assert c.member not in writer._timed
    assert unsent(hub, c) == 0
    assert read_side_shut(c.sock)
    got = c.client.until_eof()
    assert line.startswith(got) and len(got) < len(line)


# --- retirement: the reader thread has ended --------------------------------------------


def test_retire_after_eof_delivers_what_is_queued_then_closes(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    assert hub.remove(c.member, "eof") == "eof"
    writer.step(0)
    assert c.link.state == FLUSHING and c.link.gone
    assert c.link.deadline == clock.now + FLUSH
    assert c.sock.fileno() != -1
    got = pump(writer, c, len(line))
    assert got == line
    assert c.link.state == DONE
    assert c.sock.fileno() == -1
    assert c.client.until_eof() == b""
    assert unsent(hub, c) == 0


def test_retire_after_eof_with_only_an_outbox_closes_in_the_same_step(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    greeted(writer, c)
    hub.tell(c.member, events.Announcement("queued before the client's EOF"))
    hub.remove(c.member, "eof")
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1
    assert c.client.until_eof() == b"* queued before the client's EOF\n"
    assert unsent(hub, c) == 0


def test_retire_after_eof_gives_up_after_the_flush_timeout(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    hub.remove(c.member, "eof")
    writer.step(0)
    assert c.link.state == FLUSHING
    clock.advance(FLUSH * 2)
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1
    assert not writer._by_fd and not writer._timed
    assert unsent(hub, c) == 0
    got = c.client.until_eof()
    assert line.startswith(got) and len(got) < len(line)


def test_retire_without_flush_closes_at_once(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    greeted(writer, c)
    hub.tell(c.member, events.Announcement("never sent"))
    assert hub.remove(c.member, "error") == "error"
    assert unsent(hub, c) == 0  # the hub dropped the outbox
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1
    assert c.client.until_eof() == b""


def test_retire_without_flush_closes_at_once_despite_unsent_bytes(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    line = partly_sent(hub, writer, c)
    hub.remove(c.member, "error")
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1
    assert not writer._by_fd and not writer._timed
    got = c.client.until_eof()
    assert line.startswith(got) and len(got) < len(line)


def test_retire_without_flush_gives_the_dropped_bytes_back_to_queued(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    partly_sent(hub, writer, c)
    hub.remove(c.member, "error")
    writer.step(0)
    assert c.link.state == DONE
    assert_accounting(hub, c)  # nothing held, so nothing queued


def test_retire_of_a_lingering_link_closes_it_without_waiting(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice")
    greeted(writer, c)
    hub.close(c.member, "bye", events.Goodbye())
    writer.step(0)
    assert c.link.state == LINGERING
    hub.remove(c.member, "eof")  # the client closed during the linger
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1
    assert not writer._timed
    assert c.client.until_eof() == b"* goodbye\n"


def test_a_late_line_for_a_lingering_link_does_not_end_the_linger(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice")
    greeted(writer, c)
    hub.close(c.member, "kicked", events.YouWereKicked("spam"))
    writer.step(0)
    assert c.link.state == LINGERING
    hub.tell(c.member, events.WhoList("lobby", ("alice",)))  # in flight when the kick came
    writer.step(0)
    assert c.client.until_eof() == b"* you were kicked: spam\n"
    assert c.link.state == LINGERING
    assert not c.sock.errors  # nothing sent on a socket shut for writing
    assert not read_side_shut(c.sock)  # the reader still drains until the linger ends
    assert_accounting(hub, c)


# --- a peer that is gone -----------------------------------------------------------------


def test_send_to_a_closed_peer_drops_the_queue_and_shuts_the_socket(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    greeted(writer, c)
    c.client.sock.close()
    hub.tell(c.member, events.Announcement("nobody reads this"))
    writer.step(0)
    assert [type(e) for e in c.sock.errors] == [BrokenPipeError]
    assert c.link.wbuf == b"" and not c.link.polled
    assert unsent(hub, c) == 0
    assert read_side_shut(c.sock)  # the reader ends on its own
    hub.remove(c.member, "eof")
    writer.step(0)
    assert c.link.state == DONE
    assert c.sock.fileno() == -1


def test_peer_that_goes_away_while_polled_is_dropped(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    partly_sent(hub, writer, c)
    c.client.sock.close()  # epoll reports the hang-up; the next send fails
    step_until(writer, lambda: not c.link.polled, "the dead peer unpolled")
    assert [type(e) for e in c.sock.errors] == [BrokenPipeError]
    assert c.link.wbuf == b""
    assert unsent(hub, c) == 0
    assert read_side_shut(c.sock)


def test_retired_link_whose_peer_vanishes_is_closed_without_waiting(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    greeted(writer, c)
    partly_sent(hub, writer, c)
    hub.remove(c.member, "eof")
    writer.step(0)
    assert c.link.state == FLUSHING and c.link.gone
    c.client.sock.close()
    step_until(writer, lambda: bool(c.sock.errors), "the send to the vanished peer to fail")
    assert unsent(hub, c) == 0
    assert c.link.state == DONE  # nothing left to deliver, nobody left to read
    assert c.sock.fileno() == -1


def test_tcp_peer_reset_drops_the_queue_and_shuts_the_socket(
    hub: Hub, writer: OutboundWriter
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=WAIT)
        raw, _ = listener.accept()
    ours = CountingSocket(raw.family, raw.type, 0, fileno=raw.detach())
    try:
        m = Member("127.0.0.1", peer.getsockname()[1], LINE, Link(ours))
        assert hub.add(m) is None and hub.login(m, "alice") is None
        writer.step(0)
        assert peer.recv(100) == b"* hello alice, you are in lobby\n"
        # SO_LINGER 0: close with a reset (RST) instead of an orderly FIN
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()

        def send_failed() -> bool:  # a send before the RST arrives is simply taken
            hub.tell(m, events.Announcement("into the void"))
            writer.step(0)
            return bool(ours.errors)

        step_until(writer, send_failed, "a send to fail")
        assert isinstance(ours.errors[0], (ConnectionResetError, BrokenPipeError))
        with hub.lock:
            assert m.queued == 0
        assert m.link.wbuf == b"" and not m.link.polled
        try:
            assert ours.recv(1, socket.MSG_DONTWAIT) == b""  # shut: its reader ends
        except ConnectionResetError:
            pass  # or it learns of the reset itself
    finally:
        peer.close()
        ours.close()


# --- stopping ----------------------------------------------------------------------------


def test_stop_writer_makes_step_return_false_after_its_last_batch(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    assert writer.step(0) is True
    hub.tell(c.member, events.Announcement("last"))
    hub.stop_writer(writer.mailbox)
    assert writer.step(0) is False
    c.client.line("* hello alice, you are in lobby")
    c.client.line("* last")
    assert writer.step(0) is False  # stays stopped


def test_close_all_closes_the_sockets_the_writer_is_waiting_on(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn], clock: FakeClock
) -> None:
    polled = connect("polled", sndbuf=SMALL_SNDBUF)
    lingering = connect("lingering")
    idle = connect("idle")
    for c in (polled, lingering, idle):
        greeted(writer, c)
        c.client.available()  # the others' join lines
    partly_sent(hub, writer, polled)
    hub.close(lingering.member, "bye", events.Goodbye())
    writer.step(0)
    assert lingering.link.state == LINGERING
    writer._close_all()
    assert polled.sock.fileno() == -1
    assert lingering.sock.fileno() == -1
    assert writer._ep.closed
    hub.tell(idle.member, events.Announcement("after the writer stopped"))  # wake: no error


def test_stop_ends_the_writer_thread_and_releases_its_descriptors(hub: Hub) -> None:
    w = OutboundWriter(hub, linger=LINGER, flush_timeout=FLUSH, name="test-writer-thread")
    w.start()
    w.stop(WAIT)
    assert not any(t.name == "test-writer-thread" for t in threading.enumerate())
    assert w._ep.closed


# --- the real thread, real timeouts --------------------------------------------------------


def test_writer_thread_delivers_lingers_and_closes_on_real_timeouts(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    writer.start()
    c.client.line("* hello alice, you are in lobby")
    hub.close(c.member, "bye", events.Goodbye())
    assert c.client.until_eof() == b"* goodbye\n"
    # Nothing wakes the thread when the linger is over: its own poll timeout must.
    wait_until(lambda: read_side_shut(c.sock), "the linger to end")
    hub.remove(c.member, "eof")
    wait_until(lambda: c.sock.fileno() == -1, "the socket closed")


def test_writer_thread_gives_up_a_flush_on_a_real_timeout(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice", sndbuf=SMALL_SNDBUF)
    writer.start()
    c.client.line("* hello alice, you are in lobby")
    hub.tell(c.member, events.Announcement("x" * BIG))
    hub.close(c.member, "idle", events.error("idle_timeout", seconds=1))
    wait_until(lambda: read_side_shut(c.sock), "the flush to be given up")
    wait_until(lambda: unsent(hub, c) == 0, "the queue dropped")
    got = c.client.until_eof()
    assert big_line().startswith(got) and len(got) < len(big_line())


def test_idle_writer_thread_is_woken_for_every_line(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    c = connect("alice")
    writer.start()
    c.client.line("* hello alice, you are in lobby")
    for i in range(200):  # each time the thread sleeps in poll with no deadline
        hub.tell(c.member, events.Announcement(str(i)))
        c.client.line(f"* {i}")
    wait_until(lambda: unsent(hub, c) == 0, "the queue accounted for")


def test_writer_thread_keeps_order_and_accounting_under_concurrent_senders(
    hub: Hub, writer: OutboundWriter, connect: Callable[..., Conn]
) -> None:
    conns = [connect(name) for name in ("ann", "ben", "cat", "dan")]
    writer.start()
    for c in conns:
        c.client.line(f"* hello {c.member.name}, you are in lobby")
        c.client.available()  # (the join lines of those after it)
    lines = 500

    def tell_all(c: Conn) -> None:
        for i in range(lines):
            hub.tell(c.member, events.Announcement(f"{c.member.name} {i}"))

    threads = [threading.Thread(target=tell_all, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for c in conns:
        got = c.client.read(sum(len(f"* {c.member.name} {i}\n") for i in range(lines)))
        assert got.decode().splitlines() == [f"* {c.member.name} {i}" for i in range(lines)]
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    wait_until(lambda: all(unsent(hub, c) == 0 for c in conns), "the queues accounted for")
