"""Contract tests: every line the console client recognises, as the server words it.

Each case renders an event through the server's line dialect (the one place
the server's wording lives) and asserts ``client.interpret`` classifies it.  A
wording change in ``chatsvc/dialects.py`` that the client would no longer
understand fails here, not in front of a user.
"""

from __future__ import annotations

import pytest

from chatsvc import client, dialects, events, protocol
from chatsvc.client import Leave, What, interpret
from chatsvc.dialects import LINE

NOW = 0.0

# (event, kind the client must see, args it must extract or None to skip that check)
CASES: list[tuple[events.Event, What, tuple[str, ...] | None]] = [
    (events.Chat("lobby", "alice", "hi there", NOW), What.CHAT, ("lobby", "alice", "hi there")),
    (events.Private("alice", "bob", "psst", NOW), What.PRIVATE, ("alice", "psst")),
    (
        events.Private("alice", "bob", "psst", NOW, echo=True),
        What.PRIVATE_SENT,
        ("bob", "alice", "psst"),
    ),
    (events.Hello("alice", "lobby"), What.HELLO, ("alice", "lobby")),
    (events.PasswordWanted("alice"), What.PASSWORD_PROMPT, ("alice",)),
    (events.error("login_failed"), What.ERROR, None),
    (events.error("login_throttled", seconds=4), What.ERROR, None),
    (events.error("password_needs_tls"), What.ERROR, None),
    (events.NowIn("work"), What.JOINED, ("work",)),
    (events.YouWereKicked("spamming"), What.KICKED, ("spamming",)),
    (events.ShuttingDown(), What.SHUTDOWN, None),
    (events.ShuttingDown(5, "upgrade"), What.SHUTDOWN, None),
    (events.Goodbye(), What.GOODBYE, None),
    (
        events.RoomList((("lobby", 2), ("work", 0)), "lobby"),
        What.ROOMS,
        None,
    ),
    (events.WhoList("lobby", ("alice", "bob")), What.WHO, None),
    (events.Joined("lobby", "bob"), What.USER_JOINED, ("bob", "lobby")),
    (events.Left("lobby", "bob", "bye"), What.USER_LEFT, ("bob",)),
    (events.Kicked("lobby", "bob", "spam"), What.USER_LEFT, ("bob",)),
    (events.Announcement("maintenance at noon"), What.NOTICE, None),
    (events.error("name_taken", name="bob"), What.NAME_TAKEN, ("bob",)),
    (events.error("name_banned", name="bob", seconds=60.0), What.NAME_BANNED, ("bob",)),
    (events.error("name_invalid"), What.NAME_INVALID, None),
    (events.error("name_required"), What.NAME_INVALID, None),
    (events.error("name_reserved", name="root"), What.NAME_RESERVED, None),
    (events.error("name_too_long", max=32), What.NAME_TOO_LONG, None),
    (events.error("too_many_names"), What.TOO_MANY_NAMES, None),
    (events.error("slow_down", rate=5.0, burst=20), What.SLOW_DOWN, None),
    (
        events.error("no_such_room", room="attic", rooms="lobby, work"),
        What.NO_ROOM,
        None,
    ),
    (events.error("no_such_user", name="carol"), What.ERROR, None),
    (events.error("already_in_room", room="lobby"), What.ERROR, None),
    (events.error("line_too_long", limit=2048), What.ERROR, None),
    (events.error("flooding"), What.ERROR, None),
    (events.error("idle_timeout", seconds=3600), What.ERROR, None),
    (events.error("login_timeout"), What.ERROR, None),
    (events.error("invalid_utf8"), What.ERROR, None),
    (events.error("refused", reason="server_full"), What.ERROR, None),
]


def rows(event: events.Event) -> list[str]:
    text = LINE.render(event).decode()
    assert text.endswith("\n")
    return text.split("\n")[:-1]


@pytest.mark.parametrize(
    "event, what, args", CASES, ids=[f"{type(c[0]).__name__}-{c[1].name}" for c in CASES]
)
def test_the_client_reads_what_the_server_says(
    event: events.Event, what: What, args: tuple[str, ...] | None
) -> None:
    (line,) = rows(event)
    meaning = interpret(line)
    assert meaning.what is what, line
    if args is not None:
        assert tuple(meaning.args) == args, line


def test_the_greeting_ends_with_the_name_prompt() -> None:
    welcome, prompt = rows(events.Welcome("1.2.3"))
    assert interpret(welcome).what is What.WELCOME
    assert interpret(prompt).what is What.NAME_PROMPT


def test_every_kind_the_client_knows_is_a_line_the_server_sends() -> None:
    covered = {what for _, what, _ in CASES} | {What.WELCOME, What.NAME_PROMPT}
    assert covered == set(client.LINE_KINDS)


@pytest.mark.parametrize("reason", sorted(dialects.LEAVE_SUFFIX))
def test_every_leave_reason_the_server_gives_is_understood(reason: str) -> None:
    (line,) = rows(events.Left("lobby", "bob", reason))
    meaning = interpret(line)
    assert meaning.what is What.USER_LEFT
    suffix = dialects.LEAVE_SUFFIX[reason]
    assert (meaning.reason is None) == (suffix == ""), line


def test_every_leave_reason_the_client_knows_is_given_by_the_server() -> None:
    given = {
        interpret(rows(events.Left("lobby", "bob", r))[0]).reason for r in dialects.LEAVE_SUFFIX
    }
    given.add(interpret(rows(events.Kicked("lobby", "bob", "spam"))[0]).reason)
    assert given - {None} == set(client.LEAVE_REASONS)
    assert Leave.KICKED in given


@pytest.mark.parametrize("name", ["", "x" * 40, "a b", "root"])
def test_every_name_refusal_is_a_refusal_to_the_client(name: str) -> None:
    why = protocol.check_name(name, 32)
    assert why is not None
    (line,) = rows(why)
    assert interpret(line).what in client.NAME_REFUSALS


def test_every_error_code_renders_as_an_error_line() -> None:
    samples = {
        "limit": 1,
        "char": "U+202E",
        "rate": 1.0,
        "burst": 1,
        "command": "/x",
        "usage": "/who",
        "room": "r",
        "rooms": "r",
        "name": "n",
        "max": 3,
        "seconds": 1.0,
    }
    for code, words in dialects.ERROR_TEXT.items():
        needed = {k: v for k, v in samples.items() if "{" + k in words}
        (line,) = rows(events.error(code, **needed))
        assert line.startswith("! ")
        assert interpret(line).what is not What.OTHER
