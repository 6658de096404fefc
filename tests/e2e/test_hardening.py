"""Hardening: timeouts, connection limits, floods, resets, half-closes and fuzzed input.

Every test runs a real server on 127.0.0.1 and talks to it over real sockets.
Timing-based behaviour (login and idle timeouts) is observed by reading with
deadlines, never by sleeping.
"""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsvc import logsetup
from chatsvc.server import HOUSEKEEPING_INTERVAL
from tests.e2e.conftest import ServerHandle
from tests.e2e.helpers import (
    RawClient,
    abort,
    logged_in,
    open_fds,
    process_threads,
    wait_until,
)

MakeServer = Callable[..., ServerHandle]

LOGIN_TIMEOUT_LINE = "! no name given in time; closing"
CHAT_LINE = re.compile(r"^\[lobby\] (\S+): (.*)$")


def read_until(c: RawClient, deadline: float) -> list[str]:
    """Lines that arrive before ``deadline`` (monotonic); stops early at EOF."""
    out: list[str] = []
    while not c.eof:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            line = c.read_line(remaining)
        except TimeoutError:
            break
        if line is None:
            break
        out.append(line)
    return out


def recv_available(sock: socket.socket) -> tuple[bytes, bool]:
    """What the kernel holds for ``sock`` right now, and whether the peer is gone."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # a socket with a timeout would wait even with MSG_DONTWAIT
    data = b""
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return data, False
            except OSError:  # reset
                return data, True
            if not chunk:
                return data, True
            data += chunk
    finally:
        sock.settimeout(timeout)


# --- registration and idle timeouts -------------------------------------------------


@pytest.mark.timeout(15)
def test_nameless_half_line_is_closed_after_the_login_timeout(make_server: MakeServer) -> None:
    srv = make_server(login_timeout=1.0)
    with logged_in(srv.host, srv.port, "bob") as bob:
        started = time.monotonic()
        with RawClient(srv.host, srv.port) as c:
            c.expect("enter your name")
            c.send_raw(b"ali")  # half a name, never finished
            assert c.expect("! ", timeout=5) == LOGIN_TIMEOUT_LINE
            assert time.monotonic() - started >= 1.0
            assert c.expect_eof() == []
        wait_until(lambda: srv.hub.count() == 1, what="nameless connection removed")
        assert srv.hub.stats()["drops"] == {"login_timeout": 1}
        assert srv.hub.room_members()["lobby"] == ["bob"]
        # the half name never became a user, and nobody was told about it
        bob.send("/who")
        assert bob.expect("* in ") == "* in lobby (1): bob"
        assert not any("ali" in line for line in bob.seen)


@pytest.mark.timeout(15)
def test_empty_lines_do_not_extend_the_login_timeout(make_server: MakeServer) -> None:
    srv = make_server(login_timeout=1.0)
    with RawClient(srv.host, srv.port) as c:
        c.expect("enter your name")
        deadline = time.monotonic() + 5.0
        got: list[str] = []
        sent = 0
        while LOGIN_TIMEOUT_LINE not in got and not c.eof:
            assert time.monotonic() < deadline, f"still open after 5 s; got {got!r}"
            c.send_raw(b"\n" if sent % 2 else b"   \r\n")
            sent += 1
            got += read_until(c, time.monotonic() + 0.3)
        assert got[-1] == LOGIN_TIMEOUT_LINE
        assert not any(line.startswith("! ") for line in got[:-1])  # empties are ignored
    wait_until(lambda: srv.hub.count() == 0, what="connection removed")
    assert srv.hub.stats()["drops"] == {"login_timeout": 1}


@pytest.mark.timeout(15)
def test_rejected_names_do_not_extend_the_login_timeout(make_server: MakeServer) -> None:
    # docs/protocol.md: "no valid name within [limits] login_timeout" closes the
    # connection, so four invalid names 0.7 s apart must not keep it open for 3.8 s.
    srv = make_server(login_timeout=1.0)
    started = time.monotonic()
    with RawClient(srv.host, srv.port) as c:
        c.expect("enter your name")
        got: list[str] = []
        sent = 0
        while LOGIN_TIMEOUT_LINE not in got and not c.eof:
            assert time.monotonic() - started < 8.0, f"never closed; got {got!r}"
            next_name = started + 0.7 * (sent + 1)
            got += read_until(c, next_name if sent < 4 else time.monotonic() + 0.5)
            if sent < 4 and LOGIN_TIMEOUT_LINE not in got:
                c.send("bad name")  # rejected; five would close the connection
                sent += 1
        closed_after = time.monotonic() - started
    assert LOGIN_TIMEOUT_LINE in got
    # the reaper runs every HOUSEKEEPING_INTERVAL: closed by timeout + interval
    assert closed_after < 1.0 + HOUSEKEEPING_INTERVAL + 0.9, f"closed after {closed_after:.1f} s"


@pytest.mark.timeout(15)
def test_idle_client_is_reaped_while_an_active_one_stays(make_server: MakeServer) -> None:
    srv = make_server(idle_timeout=1.0)
    silent = logged_in(srv.host, srv.port, "silent")
    active = logged_in(srv.host, srv.port, "active")
    with silent, active:
        deadline = time.monotonic() + 6.0
        got: list[str] = []
        # the active client keeps talking; we watch the silent one meanwhile
        while not any(line.startswith("! idle") for line in got):
            assert time.monotonic() < deadline, f"silent client never reaped; got {got!r}"
            active.send("/who")
            active.expect("* in lobby")
            got += read_until(silent, time.monotonic() + 0.2)
        assert got[-1] == "! idle for too long (1 s); closing"
        assert silent.expect_eof() == []
        silent.close()
        assert active.expect("silent left") == "* silent left lobby (idle)"
        wait_until(lambda: srv.hub.count() == 1, what="idle client removed")
        assert srv.hub.stats()["drops"] == {"idle": 1}
        active.send("still here")
        assert active.expect("still here") == "[lobby] active: still here"
        assert srv.hub.room_members()["lobby"] == ["active"]


@pytest.mark.timeout(15)
def test_empty_lines_count_as_activity_for_the_idle_timeout(make_server: MakeServer) -> None:
    srv = make_server(idle_timeout=1.0)
    with logged_in(srv.host, srv.port, "bob") as bob:
        until = time.monotonic() + 3.0  # three idle periods
        got: list[str] = []
        sent = 0
        while time.monotonic() < until and not got:
            bob.send_raw(b"\n" if sent % 2 else b"  \r\n")
            sent += 1
            got += read_until(bob, min(until, time.monotonic() + 0.3))
        assert got == []  # nothing back for empty lines, and no idle disconnect
        bob.send("still here")
        assert bob.expect("still here") == "[lobby] bob: still here"
    assert "idle" not in srv.hub.stats()["drops"]


# --- connection limits ---------------------------------------------------------------


def refused_line(host: str, port: int, first: bytes = b"") -> list[str]:
    """Connect, send ``first`` at once, and return everything up to EOF."""
    with RawClient(host, port) as c:
        if first:
            c.send_raw(first)
        return c.lines_until_eof()


@pytest.mark.timeout(15)
def test_max_clients_refuses_a_burst_and_admits_again_after_a_reset(
    make_server: MakeServer,
) -> None:
    srv = make_server(max_clients=3)
    a = logged_in(srv.host, srv.port, "alice")
    nameless = RawClient(srv.host, srv.port)
    nameless.expect("enter your name")
    half = RawClient(srv.host, srv.port)
    half.send_raw(b"half a na")
    wait_until(lambda: srv.hub.count() == 3, what="three connections admitted")
    try:
        # refused clients that talk before reading still get the whole refusal
        for i in range(10):
            assert refused_line(srv.host, srv.port, f"dave{i}\n".encode()) == [
                "! server full, try again later"
            ]
        stats = srv.hub.stats()
        assert stats["refused"] == {"server_full": 10}
        assert stats["connections"] == 3
        assert srv.hub.count() == 3
        assert srv.server.session_threads() == 3
        assert list(srv.hub.names()) == ["alice"]
        abort(nameless)  # a reset frees the slot as well as a goodbye does
        wait_until(lambda: srv.hub.count() == 2, what="slot freed")
        with logged_in(srv.host, srv.port, "dave0") as d:
            d.send("in at last")
            assert a.expect("in at last") == "[lobby] dave0: in at last"
    finally:
        for c in (a, nameless, half):
            c.close()


@pytest.mark.timeout(15)
def test_per_ip_limit_counts_nameless_connections_and_frees_on_reset(
    make_server: MakeServer,
) -> None:
    srv = make_server(max_clients_per_ip=2)
    a = logged_in(srv.host, srv.port, "alice")
    nameless = RawClient(srv.host, srv.port)
    nameless.expect("enter your name")
    try:
        for _ in range(3):
            assert refused_line(srv.host, srv.port, b"mallory\n") == [
                "! too many connections from your address"
            ]
        assert srv.hub.stats()["refused"] == {"per_ip_limit": 3}
        assert "mallory" not in srv.hub.names()
        abort(a)  # the logged-in one vanishes: its slot and its name come back
        wait_until(lambda: srv.hub.count() == 1, what="alice removed")
        with logged_in(srv.host, srv.port, "alice") as again:
            again.send("/who")
            assert again.expect("* in ") == "* in lobby (1): alice"
            assert refused_line(srv.host, srv.port) == ["! too many connections from your address"]
        wait_until(lambda: srv.hub.count() == 1, what="second alice gone")
        assert srv.hub.stats()["refused"] == {"per_ip_limit": 4}
    finally:
        a.close()
        nameless.close()


# --- flood control -------------------------------------------------------------------


def flood_once(host: str, port: int, name: str, started: threading.Event) -> list[str]:
    """Log in and blast lines as fast as possible until the server cuts us off."""
    batch = b"".join(b"flood %d\n" % i for i in range(100))
    sock = socket.create_connection((host, port), timeout=5)
    try:
        sock.sendall(name.encode() + b"\n")
        received = b""
        gone = False
        deadline = time.monotonic() + 10
        while b"! flooding; disconnected\n" not in received and not gone:
            assert time.monotonic() < deadline, "flooder never disconnected"
            try:
                sock.sendall(batch)
            except OSError:  # reset once the server is done with us
                pass
            started.set()
            data, gone = recv_available(sock)
            received += data
        # the rest, up to the server's EOF
        sock.settimeout(5)
        while not gone:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            received += data
            gone = not data
        return received.decode("utf-8", "replace").splitlines()
    finally:
        sock.close()


@pytest.mark.timeout(20)
def test_flooder_is_throttled_and_cut_without_slowing_the_others(
    make_server: MakeServer,
) -> None:
    srv = make_server(flood_rate=100.0, flood_burst=50, flood_strikes=10)
    observer = logged_in(srv.host, srv.port, "observer")
    chatter = logged_in(srv.host, srv.port, "chatter")
    n_msgs = 40  # under flood_burst: the chatter itself is never throttled
    rounds: list[list[str]] = []
    errors: list[BaseException] = []
    flooding = threading.Event()
    chat_done = threading.Event()

    def flooder() -> None:
        try:
            # one flooder after another, for as long as the chatter talks
            while not chat_done.is_set() and len(rounds) < 25:
                rounds.append(flood_once(srv.host, srv.port, f"flooder{len(rounds)}", flooding))
        except BaseException as exc:
            errors.append(exc)
            flooding.set()

    def watch() -> None:
        try:
            observer.expect(f"chatter: c {n_msgs - 1}", timeout=15)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flooder), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        assert flooding.wait(5)
        slowest = 0.0
        for i in range(n_msgs):
            sent = time.monotonic()
            chatter.send(f"c {i}")
            chatter.expect(f"[lobby] chatter: c {i}", timeout=2.0)  # bounded round trip
            slowest = max(slowest, time.monotonic() - sent)
        chat_done.set()
    finally:
        chat_done.set()
        for t in threads:
            t.join(15)
    assert not errors, errors
    assert slowest < 2.0
    assert not any(line.startswith("! ") for line in chatter.seen)
    # the observer got every chat line, in order, between the flood lines
    mine = [
        m.group(2)
        for line in observer.seen
        if (m := CHAT_LINE.match(line)) and m.group(1) == "chatter"
    ]
    assert mine == [f"c {i}" for i in range(n_msgs)]
    # every flooder: its excess lines answered with errors, then disconnected
    assert rounds
    for lines in rounds:
        assert lines[-1] == "! flooding; disconnected", lines[-12:]
        assert any(line.startswith("! slow down: line dropped") for line in lines), lines[-12:]
    wait_until(lambda: srv.hub.count() == 2, what="flooders removed")
    assert srv.hub.stats()["drops"] == {"flood": len(rounds)}
    assert sorted(srv.hub.room_members()["lobby"]) == ["chatter", "observer"]
    observer.close()
    chatter.close()


# --- resets, half-closes, vanishing receivers -----------------------------------------


@pytest.mark.timeout(15)
def test_half_closed_client_has_left_and_the_room_is_told(server: ServerHandle) -> None:
    with logged_in(server.host, server.port, "bob") as bob:
        with logged_in(server.host, server.port, "alice") as alice:
            bob.expect("alice joined")
            alice.send("last words")
            alice.sock.shutdown(socket.SHUT_WR)  # EOF from the client: it left
            alice.expect_eof()  # and the server closes its side too
        assert bob.expect("alice") == "[lobby] alice: last words"
        assert bob.expect("alice left") == "* alice left lobby (disconnected)"
        wait_until(lambda: server.hub.count() == 1, what="alice removed")
        wait_until(lambda: server.server.session_threads() == 1, what="reader threads ended")
        assert server.hub.room_members()["lobby"] == ["bob"]
        assert list(server.hub.names()) == ["bob"]


@pytest.mark.timeout(15)
def test_scripted_half_closes_leave_no_ghosts(server: ServerHandle) -> None:
    # like `printf 'name\nline\n' | nc -N`: name, one line, EOF, all at once
    with logged_in(server.host, server.port, "bob") as bob:
        for i in range(20):
            s = socket.create_connection((server.host, server.port), timeout=5)
            s.sendall(f"user{i}\nline {i}\n".encode())
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            while s.recv(65536):  # the server closes: EOF, never a hang
                pass
            s.close()
            assert bob.expect(f"user{i}:") == f"[lobby] user{i}: line {i}"
            assert bob.expect(f"user{i} left") == f"* user{i} left lobby (disconnected)"
        wait_until(lambda: server.hub.count() == 1, what="everyone but bob removed")
        wait_until(lambda: server.server.session_threads() == 1, what="reader threads ended")
        assert server.hub.room_members()["lobby"] == ["bob"]
        assert server.hub.stats()["drops"] == {"eof": 20}


@pytest.mark.timeout(20)
def test_bye_then_half_close_still_delivers_what_was_queued(make_server: MakeServer) -> None:
    # docs/architecture.md: on a server-side close (bye) "the writer delivers what is
    # queued" before it closes.  A client that says bye and shuts its sending side
    # (nc -N, a script) must still get its backlog and the stable "* goodbye".
    # A queue limit far above what we wait for: on a busy machine the writer may
    # run late, and the reader must not be cut before it is seen stuck.
    server = make_server(send_queue_bytes=1 << 20)
    talker = logged_in(server.host, server.port, "talker")
    reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.settimeout(5)
    reader.connect((server.host, server.port))
    reader.sendall(b"reader\n")
    wait_until(lambda: "reader" in server.hub.room_members()["lobby"], what="reader login")

    def writer_stuck() -> bool:
        # the writer holds bytes for reader that the kernel refused: it waits for
        # EPOLLOUT, which cannot come while reader does not read
        with server.hub.lock:
            m = next(m for m in server.hub.members if m.name == "reader")
            return bool(getattr(m.link, "polled", False)) and m.queued >= 20000

    payload = "p" * 1000
    sent = 0
    deadline = time.monotonic() + 10
    while not writer_stuck():
        assert time.monotonic() < deadline, "reader's kernel buffers never filled"
        talker.send(f"{sent} {payload}")
        talker.expect(f"talker: {sent} ")
        sent += 1
    reader.sendall(b"bye\n")
    reader.shutdown(socket.SHUT_WR)
    wait_until(lambda: server.hub.count() == 1, what="the server saw reader's EOF")
    data = b""
    while True:
        chunk = reader.recv(65536)
        if not chunk:
            break
        data += chunk
    reader.close()
    talker.close()
    lines = data.decode().splitlines()
    chat = [line for line in lines if line.startswith("[lobby] talker: ")]
    assert len(chat) == sent
    assert lines[-1] == "* goodbye"


@pytest.mark.timeout(20)
def test_receivers_vanishing_mid_broadcast_leave_no_ghosts(server: ServerHandle) -> None:
    receivers = [logged_in(server.host, server.port, f"r{i}") for i in range(20)]
    sender = logged_in(server.host, server.port, "blaster")
    doomed, survivors = receivers[:10], receivers[10:]
    total = 500
    half_sent = threading.Event()
    resets_begun = threading.Event()
    errors: list[BaseException] = []

    def blast() -> None:
        try:
            for n in range(total):
                if n == total // 2:
                    half_sent.set()
                    assert resets_begun.wait(5)
                sender.send(f"b {n}")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=blast)
    t.start()
    try:
        assert half_sent.wait(5)
        wait_until(lambda: server.hub.stats()["messages_in"] >= 100, what="blast under way")
        for c in doomed[:5]:
            abort(c)
        resets_begun.set()  # the second half of the blast races the other resets
        for c in doomed[5:]:
            abort(c)
    finally:
        resets_begun.set()
        t.join(10)
    assert not errors, errors
    wait_until(lambda: server.hub.count() == 11, what="reset receivers removed")
    wait_until(lambda: server.server.session_threads() == 11, what="their threads ended")
    assert sorted(server.hub.room_members()["lobby"]) == sorted(
        ["blaster"] + [f"r{i}" for i in range(10, 20)]
    )
    assert sorted(server.hub.names()) == sorted(["blaster"] + [f"r{i}" for i in range(10, 20)])
    left = {f"* r{i} left lobby" for i in range(10)}
    for c in survivors:
        c.expect(f"blaster: b {total - 1}", timeout=10)
        got = [
            m.group(2)
            for line in c.seen
            if (m := CHAT_LINE.match(line)) and m.group(1) == "blaster"
        ]
        assert got == [f"b {n}" for n in range(total)]
        seen_left = {line.split(" (")[0] for line in c.seen if " left lobby" in line}
        while not left <= seen_left:
            line = c.expect(" left lobby")
            seen_left.add(line.split(" (")[0])
    for c in [*survivors, sender]:
        c.close()
    wait_until(lambda: server.hub.count() == 0, what="everyone removed")


@pytest.mark.timeout(15)
def test_name_is_free_again_after_an_abrupt_disconnect(server: ServerHandle) -> None:
    with logged_in(server.host, server.port, "bob") as bob:
        # 1. reset after logging in: free as soon as the room is told
        for _ in range(5):
            alice = logged_in(server.host, server.port, "alice")
            bob.expect("alice joined")
            abort(alice)
            assert bob.expect("alice left").startswith("* alice left lobby")
        # 2. reset right after sending the name, before reading anything
        admitted = server.hub.stats()["connections"]
        for _ in range(5):
            s = socket.create_connection((server.host, server.port), timeout=5)
            s.sendall(b"ALICE\n")
            abort(s)

        def resets_noticed() -> bool:
            # all five admitted (the kernel completes a connect before we accept
            # it), and all gone again
            stats = server.hub.stats()
            return bool(stats["connections"] == admitted + 5 and stats["clients"] == 1)

        wait_until(resets_noticed, what="resets noticed")
        # 3. reset while the server still has lines queued for her
        alice = logged_in(server.host, server.port, "Alice")
        bob.expect("Alice joined")
        for i in range(200):
            bob.send(f"backlog {i} " + "b" * 200)
        bob.expect("backlog 199")
        abort(alice)
        assert bob.expect("Alice left").startswith("* Alice left lobby")
        with logged_in(server.host, server.port, "alice") as again:
            again.send("back")
            assert bob.expect("alice: back") == "[lobby] alice: back"
            assert sorted(server.hub.names()) == ["alice", "bob"]
    wait_until(lambda: server.hub.count() == 0, what="everyone removed")
    assert server.hub.room_members()["lobby"] == []


# --- fuzzing a live server -------------------------------------------------------------

FUZZ_CLIENTS = 4
MAX_LINE = 512
COMMAND_LINES = [
    b"user0",
    b"USER1",
    b"carol",
    b"admin",
    b"bad name",
    b"x" * 40,
    b"/join work",
    b"/join lobby",
    b"/join kitchen",
    b"/JOIN team",
    b"/who",
    b"/rooms",
    b"/help",
    b"/msg user0 hi",
    b"/msg user1 psst there",
    b"/msg carol",
    b"/quit",
    b"bye",
    b"hello",
    b"hello again, everyone",
    b"//slash",
    b"/nope",
    b"",
    b"   ",
    b"caf\xc3\xa9 \xe4\xb8\xad",
]
chunks = st.one_of(
    st.sampled_from(COMMAND_LINES).flatmap(
        lambda line: st.sampled_from([line + b"\n", line + b"\r\n", line])
    ),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda text: text.encode() + b"\n"),
    st.integers(0, 3 * MAX_LINE).map(lambda n: b"y" * n + b"\n"),
    st.integers(1, 3 * MAX_LINE).map(lambda n: b"z" * n),  # no newline yet
    st.binary(max_size=8).map(lambda b: b"nul\x00" + b + b"\n"),
    st.sampled_from([b"\xff\xfe\n", b"\xc3(\n", b"\xed\xa0\x80\n", b"\x80abc\r\n", b"\xf0\x9f"]),
)
actions = st.one_of(
    chunks.map(lambda data: ("send", data)),
    chunks.map(lambda data: ("send", data)),
    chunks.map(lambda data: ("send", data)),
    st.just(("login", b"")),
    st.just(("login", b"")),
    st.sampled_from([("reset", b""), ("close", b""), ("shut_wr", b"")]),
)
operations = st.lists(
    st.tuples(st.integers(0, FUZZ_CLIENTS - 1), actions), min_size=10, max_size=40
)


class LogTap(io.StringIO):
    """The server's log, kept in memory so that swallowed errors can be checked."""

    def error_events(self) -> list[dict[str, object]]:
        events = [json.loads(line) for line in self.getvalue().splitlines() if line]
        return [e for e in events if e.get("level") in ("error", "critical")]


class Fuzzed:
    """A live server with its resting thread and descriptor counts.

    Counts may only go down from the baseline (threads of earlier tests may still
    be ending when it is taken), never up.
    """

    def __init__(self, handle: ServerHandle, tap: LogTap) -> None:
        self.handle = handle
        self.tap = tap
        self.threads = process_threads()
        self.fds = open_fds()

    def at_rest(self) -> bool:
        h = self.handle
        return (
            h.hub.count() == 0
            and h.server.session_threads() == 0
            and not list(h.hub.names())
            and not any(h.hub.room_members().values())
            and process_threads() <= self.threads
            and open_fds() <= self.fds
        )

    def wait_at_rest(self) -> None:
        """Wait for the resting state; the lingering close of a socket takes up to 2 s."""
        try:
            wait_until(self.at_rest, timeout=5.0)
        except AssertionError:
            h = self.handle
            raise AssertionError(
                f"not back to rest: clients {h.hub.count()}, "
                f"session threads {h.server.session_threads()}, "
                f"threads {process_threads()} (was {self.threads}), "
                f"fds {open_fds()} (was {self.fds}), rooms {h.hub.room_members()}"
            ) from None


@pytest.fixture
def fuzzed(make_server: MakeServer) -> Iterator[Fuzzed]:
    handle = make_server(max_line_bytes=MAX_LINE, level="warning")
    tap = LogTap()
    cfg = handle.server.cfg.logging
    logsetup.configure(cfg.level, "json", tap)
    try:
        wait_until(lambda: handle.hub.count() == 0)
        yield Fuzzed(handle, tap)
    finally:
        handle.stop()
        logsetup.configure(cfg.level, cfg.format, sys.stderr)


class FuzzClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock: Optional[socket.socket] = socket.create_connection((host, port), timeout=5)
        self.received = b""
        self.gone = False  # the server closed or reset it
        self.write_shut = False

    def collect(self) -> None:
        if self.sock is not None and not self.gone:
            data, self.gone = recv_available(self.sock)
            self.received += data

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        if self.write_shut or not data:
            return
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise  # the server stopped reading: a finding, not noise
        except OSError:  # reset or closed by the server
            self.gone = True

    def complete_lines(self) -> list[bytes]:
        return self.received.split(b"\n")[:-1]


def run_operations(fz: Fuzzed, ops: list[tuple[int, tuple[str, bytes]]]) -> None:
    h = fz.handle
    clients: list[Optional[FuzzClient]] = [None] * FUZZ_CLIENTS
    finished: list[FuzzClient] = []
    try:
        for idx, (what, data) in ops:
            c = clients[idx]
            if what in ("send", "login"):
                if c is None:
                    c = clients[idx] = FuzzClient(h.host, h.port)
                # "login": end any partial line, then a valid name (chat once logged in)
                c.send(data if what == "send" else f"\nuser{idx}\n".encode())
            elif c is not None and c.sock is not None:
                if what == "shut_wr":
                    if not c.write_shut:
                        c.write_shut = True
                        try:
                            c.sock.shutdown(socket.SHUT_WR)
                        except OSError:  # already reset by the server
                            pass
                    continue
                c.collect()
                if what == "reset":
                    abort(c.sock)
                else:
                    c.sock.close()
                c.sock = None
                finished.append(c)
                clients[idx] = None
            for other in clients:
                if other is not None:
                    other.collect()
    finally:
        for c in clients:
            if c is not None and c.sock is not None:
                c.collect()
                c.sock.close()
                finished.append(c)
    # whatever it was sent, the server only ever answers with well-formed lines
    for c in finished:
        for raw in c.complete_lines():
            line = raw.decode("utf-8")  # never invalid UTF-8
            assert line.startswith(("[", "* ", "! ")), line
            assert "\r" not in line and "\x00" not in line, line


@pytest.mark.timeout(30)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_fuzzed_clients_never_hurt_the_server(
    fuzzed: Fuzzed, ops: list[tuple[int, tuple[str, bytes]]]
) -> None:
    h = fuzzed.handle
    run_operations(fuzzed, ops)
    fuzzed.wait_at_rest()
    assert logsetup.flush()  # what was logged is written by the logging thread
    assert fuzzed.tap.error_events() == []
    # and a normal client is served as before
    with logged_in(h.host, h.port, "checker") as c:
        c.send("ping")
        assert c.expect("ping") == "[lobby] checker: ping"
        c.send("bye")
        assert c.expect("goodbye") == "* goodbye"
        c.expect_eof()
    fuzzed.wait_at_rest()
