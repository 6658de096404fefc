"""The console client's pure logic: reading server lines, state, display, completion, pacing."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc import client
from chatsvc.client import (
    ChatState,
    ExitCode,
    Kind,
    Outbox,
    Phase,
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


# One line of every kind, as the server writes it.
EXAMPLES: list[tuple[str, What, tuple[str, ...]]] = [
    ("[lobby] alice: hi: there", What.CHAT, ("lobby", "alice", "hi: there")),
    ("[private] alice: psst", What.PRIVATE, ("alice", "psst")),
    ("[private to bob] alice: psst", What.PRIVATE_SENT, ("bob", "alice", "psst")),
    ("* welcome to chatsvc 0.1.0", What.WELCOME, ()),
    ("* please enter your name", What.NAME_PROMPT, ()),
    ("* password for alice:", What.PASSWORD_PROMPT, ("alice",)),
    ("* hello alice, you are in lobby", What.HELLO, ("alice", "lobby")),
    ("* you are now in work", What.JOINED, ("work",)),
    ("* you were kicked: spamming", What.KICKED, ("spamming",)),
    ("* server shutting down", What.SHUTDOWN, ()),
    ("* goodbye", What.GOODBYE, ()),
    ("* rooms: lobby (2) [here], work (0)", What.ROOMS, ("lobby (2) [here], work (0)",)),
    ("* in lobby (2): alice, bob", What.WHO, ("lobby", "alice, bob")),
    ("* bob joined lobby", What.USER_JOINED, ("bob", "lobby")),
    ("* bob left lobby", What.USER_LEFT, ("bob",)),
    ("* commands:", What.NOTICE, ()),
    ("! name taken: bob", What.NAME_TAKEN, ("bob",)),
    ("! the name bob is banned for another 60 s", What.NAME_BANNED, ("bob",)),
    ("! invalid name: use letters, digits, '_', '-' and '.' only", What.NAME_INVALID, ()),
    ("! the name 'root' is reserved", What.NAME_RESERVED, ("root",)),
    ("! name too long (at most 32 characters)", What.NAME_TOO_LONG, ()),
    ("! too many rejected names; closing", What.TOO_MANY_NAMES, ()),
    ("! slow down: line dropped (limit 5 lines/s, bursts of 20)", What.SLOW_DOWN, ()),
    ("! no such room: attic (rooms: lobby, work)", What.NO_ROOM, ("lobby, work",)),
    ("! no such user: carol", What.ERROR, ()),
]


@pytest.mark.parametrize(("line", "what", "args"), EXAMPLES)
def test_every_kind_of_line_is_told_apart(line: str, what: What, args: tuple[str, ...]) -> None:
    meaning = interpret(line)
    assert (meaning.what, meaning.args, meaning.text) == (what, args, line)


def test_the_examples_cover_every_kind() -> None:
    assert {what for _, what, _ in EXAMPLES} == set(client.LINE_KINDS)
    assert What.OTHER not in client.LINE_KINDS
    assert interpret("no prefix").what is What.OTHER


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("* bob left lobby (disconnected)", client.Leave.DISCONNECTED),
        ("* bob left lobby (connection lost)", client.Leave.CONNECTION_LOST),
        ("* bob left lobby (idle)", client.Leave.IDLE),
        ("* bob left lobby (flood)", client.Leave.FLOOD),
        ("* bob left lobby (too slow)", client.Leave.TOO_SLOW),
        ("* bob was kicked (spam (again))", client.Leave.KICKED),
        ("* bob left lobby", None),
        ("* bob left lobby (a reason this client does not know)", None),
    ],
)
def test_leave_reasons(line: str, reason: client.Leave | None) -> None:
    meaning = interpret(line)
    assert (meaning.what, meaning.args, meaning.reason) == (What.USER_LEFT, ("bob",), reason)


@pytest.mark.parametrize("line", [b"* goodbye\n", b"* goodbye\r\n", b"* goodbye", "* goodbye\n"])
def test_interpret_takes_a_line_as_received(line: str | bytes) -> None:
    assert interpret(line) == client.Meaning(What.GOODBYE, (), "* goodbye")


def test_interpret_replaces_what_is_not_utf8() -> None:
    meaning = interpret(b"[lobby] bob: caf\xe9")
    assert meaning.what is What.CHAT and meaning.args[2] == "caf\ufffd"


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


# --- the runners: one dispatch, one relogin path, without sockets ---------------------


class FakeConnection:
    def __init__(self, sock: object, inbox: client.Inbox, gen: int) -> None:
        self.sent: list[bytes] = []

    def start(self) -> None:
        pass

    def send(self, line: bytes) -> None:
        self.sent.append(line)

    def close(self) -> None:
        pass


class FakeReconnector:
    def __init__(self) -> None:
        self.attempts = 0
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        pass


class FakeConsole:
    def start(self, completer: object) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait(self, timeout: float | None) -> list[client.UserInput]:
        return []

    def update(self, lines: object, prompt: str | None) -> None:
        pass

    def accepted(self, line: str, echoed: bool) -> None:
        pass

    def secret(self, on: bool) -> None:
        self.hidden = on


Runner = client.Runner
socket_stand_in: Any = None  # FakeConnection never touches it


@pytest.fixture(params=["scripted", "interactive"])
def make_runner(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Runner]]:
    monkeypatch.setattr(client, "Connection", FakeConnection)

    def make(*argv: str) -> Runner:
        args = client.build_parser().parse_args(list(argv))
        runner: Runner
        if request.param == "scripted":
            runner = client.ScriptedRunner(args, client.Inbox(), -1, io.BytesIO())
        else:
            runner = client.InteractiveRunner(args, client.Inbox(), FakeConsole(), False)
        runner.reconnector = FakeReconnector()  # type: ignore[assignment]
        runner.attach(socket_stand_in)
        return runner

    yield make


def serve(runner: Runner, *lines: str) -> None:
    for line in lines:
        runner.handle(client.ServerLine(runner.gen, line.encode()))


def sent(runner: Runner) -> list[bytes]:
    """What went to the server on the current connection (scripted mode sends on a step)."""
    if isinstance(runner, client.ScriptedRunner):
        runner.step(time.monotonic())
    assert isinstance(runner.conn, FakeConnection)
    return runner.conn.sent


def test_both_modes_log_in_again_as_who_they_were_and_rejoin_the_room(
    make_runner: Callable[..., Runner],
) -> None:
    runner = make_runner("--name", "alice", "--reconnect")
    assert runner.phase is Phase.GREETING
    serve(runner, "* welcome to chatsvc 0.1.0", "* please enter your name")
    assert sent(runner)[0] == b"alice" and runner.phase is Phase.NAME_SENT
    serve(runner, "* hello alice, you are in lobby", "* you are now in work")
    assert runner.phase is Phase.CHAT
    serve(runner, "* server shutting down: upgrade")
    runner.handle(client.ServerClosed(runner.gen, None))
    assert runner.phase is Phase.RECONNECTING and runner.result is None
    runner.handle(client.Reconnected(socket_stand_in))
    assert runner.phase is Phase.GREETING
    serve(runner, "* please enter your name")
    assert sent(runner) == [b"alice"]
    serve(runner, "* hello alice, you are in lobby")
    assert runner.phase is Phase.CHAT and b"/join work" in sent(runner)


def test_a_refused_relogin_tries_again_later(make_runner: Callable[..., Runner]) -> None:
    runner = make_runner("--name", "alice", "--reconnect")
    serve(runner, "* please enter your name", "* hello alice, you are in lobby")
    runner.handle(client.ServerClosed(runner.gen, "Connection reset by peer"))
    runner.handle(client.Reconnected(socket_stand_in))
    serve(runner, "* please enter your name", "! name taken: alice")  # the old session lingers
    assert runner.phase is Phase.RECONNECTING and runner.result is None
    assert isinstance(runner.reconnector, FakeReconnector) and runner.reconnector.started == 2


def test_lost_before_login_logs_in_again_with_the_name_given(
    make_runner: Callable[..., Runner],
) -> None:
    # Regression: the relogin sent the name learnt from hello, "" before any hello.
    runner = make_runner("--name", "bot", "--reconnect")
    serve(runner, "* please enter your name", "* server shutting down")
    runner.handle(client.ServerClosed(runner.gen, None))
    runner.handle(client.Reconnected(socket_stand_in))
    serve(runner, "* please enter your name")
    assert sent(runner) == [b"bot"]


def test_a_refused_name_ends_a_script_but_is_asked_again_interactively(
    make_runner: Callable[..., Runner],
) -> None:
    runner = make_runner("--name", "root")
    serve(runner, "* please enter your name", "! the name 'root' is reserved")
    if isinstance(runner, client.InteractiveRunner):
        assert runner.phase is Phase.NAMING and runner.prompt == client.NAME_PROMPT
        assert runner.result is None
    else:
        assert runner.result == client.Outcome(
            ExitCode.REFUSED, "name rejected: the name 'root' is reserved"
        )


def test_a_blank_name_option_counts_as_not_given(make_runner: Callable[..., Runner]) -> None:
    runner = make_runner("--name", "  ")
    serve(runner, "* please enter your name")
    assert runner.phase is Phase.NAMING and sent(runner) == []


def test_after_bye_only_a_script_insists_on_the_goodbye(
    make_runner: Callable[..., Runner],
) -> None:
    runner = make_runner("--name", "alice")
    serve(runner, "* please enter your name", "* hello alice, you are in lobby")
    runner.say_bye()
    serve(runner, "* you were kicked: bad timing")
    runner.handle(client.ServerClosed(runner.gen, None))
    scripted = isinstance(runner, client.ScriptedRunner)
    assert runner.result is not None
    assert runner.result.code is (ExitCode.KICKED if scripted else ExitCode.OK)


def type_password(runner: Runner, password: str) -> None:
    if isinstance(runner, client.InteractiveRunner):
        assert isinstance(runner.console, FakeConsole) and runner.console.hidden
        assert runner.prompt == client.PASSWORD_PROMPT.format("alice")
        runner.on_input(password)
        assert not runner.console.hidden
    else:
        runner.on_input_line(password.encode())


def test_a_password_is_asked_for_and_remembered_for_a_reconnect(
    make_runner: Callable[..., Runner],
) -> None:
    runner = make_runner("--name", "alice", "--reconnect")
    serve(runner, "* please enter your name", "* password for alice:")
    assert runner.phase is Phase.PASSWORD
    type_password(runner, "s3cret")
    assert sent(runner) == [b"alice", b"s3cret"] and runner.phase is Phase.NAME_SENT
    serve(runner, "* hello alice, you are in lobby")
    runner.handle(client.ServerClosed(runner.gen, None))
    runner.handle(client.Reconnected(socket_stand_in))
    serve(runner, "* please enter your name", "* password for alice:")
    assert sent(runner)[:2] == [b"alice", b"s3cret"]  # not asked again
    serve(runner, "* hello alice, you are in lobby")
    assert runner.phase is Phase.CHAT


def test_a_password_file_is_sent_and_a_wrong_password_forgotten(
    make_runner: Callable[..., Runner],
) -> None:
    runner = make_runner("--name", "alice")
    runner.password = b"from-file"
    serve(runner, "* please enter your name", "* password for alice:")
    assert sent(runner) == [b"alice", b"from-file"]
    serve(runner, "! wrong name or password")
    assert runner.password is None
    if isinstance(runner, client.InteractiveRunner):
        assert runner.phase is Phase.NAMING  # asked again, name and password
    else:
        assert runner.result == client.Outcome(
            ExitCode.REFUSED, "name rejected: wrong name or password"
        )


def test_lines_typed_before_the_password_prompt_are_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client, "Connection", FakeConnection)
    args = client.build_parser().parse_args(["--name", "alice"])
    runner = client.InteractiveRunner(args, client.Inbox(), FakeConsole(), False)
    runner.reconnector = FakeReconnector()  # type: ignore[assignment]
    runner.attach(socket_stand_in)
    serve(runner, "* please enter your name")
    runner.on_input("s3cret")  # typed too early, in plain view
    serve(runner, "* password for alice:")
    runner.on_input("s3cret")
    serve(runner, "* hello alice, you are in lobby")
    assert sent(runner).count(b"s3cret") == 1  # as the password, never as chat
    assert any("not sent" in line for line in runner.display)
