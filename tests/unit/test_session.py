"""One Session's reader thread over a socketpair, with a real Hub and writer thread.

The member's end of each socketpair goes to the Session (for receiving) and
to its Link (for the writer); the test speaks the line protocol on the other
end.  Each session runs ``Session.run`` in its own thread, as the server
does, and one real ``OutboundWriter`` thread sends for all of them.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

import chatsvc.session
from chatsvc import __version__, config, events
from chatsvc.dialects import HELP_LINES, LINE
from chatsvc.hub import Hub, Member
from chatsvc.outbound import Link, OutboundWriter
from chatsvc.protocol import Command
from chatsvc.session import RECV_SIZE, Session

WAIT = 10.0  # bound on any wait (generous for a loaded machine); normally milliseconds
LINGER = 0.05
OPEN_FLOOD = {"flood_rate": 1_000_000.0, "flood_burst": 1_000_000}
# A tight bucket that does not refill during a test: 0.01 token per second.
TIGHT_FLOOD = {"flood_rate": 0.01, "flood_burst": 3, "flood_strikes": 2}


class Client:
    """The client's end of the socketpair: a line client whose every read has a deadline."""

    def __init__(self, sock: socket.socket, member: Member, thread: threading.Thread) -> None:
        self.sock = sock
        self.member = member
        self.thread = thread  # the session's reader thread
        self._buf = b""
        self.eof = False

    def send_raw(self, data: bytes) -> None:
        self.sock.settimeout(WAIT)  # (a read may have left a shorter one)
        self.sock.sendall(data)

    def send(self, line: str) -> None:
        self.send_raw(line.encode() + b"\n")

    def read_line(self, timeout: float = WAIT) -> Optional[str]:
        """The next line without its newline; None at EOF; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self.eof:
                assert self._buf == b"", f"EOF after a partial line {self._buf!r}"
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no complete line in time; have {self._buf[:200]!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.eof = True
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def expect(self, *lines: str) -> None:
        """The next lines are exactly ``lines``."""
        got = [self.read_line() for _ in lines]
        assert got == list(lines)

    def expect_eof(self) -> list[str]:
        """The lines left before EOF."""
        out: list[str] = []
        while True:
            line = self.read_line()
            if line is None:
                return out
            out.append(line)

    def wait_ended(self) -> None:
        """The session's reader thread has ended (it has called Hub.remove)."""
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the session did not end"


class Chat:
    """A hub, one writer thread and any number of sessions."""

    def __init__(self, linger: float = LINGER, **limits: Any) -> None:
        self.hub = Hub(config.with_overrides(config.Config(), limits={**OPEN_FLOOD, **limits}))
        self.writer = OutboundWriter(self.hub, linger=linger, flush_timeout=WAIT, name="t-writer")
        self.writer.start()
        self.clients: list[Client] = []

    def connect(self) -> Client:
        """A new connection: its greeting has been read, the name prompt is next to answer."""
        ours, theirs = socket.socketpair()
        m = Member("127.0.0.1", 50000 + len(self.clients), LINE, Link(ours))
        assert self.hub.add(m) is None
        thread = threading.Thread(target=Session(self.hub, m, ours).run, daemon=True)
        c = Client(theirs, m, thread)
        self.clients.append(c)
        thread.start()
        c.expect(f"* welcome to chatsvc {__version__}", "* please enter your name")
        return c

    def login(self, name: str) -> Client:
        c = self.connect()
        c.send(name)
        c.expect(f"* hello {name}, you are in lobby")
        for other in self.clients:
            if other is not c and other.member.room == "lobby":
                other.expect(f"* {name} joined lobby")
        return c

    def close(self) -> None:
        for c in self.clients:
            c.sock.close()  # EOF for every reader still running
        for c in self.clients:
            c.wait_ended()
        self.writer.stop(WAIT)
        assert self.hub.count() == 0


@pytest.fixture
def make_chat() -> Iterator[Callable[..., Chat]]:
    made: list[Chat] = []

    def make(linger: float = LINGER, **limits: Any) -> Chat:
        chat = Chat(linger, **limits)
        made.append(chat)
        return chat

    yield make
    for chat in made:
        chat.close()


@pytest.fixture
def chat(make_chat: Callable[..., Chat]) -> Chat:
    return make_chat()


# --- greeting and login ----------------------------------------------------------------


def test_greeting_then_name_prompt_then_hello(chat: Chat) -> None:
    c = chat.connect()  # (checks the greeting and the prompt)
    assert c.member.name is None
    c.send("  alice  ")
    c.expect("* hello alice, you are in lobby")
    assert chat.hub.names() == ["alice"]


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("no good", r"! invalid name: use letters, digits, '_', '-' and '\.' only"),
        ("a" * 33, r"! name too long \(at most 32 characters\)"),
        ("Admin", "! the name 'Admin' is reserved"),
        ("ALICE", "! name taken: ALICE"),
        ("mallory", r"! the name mallory is banned for another \d+ s"),
    ],
)
def test_refused_name_is_answered_and_another_may_follow(
    chat: Chat, name: str, pattern: str
) -> None:
    chat.login("alice")
    chat.hub.kick("mallory", "spam", ban_seconds=60.5)  # a pre-emptive name ban
    c = chat.connect()
    c.send(name)
    line = c.read_line()
    assert line is not None and re.fullmatch(pattern, line), line
    c.send("bob")
    c.expect("* hello bob, you are in lobby")


def test_blank_lines_before_the_name_are_ignored(chat: Chat) -> None:
    c = chat.connect()
    c.send_raw(b"\n  \r\n")
    c.send("alice")
    c.expect("* hello alice, you are in lobby")


def test_five_refused_names_close_the_connection(chat: Chat) -> None:
    c = chat.connect()
    for i in range(5):
        c.send(f"bad name {i}")
    bad = "! invalid name: use letters, digits, '_', '-' and '.' only"
    assert c.expect_eof() == [bad] * 5 + ["! too many rejected names; closing"]
    c.wait_ended()
    assert chat.hub.drops == {"name_rejected": 1}
    assert chat.hub.count() == 0


# --- commands ----------------------------------------------------------------------------


def test_chat_is_echoed_to_the_sender_and_the_room(chat: Chat) -> None:
    alice = chat.login("alice")
    bob = chat.login("bob")
    alice.send("hello  there")
    alice.expect("[lobby] alice: hello there")
    bob.expect("[lobby] alice: hello there")
    bob.send("//slash")
    bob.expect("[lobby] bob: /slash")
    alice.expect("[lobby] bob: /slash")


def test_every_member_sees_the_room_lines_in_the_same_order(chat: Chat) -> None:
    clients = [chat.login(name) for name in ("ann", "ben", "cat", "dan")]
    for c in clients:  # four reader threads race to say their lines
        c.send_raw(b"".join(b"%d\n" % i for i in range(50)))
    seen = [[c.read_line() for _ in range(200)] for c in clients]
    assert all(s == seen[0] for s in seen[1:])
    for c in clients:  # and each sender's own lines keep their order
        mine = [x for x in seen[0] if x and x.startswith(f"[lobby] {c.member.name}: ")]
        assert mine == [f"[lobby] {c.member.name}: {i}" for i in range(50)]


def test_join_moves_rooms_and_tells_both(chat: Chat) -> None:
    alice = chat.login("alice")
    bob = chat.login("bob")
    carol = chat.login("carol")
    carol.send("/join work")
    carol.expect("* you are now in work")
    alice.expect("* carol left lobby")
    bob.expect("* carol left lobby")
    alice.send("/join work")
    alice.expect("* you are now in work")
    bob.expect("* alice left lobby")
    carol.expect("* alice joined work")
    alice.send("in work")
    alice.expect("[work] alice: in work")
    carol.expect("[work] alice: in work")
    bob.send("still in lobby")
    bob.expect("[lobby] bob: still in lobby")  # (and nothing from work before it)


def test_join_refusals(chat: Chat) -> None:
    alice = chat.login("alice")
    alice.send("/join nowhere")
    alice.expect("! no such room: nowhere (rooms: lobby, work, support, team)")
    alice.send("/join lobby")
    alice.expect("! you are already in lobby")


def test_who_and_rooms(chat: Chat) -> None:
    alice = chat.login("alice")
    chat.login("bob")
    alice.send("/who")
    alice.expect("* in lobby (2): alice, bob")
    alice.send("/rooms")
    alice.expect("* rooms: lobby (2) [here], work (0), support (0), team (0)")


def test_private_message_reaches_only_its_target(chat: Chat) -> None:
    alice = chat.login("alice")
    bob = chat.login("bob")
    carol = chat.login("carol")
    alice.send("/msg BOB psst  there")
    alice.expect("[private to bob] alice: psst there")
    bob.expect("[private] alice: psst there")
    alice.send("/msg nobody hi")
    alice.expect("! no such user: nobody")
    carol.send("/who")
    carol.expect("* in lobby (3): alice, bob, carol")  # nothing private came first


def test_help(chat: Chat) -> None:
    alice = chat.login("alice")
    alice.send("/help")
    alice.expect(*(f"* {line}" for line in HELP_LINES))


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("/frob", "! unknown command: /frob (try /help)"),
        ("/join", "! usage: /join ROOM"),
        ("/join a b", "! usage: /join ROOM"),
        ("/msg bob", "! usage: /msg NAME TEXT"),
        ("/who everyone", "! usage: /who"),
        ("/rooms x", "! usage: /rooms"),
    ],
)
def test_unknown_command_and_usage_errors(chat: Chat, line: str, answer: str) -> None:
    alice = chat.login("alice")
    alice.send(line)
    alice.expect(answer)
    alice.send("/who")
    alice.expect("* in lobby (1): alice")


# --- unusable lines --------------------------------------------------------------------


def test_overlong_line_is_answered_and_the_session_goes_on(make_chat: Callable[..., Chat]) -> None:
    chat = make_chat(max_line_bytes=64)
    alice = chat.login("alice")
    alice.send("x" * 65)
    alice.expect("! line too long (max 64 bytes); discarded")
    alice.send("y" * 5000)  # over many reads
    alice.expect("! line too long (max 64 bytes); discarded")
    alice.send("z" * 64)
    alice.expect("[lobby] alice: " + "z" * 64)


def test_lines_split_and_joined_across_reads_arrive_whole(make_chat: Callable[..., Chat]) -> None:
    chat = make_chat(max_line_bytes=4096)
    alice = chat.login("alice")
    exact = "e" * (RECV_SIZE - 1)  # with its newline, exactly one small read
    alice.send(exact)
    alice.expect(f"[lobby] alice: {exact}")
    long = "l" * 4000  # a small read, then the bulk read
    alice.send(long)
    alice.expect(f"[lobby] alice: {long}")
    # Many lines in one write, their echoes well under send_queue_bytes (64 KiB):
    # a writer thread slowed by load must not get the test's client cut.
    many = [f"line {i}" for i in range(1000)]
    alice.send_raw("".join(f"{x}\n" for x in many).encode())
    alice.expect(*(f"[lobby] alice: {x}" for x in many))
    alice.send_raw(b"half a ")
    alice.send_raw(b"line\r\n")
    alice.expect("[lobby] alice: half a line")


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        (b"caf\xe9\n", "! invalid UTF-8; line discarded (set your terminal to UTF-8)"),
        (b"red \x1b[31malert\n", "! control characters are not allowed; line discarded"),
        (
            "evil \u202etxt.exe\n".encode(),
            "! invisible or direction-changing characters (U+202E) are not allowed; line discarded",
        ),
    ],
)
def test_unusable_text_is_refused_and_the_session_goes_on(
    chat: Chat, raw: bytes, answer: str
) -> None:
    alice = chat.login("alice")
    bob = chat.login("bob")
    alice.send_raw(raw)
    alice.expect(answer)
    alice.send("fine")
    alice.expect("[lobby] alice: fine")
    bob.expect("[lobby] alice: fine")  # the refused line never reached the room


def test_unusable_line_during_login_is_answered(chat: Chat) -> None:
    c = chat.connect()
    c.send_raw(b"\xff\n")
    c.expect("! invalid UTF-8; line discarded (set your terminal to UTF-8)")
    c.send("alice")
    c.expect("* hello alice, you are in lobby")


# --- flood control ---------------------------------------------------------------------


def test_lines_over_the_bucket_are_answered_with_slow_down(
    make_chat: Callable[..., Chat],
) -> None:
    chat = make_chat(**{**TIGHT_FLOOD, "flood_strikes": 0})  # never cut
    alice = chat.login("alice")  # the name is free: the bucket is still full
    alice.send_raw(b"1\n2\n3\n4\n5\n")
    alice.expect("[lobby] alice: 1", "[lobby] alice: 2", "[lobby] alice: 3")
    slow = "! slow down: line dropped (limit 0.01 lines/s, bursts of 3)"
    alice.expect(slow, slow)
    assert alice.member.throttled


def test_blank_lines_over_the_bucket_are_dropped_silently(
    make_chat: Callable[..., Chat],
) -> None:
    chat = make_chat(**{**TIGHT_FLOOD, "flood_strikes": 0})
    alice = chat.login("alice")
    alice.send_raw(b"\n\n\n\n\nlast\n")  # 3 blanks pass, 2 are dropped, then "last"
    alice.expect("! slow down: line dropped (limit 0.01 lines/s, bursts of 3)")


def test_blank_lines_before_the_name_pay_too(make_chat: Callable[..., Chat]) -> None:
    chat = make_chat(**{**TIGHT_FLOOD, "flood_strikes": 0})
    c = chat.connect()
    c.send_raw(b"\n\n\nalice\n")  # the blanks take the burst; the name is free
    c.expect("* hello alice, you are in lobby")
    c.send("hi")
    c.expect("! slow down: line dropped (limit 0.01 lines/s, bursts of 3)")


def test_too_many_strikes_disconnect_the_flooder(make_chat: Callable[..., Chat]) -> None:
    chat = make_chat(**TIGHT_FLOOD)  # 3 lines, then 2 strikes answered, the 3rd cuts
    bob = chat.login("bob")
    alice = chat.login("alice")
    alice.send_raw(b"".join(b"%d\n" % i for i in range(10)))
    slow = "! slow down: line dropped (limit 0.01 lines/s, bursts of 3)"
    assert alice.expect_eof() == [
        "[lobby] alice: 0",
        "[lobby] alice: 1",
        "[lobby] alice: 2",
        slow,
        slow,
        "! flooding; disconnected",
    ]
    bob.expect(
        "[lobby] alice: 0", "[lobby] alice: 1", "[lobby] alice: 2", "* alice left lobby (flood)"
    )
    alice.wait_ended()  # the linger ended the reader
    assert chat.hub.drops == {"flood": 1}


def test_blank_line_flood_is_disconnected_too(make_chat: Callable[..., Chat]) -> None:
    chat = make_chat(**TIGHT_FLOOD)
    alice = chat.login("alice")
    alice.send_raw(b"\n" * 10)
    assert alice.expect_eof() == ["! flooding; disconnected"]
    alice.wait_ended()
    assert chat.hub.drops == {"flood": 1}


def test_a_reload_changes_the_flood_limits_of_a_running_session(
    make_chat: Callable[..., Chat],
) -> None:
    chat = make_chat(**{**TIGHT_FLOOD, "flood_strikes": 0})
    alice = chat.login("alice")
    alice.send_raw(b"1\n2\n3\n4\n")
    alice.expect("[lobby] alice: 1", "[lobby] alice: 2", "[lobby] alice: 3")
    alice.expect("! slow down: line dropped (limit 0.01 lines/s, bursts of 3)")
    # A million tokens a second: the bucket refills in the time the reply took.
    chat.hub.apply(config.with_overrides(chat.hub.cfg, limits={"flood_rate": 1_000_000.0}))
    alice.send("after the reload")
    alice.expect("[lobby] alice: after the reload")


# --- ending -----------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["bye", "BYE", "/quit"])
def test_bye_says_goodbye_then_eof(chat: Chat, word: str) -> None:
    bob = chat.login("bob")
    alice = chat.login("alice")
    alice.send(word)
    alice.send("discarded after bye")
    assert alice.expect_eof() == ["* goodbye"]
    bob.expect("* alice left lobby")
    bob.send("/who")
    bob.expect("* in lobby (1): bob")
    alice.wait_ended()  # the linger is over: the writer shut the read side too
    assert chat.hub.drops == {"bye": 1}
    assert chat.hub.names() == ["bob"]


def test_client_eof_removes_the_member_with_reason_eof(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = chat.login("bob")
    alice = chat.login("alice")
    removed: list[tuple[Member, str]] = []
    remove = chat.hub.remove

    def spy(m: Member, reason: str) -> str:
        removed.append((m, reason))
        return remove(m, reason)

    monkeypatch.setattr(chat.hub, "remove", spy)
    alice.send("last words")
    alice.sock.shutdown(socket.SHUT_WR)  # a half-close: it can still read
    alice.expect("[lobby] alice: last words")
    assert alice.expect_eof() == []
    alice.wait_ended()
    assert removed == [(alice.member, "eof")]
    assert alice.member.close_reason == "eof"
    assert chat.hub.drops == {"eof": 1}
    assert chat.hub.names() == ["bob"]
    bob.expect("[lobby] alice: last words", "* alice left lobby (disconnected)")


def test_client_eof_before_the_name_ends_the_session(chat: Chat) -> None:
    c = chat.connect()
    c.sock.shutdown(socket.SHUT_WR)
    assert c.expect_eof() == []
    c.wait_ended()
    assert chat.hub.drops == {"eof": 1}
    assert chat.hub.count() == 0


def test_client_reset_ends_the_session_with_reason_error(chat: Chat) -> None:
    bob = chat.login("bob")
    alice = chat.login("alice")
    alice.send("unread echo")
    bob.expect("[lobby] alice: unread echo")
    ready, _, _ = select.select([alice.sock], [], [], WAIT)
    assert ready  # the echo waits, unread, in alice's socket
    alice.sock.close()  # closing with unread data resets the connection
    alice.wait_ended()
    assert alice.member.close_reason == "error"
    assert chat.hub.drops == {"error": 1}
    bob.expect("* alice left lobby (connection lost)")


def test_login_timeout_from_the_reaper_ends_the_session(chat: Chat) -> None:
    c = chat.connect()
    assert chat.hub.reap(time.monotonic() + 31) == [c.member]  # login_timeout is 30 s
    c.send("too late")  # discarded: closing began
    assert c.expect_eof() == ["! no name given in time; closing"]
    c.wait_ended()  # the linger ended, and with it the reader's recv
    assert chat.hub.drops == {"login_timeout": 1}


def still_drained(c: Client) -> None:
    """The server closed ``c`` and it saw EOF; while the linger lasts, its reader still
    reads (and discards) what the client sends, so unread input never turns the close
    into a reset that could destroy the final line.  Then the client closes."""
    c.sock.settimeout(WAIT)
    c.sock.sendall(b"still typing\n" * 100_000)  # far more than the socket buffers hold
    c.sock.close()
    c.wait_ended()


def test_a_kicked_client_still_sending_is_drained_during_the_linger(
    make_chat: Callable[..., Chat],
) -> None:
    chat = make_chat(linger=3 * WAIT)  # the client's close, not the linger, ends it
    alice = chat.login("alice")
    chat.hub.kick("alice", "spam")
    assert alice.expect_eof() == ["* you were kicked: spam"]
    still_drained(alice)
    assert chat.hub.drops == {"kicked": 1}


def test_a_client_refused_five_names_still_sending_is_drained_during_the_linger(
    make_chat: Callable[..., Chat],
) -> None:
    chat = make_chat(linger=3 * WAIT)
    c = chat.connect()
    c.send_raw(b"".join(b"bad name %d\n" % i for i in range(5)))
    assert c.expect_eof()[-1] == "! too many rejected names; closing"
    still_drained(c)
    assert chat.hub.drops == {"name_rejected": 1}


def test_a_bug_in_a_command_handler_ends_only_that_session(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(session: Session, cmd: Command) -> None:
        raise RuntimeError("a bug")

    # Dispatch goes through the table built from the cmd_* methods at import.
    monkeypatch.setitem(chatsvc.session._DISPATCH, "who", broken)
    bob = chat.login("bob")
    alice = chat.login("alice")
    alice.send("/who")
    assert alice.expect_eof() == []
    alice.wait_ended()
    assert alice.member.close_reason == "error"
    assert chat.hub.drops == {"error": 1}
    bob.expect("* alice left lobby (connection lost)")
    bob.send("still here")
    bob.expect("[lobby] bob: still here")
    assert chat.hub.names() == ["bob"]


def test_server_side_close_discards_input_until_the_linger_ends(chat: Chat) -> None:
    alice = chat.login("alice")
    assert chat.hub.kick("alice", "spam").kicked
    alice.send("ignored")
    assert alice.expect_eof() == ["* you were kicked: spam"]
    alice.wait_ended()
    assert chat.hub.drops == {"kicked": 1}


def test_hub_events_for_a_session_are_sent_by_the_writer(chat: Chat) -> None:
    alice = chat.login("alice")
    chat.hub.announce(events.Announcement("maintenance at noon"))
    alice.expect("* maintenance at noon")
