"""The console client's pure logic: reading server lines, state, display, completion, pacing."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc import client
from chatsvc.client import (
    ChatState,
    ExitCode,
    Kind,
    Outbox,
    What,
    colour_wanted,
    colourize,
    complete,
    display_width,
    input_rows,
    interpret,
    kind_of,
)

ADDRESS = "127.0.0.1:6321"


def kind(line: str, me: str = "alice") -> Kind:
    return kind_of(interpret(line), me)


def state_after(*lines: str) -> ChatState:
    state = ChatState()
    for line in lines:
        state.apply(line)
    return state


# --- reading lines -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[lobby] alice: hi", Kind.OWN),
        ("[lobby] ALICE: hi", Kind.OWN),  # names are unique case-insensitively
        ("[lobby] bob: hi", Kind.CHAT),
        ("[lobby] bob: alice: hi", Kind.CHAT),
        ("[private] bob: psst", Kind.PRIVATE),
        ("[private to bob] alice: psst", Kind.OWN),
        ("* bob joined lobby", Kind.NOTICE),
        ("! no such user: carol", Kind.ERROR),
        ("! slow down: line dropped (limit 5 lines/s, bursts of 20)", Kind.ERROR),
        ("welcome", Kind.OTHER),
    ],
)
def test_lines_are_classified_by_prefix(line: str, expected: Kind) -> None:
    assert kind(line) is expected


def test_before_login_nothing_is_own() -> None:
    assert kind("[lobby] alice: hi", me="") is Kind.CHAT


@pytest.mark.parametrize(
    ("line", "what", "args"),
    [
        ("* please enter your name", What.NAME_PROMPT, ()),
        ("* hello alice, you are in lobby", What.HELLO, ("alice", "lobby")),
        ("* you are now in work", What.JOINED, ("work",)),
        ("* you were kicked: spam: lots", What.KICKED, ("spam: lots",)),
        ("* server shutting down in 5 s: upgrade", What.SHUTDOWN, ()),
        ("* goodbye", What.GOODBYE, ()),
        ("* bob joined lobby", What.USER_JOINED, ("bob", "lobby")),
        ("* bob left lobby (idle)", What.USER_LEFT, ("bob",)),
        ("* bob was kicked (spam)", What.USER_LEFT, ("bob",)),
        ("! slow down: whatever", What.SLOW_DOWN, ()),
        ("! usage: /join ROOM", What.ERROR, ()),
        ("* in lobby (2): alice, bob", What.WHO, ("lobby", "alice, bob")),
    ],
)
def test_interpret(line: str, what: What, args: tuple[str, ...]) -> None:
    meaning = interpret(line)
    assert meaning.what is what
    assert meaning.args == args


@given(st.text())
def test_interpret_accepts_anything(line: str) -> None:
    kind_of(interpret(line), "alice")
    ChatState().apply(line)


def test_lines_split_a_stream_and_bound_long_lines() -> None:
    lines = client.Lines(limit=5)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\r\nde\n\nf") == [b"abc", b"de", b""]
    assert lines.feed(b"ghijklmn") == [b"fghij"]  # over the limit: cut, rest dropped
    assert lines.feed(b"opq\nrs") == []
    assert lines.feed(b"tuvwxyz123\nok\n") == [b"rstuv", b"ok"]
    assert lines.feed(b"tail") == []
    assert lines.end() == [b"tail"]
    assert lines.end() == []


@given(st.lists(st.binary(max_size=30), max_size=20))
def test_lines_never_exceed_the_limit_and_keep_short_lines_whole(chunks: list[bytes]) -> None:
    lines = client.Lines(limit=8)
    out = [line for chunk in chunks for line in lines.feed(chunk)] + lines.end()
    assert all(len(line) <= 8 for line in out)
    stream = b"".join(chunks)
    # one "\r" before the line end belongs to the terminator (CRLF); others are text
    whole = [x[:-1] if x.endswith(b"\r") else x for x in stream.split(b"\n")]
    if all(len(x) <= 8 for x in stream.split(b"\n")):
        assert out == (whole if whole[-1] else whole[:-1])


# --- state -----------------------------------------------------------------------------


def test_prompt_follows_hello_and_join() -> None:
    state = state_after("* hello alice, you are in lobby")
    assert (state.me, state.room, state.prompt) == ("alice", "lobby", "lobby> ")
    state.apply("* you are now in work")
    assert state.prompt == "work> "
    state.apply("! no such room: attic (rooms: lobby, work)")
    assert state.prompt == "work> "


def test_rooms_are_learnt_from_rooms_and_errors() -> None:
    state = state_after("* rooms: lobby (2) [here], work (0), support (1), team (0)")
    assert state.rooms == ["lobby", "work", "support", "team"]
    state.apply("! no such room: x (rooms: lobby, kitchen)")
    assert state.rooms == ["lobby", "kitchen"]
    state.apply("* you are now in annex")
    assert state.rooms == ["lobby", "kitchen", "annex"]


def test_names_are_learnt_from_who_joins_and_chat() -> None:
    state = state_after(
        "* hello alice, you are in lobby",
        "* in lobby (2): alice, bob",
        "* carol joined lobby",
        "[private] dave: hi",
    )
    assert state.names >= {"bob", "carol", "dave"}


@pytest.mark.parametrize(
    ("lines", "code", "message", "retry"),
    [
        (["* please enter your name", "* hello a, you are in lobby", "* goodbye"],
         ExitCode.OK, "", False),
        (["* hello a, you are in lobby", "* you were kicked: rude"],
         ExitCode.KICKED, "kicked: rude", False),
        (["* hello a, you are in lobby", "* server shutting down: upgrade"],
         ExitCode.SERVER_SHUTDOWN, "server shutting down: upgrade", True),
        (["! server full, try again later"],
         ExitCode.CANNOT_CONNECT, f"cannot connect to {ADDRESS}: server full, try again later",
         True),
        (["* please enter your name", "! too many rejected names; closing"],
         ExitCode.REFUSED, "login failed: too many rejected names; closing", False),
        (["* please enter your name", "* hello a, you are in lobby",
          "! idle for too long (60 s); closing"],
         ExitCode.CONNECTION_LOST, "disconnected: idle for too long (60 s); closing", True),
        (["* please enter your name", "* hello a, you are in lobby", "[lobby] b: x"],
         ExitCode.CONNECTION_LOST, f"connection to {ADDRESS} lost", True),
    ],
)  # fmt: skip
def test_outcome_of_a_close(lines: list[str], code: ExitCode, message: str, retry: bool) -> None:
    outcome = state_after(*lines).outcome(None, ADDRESS)
    assert (outcome.code, outcome.message, outcome.retry) == (code, message, retry)


def test_an_old_error_does_not_explain_a_later_close() -> None:
    state = state_after("* hello a, you are in lobby", "! no such user: x", "[lobby] a: hi")
    assert state.outcome("Connection reset by peer", ADDRESS).message == (
        f"connection to {ADDRESS} lost (Connection reset by peer)"
    )


def test_new_connection_forgets_the_last_one_but_not_who_we_are() -> None:
    state = state_after("* hello a, you are in work", "* server shutting down")
    state.new_connection()
    assert state.shutdown is None and not state.logged_in
    assert (state.me, state.room) == ("a", "work")


def test_reconnect_backs_off_to_a_ceiling() -> None:
    delays = [client.reconnect_delay(n) for n in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


# --- display -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({"TERM": "xterm"}, True, True),
        ({"TERM": "xterm", "NO_COLOR": "1"}, True, False),
        ({"TERM": "xterm", "NO_COLOR": ""}, True, True),  # no-color.org: empty means unset
        ({"TERM": "xterm"}, False, False),
        ({"TERM": "dumb"}, True, False),
    ],
)
def test_colour_wanted(env: dict[str, str], tty: bool, expected: bool) -> None:
    assert colour_wanted(env, tty) is expected


def test_colourize() -> None:
    assert colourize("[lobby] alice: hi", Kind.OWN, True) == "\x1b[32m[lobby] alice: hi\x1b[0m"
    assert colourize("[lobby] bob: a: b", Kind.CHAT, True) == "\x1b[1;36m[lobby] bob:\x1b[0m a: b"
    assert colourize("! no", Kind.ERROR, True) == "\x1b[1;31m! no\x1b[0m"
    assert colourize("plain", Kind.OTHER, True) == "plain"


@given(st.text(), st.sampled_from(list(Kind)))
def test_no_colour_means_the_line_unchanged(line: str, k: Kind) -> None:
    assert colourize(line, k, False) == line


@given(st.text())
def test_sanitized_text_cannot_drive_the_terminal(text: str) -> None:
    clean = client.sanitize(text)
    assert not any((ord(c) < 32 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in clean)
    assert len(clean) == len(text)


def test_display_width() -> None:
    assert display_width("abc") == 3
    assert display_width("日本") == 4
    assert display_width("e\u0301") == 1  # combining accent
    assert display_width("👋") == 2


@pytest.mark.parametrize(
    ("prompt", "line", "columns", "rows"),
    [
        ("lobby> ", "", 80, 1),
        ("lobby> ", "x" * 73, 80, 1),  # exactly fills the row
        ("lobby> ", "x" * 74, 80, 2),
        ("lobby> ", "日" * 37, 80, 2),
        ("> ", "x" * 200, 0, 202),  # a nonsense width must not divide by zero
    ],
)
def test_input_rows(prompt: str, line: str, columns: int, rows: int) -> None:
    assert input_rows(prompt, line, columns) == rows


# --- completion ---------------------------------------------------------------------------

ROOMS = ["lobby", "work", "support", "team"]
NAMES = {"bob", "Barbara", "carol"}


@pytest.mark.parametrize(
    ("before", "word", "expected"),
    [
        ("", "/", ["/help ", "/join ", "/msg ", "/quit ", "/rooms ", "/who "]),
        ("", "/j", ["/join "]),
        ("", "/J", ["/join "]),
        ("/join ", "", ["lobby ", "work ", "support ", "team "]),
        ("/join ", "s", ["support "]),
        ("/JOIN ", "t", ["team "]),
        ("/join work ", "", []),
        ("/msg ", "b", ["Barbara ", "bob "]),
        ("/msg ", "C", ["carol "]),
        ("/msg bob ", "hi", []),
        ("", "ca", ["carol "]),
        ("hello ", "bo", ["bob "]),
        ("hello ", "", []),
        ("/who ", "", []),
    ],
)
def test_complete(before: str, word: str, expected: list[str]) -> None:
    assert complete(before, word, ROOMS, NAMES) == expected


# --- scripted sending ---------------------------------------------------------------------


def reply(box: Outbox, line: str, now: float = 0.0) -> bytes | None:
    meaning = interpret(line)
    return box.on_reply(meaning, kind_of(meaning, "ci"), now)


def test_one_line_in_flight_until_answered() -> None:
    box = Outbox()
    box.lines.extend([b"one", b"two"])
    assert box.take(0.0) == b"one"
    assert box.take(0.0) is None
    assert reply(box, "[lobby] bob: not mine") is None
    assert reply(box, "* bob joined lobby") is None
    assert reply(box, "[lobby] ci: one") == b"one"
    assert box.take(0.0) == b"two"
    assert reply(box, "! line too long (max 2048 bytes); discarded") == b"two"
    assert box.idle


def test_a_command_is_answered_by_a_notice_but_not_by_others_moving() -> None:
    box = Outbox()
    box.lines.append(b"/join work")
    box.take(0.0)
    assert reply(box, "* carol left lobby") is None
    assert reply(box, "* you are now in work") == b"/join work"
    box.lines.append(b"/msg bob hi")
    box.take(0.0)
    assert reply(box, "[private to bob] ci: hi") == b"/msg bob hi"


def test_slow_down_resends_the_dropped_line_at_the_announced_pace() -> None:
    box = Outbox()
    box.lines.extend([b"a", b"b"])
    box.take(0.0)
    assert reply(box, "! slow down: line dropped (limit 5 lines/s, bursts of 20)", 1.0) is None
    assert box.gap == pytest.approx(1.2 / 5)
    assert box.take(1.0) is None  # not yet
    assert box.take(1.0 + box.gap) == b"a"
    reply(box, "[lobby] ci: a")
    assert box.take(1.0 + box.gap) is None  # paced from now on
    assert box.take(1.0 + 2 * box.gap) == b"b"


def test_slow_down_without_a_rate_backs_off_doubling() -> None:
    box = Outbox()
    box.lines.append(b"a")
    box.take(0.0)
    reply(box, "! slow down")
    assert box.gap == client.SLOW_DOWN_FIRST_GAP
    box.take(10.0)
    reply(box, "! slow down", 10.0)
    assert box.gap == client.SLOW_DOWN_FIRST_GAP * 2
    assert list(box.lines) == [b"a"]


def in_flight(box: Outbox) -> bytes | None:
    return box.in_flight  # read through a call: mypy would keep an earlier narrowing


def test_unanswered_line_moves_on_unless_paced() -> None:
    box = Outbox()
    box.lines.extend([b"a", b"b"])
    box.take(0.0)
    box.check(client.ACK_TIMEOUT - 0.1)
    assert in_flight(box) == b"a"
    box.check(client.ACK_TIMEOUT)
    assert in_flight(box) is None and box.take(client.ACK_TIMEOUT) == b"b"
    # once paced, silence is taken for a silent drop: the line goes again
    box.gap = 0.5
    box.check(2 * client.ACK_TIMEOUT + 1)
    assert list(box.lines) == [b"b"] and box.gap == 1.0


def test_requeue_puts_the_line_in_flight_first() -> None:
    box = Outbox()
    box.lines.extend([b"a", b"b"])
    box.take(0.0)
    box.requeue()
    assert list(box.lines) == [b"a", b"b"] and in_flight(box) is None


@pytest.mark.parametrize(
    ("line", "command"),
    [("/who", True), ("//not", False), (" bye ", True), ("BYE", True), ("byebye", False),
     ("hi /who", False)],
)  # fmt: skip
def test_is_command(line: str, command: bool) -> None:
    assert client.is_command(line) is command


# --- command line ---------------------------------------------------------------------------


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["--port", "0"]) == ExitCode.USAGE
    assert "port out of range" in capsys.readouterr().err
    assert client.main(["--bogus"]) == ExitCode.USAGE


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ExitCode:
        assert f"\n  {int(code)} " in out, code


def test_inbox_wait_wakes_for_a_signal_that_came_just_before_it() -> None:
    # A condition wait slept through such a signal: a Ctrl-C waited for the next line.
    inbox = client.Inbox()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    previous_fd = signal.set_wakeup_fd(-1)
    try:
        inbox.catch_signals()
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # handled by now
        started = time.monotonic()
        inbox.wait(30.0)
        assert time.monotonic() - started < 10.0
        assert inbox.drain() == []
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR1, previous)


def test_inbox_post_from_another_thread_wakes_the_wait() -> None:
    inbox = client.Inbox()
    t = threading.Thread(target=inbox.post, args=(client.InputLine(b"hi"),))
    t.start()
    inbox.wait(30.0)  # returns at once if the post came first
    t.join(10)
    assert inbox.drain() == [client.InputLine(b"hi")]
