"""The line dialect: every event rendered to the bytes docs/protocol.md promises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc import dialects, events, protocol
from chatsvc.dialects import LINE


def one_line(event: events.Event) -> str:
    text = LINE.render(event).decode()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    return text[:-1]


def test_chat_line() -> None:
    assert LINE.render(events.Chat("lobby", "alice", "hello", 0.0)) == b"[lobby] alice: hello\n"


def test_private_lines() -> None:
    to_bob = events.Private("alice", "bob", "psst", 0.0)
    assert LINE.render(to_bob) == b"[private] alice: psst\n"
    assert LINE.render(to_bob._replace(echo=True)) == b"[private to bob] alice: psst\n"


def test_notice_and_error_prefixes() -> None:
    assert one_line(events.Joined("lobby", "bob")) == "* bob joined lobby"
    assert one_line(events.error("no_such_user", name="zed")) == "! no such user: zed"


@pytest.mark.parametrize(
    "reason, line",
    [
        ("bye", "* bob left lobby"),
        ("moved", "* bob left lobby"),
        ("eof", "* bob left lobby (disconnected)"),
        ("error", "* bob left lobby (connection lost)"),
        ("idle", "* bob left lobby (idle)"),
        ("flood", "* bob left lobby (flood)"),
        ("send_queue_exceeded", "* bob left lobby (too slow)"),
    ],
)
def test_leave_reasons(reason: str, line: str) -> None:
    assert one_line(events.Left("lobby", "bob", reason)) == line


def test_rename_line() -> None:
    assert one_line(events.Renamed("lobby", "alice", "alicia")) == "* alice is now known as alicia"


def test_rooms_line_marks_the_current_room() -> None:
    counts = (("lobby", 2), ("work", 0), ("support", 1))
    line = LINE.render(events.RoomList(counts, "lobby"))
    assert line == b"* rooms: lobby (2) [here], work (0), support (1)\n"
    assert b"[here]" not in LINE.render(events.RoomList((("lobby", 2),), None))


def test_who_line() -> None:
    assert LINE.render(events.WhoList("lobby", ("alice", "bob"))) == b"* in lobby (2): alice, bob\n"


def test_who_in_a_huge_room_is_cut_into_bounded_notice_lines() -> None:
    names = tuple(f"user{i:028d}" for i in range(2000))
    text = LINE.render(events.WhoList("lobby", names)).decode()
    rows = text.split("\n")[:-1]
    assert rows[0].startswith("* in lobby (2000): user")
    assert all(r.startswith("* ") and len(r) <= dialects.WHO_LINE_BYTES + 3 for r in rows)
    listed = [n.strip() for r in rows for n in r[2:].split(": ", 1)[-1].split(",") if n.strip()]
    assert listed == list(names)


@pytest.mark.parametrize(
    "seconds, reason, text",
    [
        (None, None, "* server shutting down"),
        (0, None, "* server shutting down"),
        (5, None, "* server shutting down in 5 s"),
        (2.5, "maintenance", "* server shutting down in 2.5 s: maintenance"),
        (None, "upgrade", "* server shutting down: upgrade"),
    ],
)
def test_shutdown_notice(seconds: float | None, reason: str | None, text: str) -> None:
    assert one_line(events.ShuttingDown(seconds, reason)) == text


def test_every_error_code_has_words() -> None:
    for code in dialects.ERROR_TEXT:
        assert code in events.ERROR_CODES or code in {
            "invalid_utf8",
            "control_characters",
            "invisible_character",
            "name_required",
            "name_too_long",
            "name_invalid",
            "name_reserved",
            "closing",
        }
    for reason in dialects.REFUSAL_TEXT:
        assert one_line(events.error("refused", reason=reason)).startswith("! ")


SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60)
WORD = st.from_regex(protocol.NAME_RE, fullmatch=True).filter(lambda s: len(s) <= 32)


@settings(max_examples=100)
@given(room=WORD, name=WORD, target=WORD, text=SAFE_TEXT)
def test_every_server_line_has_a_contract_prefix_and_one_newline(
    room: str, name: str, target: str, text: str
) -> None:
    assert one_line(events.Chat(room, name, text, 0.0)).startswith(f"[{room}] {name}: ")
    assert one_line(events.Private(name, target, text, 0.0)).startswith(f"[private] {name}: ")
    echo = events.Private(name, target, text, 0.0, echo=True)
    assert one_line(echo).startswith(f"[private to {target}] {name}: ")
    assert one_line(events.Announcement(text)).startswith("* ")
    assert one_line(events.Kicked(room, name, text)).startswith("* ")
    assert one_line(events.YouWereKicked(text)).startswith("* you were kicked: ")
    assert one_line(events.RoomList(((room, 3),), room)).startswith("* ")
    assert one_line(events.WhoList(room, (name, target))).startswith("* ")
    assert one_line(events.ShuttingDown(1.5, text)).startswith("* server shutting down")


def test_help_lines_are_notices() -> None:
    text = LINE.render(events.Help()).decode()
    rows = text.split("\n")[:-1]
    assert rows and all(r.startswith("* ") for r in rows)
    for usage in protocol.COMMAND_USAGE.values():
        assert usage in text


def test_welcome_ends_with_the_stable_name_prompt() -> None:
    rows = LINE.render(events.Welcome("9.9")).decode().split("\n")[:-1]
    assert rows == ["* welcome to chatsvc 9.9", "* please enter your name"]
