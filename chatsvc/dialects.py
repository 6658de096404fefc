"""Dialects: how one wire protocol words each event (``chatsvc.events``).

A dialect is an object with ``render(event) -> bytes``; every connection has
one.  The hub renders an event once per dialect per broadcast and hands the
same bytes to every member that speaks it.  Every line the server can send in a
dialect is made here, in one place: ``docs/protocol.md`` is the prose version
of :class:`LineDialect`, and the console client's contract tests render each
event through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Protocol

from chatsvc import events
from chatsvc.events import Event

# Why a member left, as the room is told.
LEAVE_SUFFIX = {
    "bye": "",
    "moved": "",
    "eof": " (disconnected)",
    "error": " (connection lost)",
    "idle": " (idle)",
    "flood": " (flood)",
    "send_queue_exceeded": " (too slow)",
}

REFUSAL_TEXT = {
    "server_full": "server full, try again later",
    "per_ip_limit": "too many connections from your address",
    "shutting_down": "server shutting down",
    "banned": "your address is banned from this server",
    "no_resources": "server out of resources, try again later",
}

HELP_LINES = (
    "commands:",
    "  /rooms            list rooms and how many are in each",
    "  /join ROOM        move to another room",
    "  /who              who is in your room",
    "  /msg NAME TEXT    private message",
    "  /help             this help",
    "  /quit or bye      leave",
    "  //text            send a line starting with '/'",
)

# The words of each error code; ``{...}`` are the event's params.
ERROR_TEXT = {
    "line_too_long": "line too long (max {limit} bytes); discarded",
    "invalid_utf8": "invalid UTF-8; line discarded (set your terminal to UTF-8)",
    "control_characters": "control characters are not allowed; line discarded",
    "invisible_character": (
        "invisible or direction-changing characters ({char}) are not allowed; line discarded"
    ),
    "slow_down": "slow down: line dropped (limit {rate:g} lines/s, bursts of {burst})",
    "flooding": "flooding; disconnected",
    "unknown_command": "unknown command: {command} (try /help)",
    "usage": "usage: {usage}",
    "no_such_room": "no such room: {room} (rooms: {rooms})",
    "already_in_room": "you are already in {room}",
    "not_in_room": "not in a room",
    "not_on_channel": "you are not in {room}",
    "cluster_unavailable": "cluster unavailable",
    "fenced": "this server lost contact with the cluster; please reconnect",
    "closing": "connection closing",
    "no_such_user": "no such user: {name}",
    "name_required": "a name is required",
    "name_too_long": "name too long (at most {max} characters)",
    "name_invalid": "invalid name: use letters, digits, '_', '-' and '.' only",
    "name_reserved": "the name {name!r} is reserved",
    "name_taken": "name taken: {name}",
    "name_banned": "the name {name} is banned for another {seconds:.0f} s",
    "too_many_names": "too many rejected names; closing",
    "login_timeout": "no name given in time; closing",
    "idle_timeout": "idle for too long ({seconds:g} s); closing",
    "login_failed": "wrong name or password",
    "login_throttled": "too many failed logins, try again in {seconds} s",
    "password_needs_tls": "a password needs a TLS connection",
    "auth_unavailable": "accounts are unavailable right now, try again later",
}

# A /who line is cut into lines of about this many bytes: a room of thousands
# would otherwise be one line longer than any terminal or client buffer wants.
WHO_LINE_BYTES = 1000


class Dialect(Protocol):
    """``echo_own``: a member gets its own chat lines back (in the room's order)."""

    name: str
    echo_own: bool

    def render(self, event: Event) -> bytes: ...


def shutdown_text(seconds: float | None = None, reason: str | None = None) -> str:
    text = "server shutting down"
    if seconds:
        text += f" in {seconds:g} s"
    if reason:
        text += f": {reason}"
    return text


def error_text(err: events.Error) -> str:
    """The words for an error event (also used where the server answers before a session)."""
    if err.code == "refused":
        return REFUSAL_TEXT[str(err.params["reason"])]
    return ERROR_TEXT[err.code].format(**err.params)


def _who_lines(room: str, names: tuple[str, ...]) -> Iterator[str]:
    line = f"in {room} ({len(names)}): "
    fresh = True  # no name on this line yet
    for name in names:
        if not fresh and len(line) + 2 + len(name) > WHO_LINE_BYTES:
            yield line + ","
            line, fresh = "  ", True
        line += name if fresh else ", " + name
        fresh = False
    yield line


def _left(e: events.Left) -> str:
    return f"* {e.name} left {e.room}{LEAVE_SUFFIX.get(e.reason, '')}\n"


def _private(e: events.Private) -> str:
    if e.tagmsg:  # tags only (IRC TAGMSG): nothing to show
        return ""
    if e.echo:
        return f"[private to {e.target}] {e.sender}: {e.text}\n"
    return f"[private] {e.sender}: {e.text}\n"


def _rooms(e: events.RoomList) -> str:
    parts = [f"{room} ({n})" + (" [here]" if room == e.current else "") for room, n in e.counts]
    return "* rooms: " + ", ".join(parts) + "\n"


def _who(e: events.WhoList) -> str:
    return "".join(f"* {line}\n" for line in _who_lines(e.room, e.names))


_HELP = "".join(f"* {line}\n" for line in HELP_LINES)

# One function per event type; each takes exactly that type.
_LINE_TABLE: dict[type[Any], Callable[[Any], str]] = {
    events.Chat: lambda e: "" if e.tagmsg else f"[{e.room}] {e.sender}: {e.text}\n",
    events.Joined: lambda e: f"* {e.name} joined {e.room}\n",
    events.Left: _left,
    events.Kicked: lambda e: f"* {e.name} was kicked ({e.reason})\n",
    events.Renamed: lambda e: f"* {e.old} is now known as {e.new}\n",
    events.Announcement: lambda e: f"* {e.text}\n",
    events.ShuttingDown: lambda e: f"* {shutdown_text(e.seconds, e.reason)}\n",
    events.Private: _private,
    events.Welcome: lambda e: f"* welcome to chatsvc {e.version}\n* please enter your name\n",
    events.Hello: lambda e: f"* hello {e.name}, you are in {e.room}\n",
    events.PasswordWanted: lambda e: f"* password for {e.name}:\n",
    events.NowIn: lambda e: f"* you are now in {e.room}\n",
    events.YouWereKicked: lambda e: f"* you were kicked: {e.reason}\n",
    events.Goodbye: lambda e: "* goodbye\n",
    events.RoomList: _rooms,
    events.WhoList: _who,
    events.Help: lambda e: _HELP,
    events.Error: lambda e: f"! {error_text(e)}\n",
    events.Raw: lambda e: e.text,
    # IRC-only notifications: line-protocol members never ask for them
    events.Presence: lambda e: "",
    events.Away: lambda e: "",
    events.RealName: lambda e: "",
}


class LineDialect:
    """The seed's line protocol (``docs/protocol.md``): ``[room] name: text``, ``* ``, ``! ``."""

    name = "line"
    echo_own = True

    def render(self, event: Event) -> bytes:
        return _LINE_TABLE[type(event)](event).encode()


LINE = LineDialect()
