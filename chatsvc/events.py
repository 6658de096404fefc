"""What the server tells clients, as small typed events that no wire format is in.

The hub fans out these events; each connection's dialect (``chatsvc.dialects``)
renders them to bytes, once per (event, dialect) per broadcast.  An event says
*what happened* (who, where, which reason code, when), never how a protocol
words it, so a second dialect (IRC) or a second fan-out backend (a stream of
events on another node) needs nothing from the line protocol.

Reason and error codes are short stable strings; the dialects own the words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Union

# --- room events: fanned out to every member of a room -----------------------------


# Client-only message tags (IRCv3 ``+name=value``) a message carries, in order.
Tags = tuple[tuple[str, str], ...]


class Chat(NamedTuple):
    """``notice``: sent as an IRC NOTICE (never auto-answered); the line protocol ignores it.

    ``tags``: the sender's client-only tags, relayed to IRC members that asked
    for them; ``msgid``: the message's id (unique per message, the same for
    every recipient).  ``tagmsg``: a tags-only message (IRC ``TAGMSG``, no
    text), which only IRC members with ``message-tags`` see.
    """

    room: str
    sender: str
    text: str
    time: float
    notice: bool = False
    tags: Tags = ()
    msgid: str = ""
    tagmsg: bool = False


class Joined(NamedTuple):
    room: str
    name: str


class Left(NamedTuple):
    """``reason``: a disconnect reason (``bye``, ``eof``, ``idle``...), ``moved`` or ``part``.

    ``text``: the member's own parting words (IRC ``PART``/``QUIT``), if any.
    """

    room: str
    name: str
    reason: str
    text: str = ""


class Kicked(NamedTuple):
    """Another member of the room was kicked by an operator."""

    room: str
    name: str
    reason: str


class Renamed(NamedTuple):
    """A member of the room changed its name (IRC ``NICK``)."""

    room: str
    old: str
    new: str


class Announcement(NamedTuple):
    """An operator's broadcast (to one room, or to all when ``room`` is None)."""

    text: str
    room: Optional[str] = None


class ShuttingDown(NamedTuple):
    """The server stops now (``seconds`` None) or after a countdown."""

    seconds: Optional[float] = None
    reason: Optional[str] = None


# --- events for one member ----------------------------------------------------------


class Private(NamedTuple):
    """A private message; ``echo`` is the sender's own copy; the rest as in Chat."""

    sender: str
    target: str
    text: str
    time: float
    echo: bool = False
    notice: bool = False
    tags: Tags = ()
    msgid: str = ""
    tagmsg: bool = False


class Presence(NamedTuple):
    """A name someone watches (IRC ``MONITOR``) came online or went offline."""

    name: str
    online: bool


class Away(NamedTuple):
    """A user set (``text``) or cleared (empty) its away message (IRC ``away-notify``)."""

    name: str
    text: str


class RealName(NamedTuple):
    """A user changed its real name (IRC ``SETNAME``)."""

    name: str
    realname: str


class Welcome(NamedTuple):
    """The greeting; it asks for a name."""

    version: str


class Hello(NamedTuple):
    """Login accepted: the member is ``name``, in ``room`` (None: in no room yet)."""

    name: str
    room: Optional[str]


class PasswordWanted(NamedTuple):
    """The name needs a password: the next line the client sends is it."""

    name: str


class NowIn(NamedTuple):
    room: str


class YouWereKicked(NamedTuple):
    reason: str


class Goodbye(NamedTuple):
    pass


class RoomList(NamedTuple):
    counts: tuple[tuple[str, int], ...]
    current: Optional[str]


class WhoList(NamedTuple):
    room: str
    names: tuple[str, ...]


class Help(NamedTuple):
    pass


class Error(NamedTuple):
    """A refusal or error, by ``code`` (see ``ERROR_CODES``) with its parameters."""

    code: str
    params: Mapping[str, object] = {}


class Raw(NamedTuple):
    """Lines a session already worded for its own member (IRC numerics).

    Only ever told to that one member (``Hub.tell``), never fanned out: IRC
    replies name their recipient, so they cannot be rendered once per dialect.
    Every dialect passes the text through unchanged.
    """

    text: str


def error(code: str, **params: object) -> Error:
    return Error(code, params)


ERROR_CODES = frozenset(
    {
        "line_too_long",  # limit
        "bad_text",  # why (the decode problem)
        "slow_down",  # rate, burst
        "flooding",
        "unknown_command",  # command
        "usage",  # usage
        "no_such_room",  # room, rooms
        "already_in_room",  # room
        "not_in_room",
        "not_on_channel",  # room
        "cluster_unavailable",
        "fenced",
        "no_such_user",  # name
        "bad_name",  # why
        "name_taken",  # name
        "name_banned",  # name, seconds
        "too_many_names",
        "login_timeout",
        "idle_timeout",  # seconds
        "login_failed",  # a wrong password, or (in "required" mode) an unknown name
        "login_throttled",  # seconds
        "password_needs_tls",
        "auth_unavailable",
        "refused",  # reason: server_full, per_ip_limit, shutting_down, banned, no_resources
    }
)

RoomEvent = Union[Chat, Joined, Left, Kicked, Renamed, Announcement, ShuttingDown]
Event = Union[
    Chat,
    Joined,
    Left,
    Kicked,
    Renamed,
    Announcement,
    ShuttingDown,
    Private,
    Welcome,
    Hello,
    PasswordWanted,
    NowIn,
    YouWereKicked,
    Goodbye,
    RoomList,
    WhoList,
    Help,
    Error,
    Raw,
    Presence,
    Away,
    RealName,
]


# --- the wire form between nodes (cluster mode) ------------------------------------

_BY_NAME: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (Chat, Joined, Left, Kicked, Renamed, Announcement, Private)
}


def to_wire(event: Event) -> list[Any]:
    """A JSON-ready form of an event that travels between nodes: [type, fields...]."""
    return [type(event).__name__, *event]


def from_wire(data: Any) -> Event:
    """The event ``to_wire`` made; ValueError if ``data`` is not one."""
    if not isinstance(data, list) or not data or data[0] not in _BY_NAME:
        raise ValueError(f"not a wire event: {data!r:.80}")
    cls = _BY_NAME[data[0]]
    try:
        event: Event = cls(*data[1:])
    except TypeError as exc:
        raise ValueError(f"bad fields for {data[0]}: {exc}") from None
    return event
