"""chatsvc-client: the console client for chatsvc.

Interactive when stdin is a terminal: server lines appear above the input line
while GNU readline keeps what you are typing, the prompt shows your room, Tab
completes commands, rooms and names.  Scripted otherwise: every input line is
sent, every server line is copied to stdout unchanged, and at the end of input
the client says ``bye`` and waits for the server to close.

This module imports only the standard library and nothing from its package, so
the file can be copied anywhere with Python >= 3.9 and run as ``python3 client.py``.

Threads: one reader thread per connection turns server lines into events; in
scripted mode (and the plain terminal fallback) a stdin thread does the same for
input lines; while reconnecting, a connector thread makes the attempts.  They
only post to the main thread's :class:`Inbox`.  The main thread alone owns the
session state, the terminal and every write to the socket.
"""

from __future__ import annotations

import abc
import argparse
import enum
import io
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Optional, Protocol, TextIO, Union

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6321
PROG = "chatsvc-client"

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0  # after our bye, how long to wait for the server to close
ACK_TIMEOUT = 5.0  # scripted mode: how long a sent line may stay unanswered
MAX_SERVER_LINE = 65536
MAX_INPUT_LINE = 1 << 20
INPUT_WINDOW = 64  # scripted mode: input lines read ahead of the sender
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
RECONNECT_MAX_DELAY = 10.0
RECONNECT_ATTEMPTS = 12  # about a minute and a half of trying
SLOW_DOWN_MARGIN = 1.2  # pace at 1/1.2 of the rate the server announced
SLOW_DOWN_FIRST_GAP = 0.25  # when the server did not say its rate
SLOW_DOWN_MAX_GAP = 5.0

NAME_PROMPT = "Enter your name: "
PASSWORD_PROMPT = "Password for {}: "  # typed without echo, never kept in history
COMMANDS = ("/help", "/join", "/msg", "/quit", "/rooms", "/who")
CLIENT_HELP = (
    "client: Tab completes commands, rooms and names; Up/Down recall earlier lines",
    "client: /quit, bye, Ctrl-D or Ctrl-C leave",
)


class ExitCode(enum.IntEnum):
    OK = 0
    CONNECTION_LOST = 1
    USAGE = 2
    CANNOT_CONNECT = 3
    KICKED = 4
    SERVER_SHUTDOWN = 5
    REFUSED = 6
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit status:
  0    left normally: bye, /quit, Ctrl-D, Ctrl-C, or the end of piped input
  1    connection lost (also: disconnected for idling or flooding)
  2    usage error
  3    cannot connect (refused, unreachable, server full)
  4    kicked by an operator
  5    the server shut down
  6    refused: name rejected, or --room could not be joined (scripted mode)
  130  interrupted by Ctrl-C in scripted mode
"""


# --- reading server lines (pure) --------------------------------------------------


class What(enum.Enum):
    """The kind of one server line, as :func:`interpret` tells them apart.

    An example of each, and the ``args`` it carries.  ``LINE_KINDS`` lists every
    kind but ``OTHER`` (a line without a protocol prefix: never sent by the server).

    - ``CHAT``: ``[lobby] alice: hi`` (room, name, text)
    - ``PRIVATE``: ``[private] alice: psst`` (name, text)
    - ``PRIVATE_SENT``: ``[private to bob] alice: psst`` (target, name, text)
    - ``WELCOME``: ``* welcome to chatsvc 0.1.0``
    - ``NAME_PROMPT``: ``* please enter your name``
    - ``PASSWORD_PROMPT``: ``* password for alice:`` (name); the next line sent is the password
    - ``HELLO``: ``* hello alice, you are in lobby`` (name, room)
    - ``JOINED``: ``* you are now in work`` (room)
    - ``KICKED``: ``* you were kicked: spamming`` (reason)
    - ``SHUTDOWN``: ``* server shutting down in 5 s: upgrade``
    - ``GOODBYE``: ``* goodbye``
    - ``ROOMS``: ``* rooms: lobby (2) [here], work (0)`` (the list)
    - ``WHO``: ``* in lobby (2): alice, bob`` (room, names)
    - ``USER_JOINED``: ``* bob joined lobby`` (name, room)
    - ``USER_LEFT``: ``* bob left lobby``, ``* bob left lobby (idle)``,
      ``* bob was kicked (spam)`` (name); why is ``Meaning.reason``, a :class:`Leave`
    - ``NOTICE``: any other ``* `` line, such as ``* commands:``
    - ``NAME_TAKEN``: ``! name taken: bob`` (name)
    - ``NAME_BANNED``: ``! the name bob is banned for another 60 s`` (name)
    - ``NAME_INVALID``: ``! invalid name: use letters, digits, ...``
    - ``NAME_RESERVED``: ``! the name 'root' is reserved`` (name)
    - ``NAME_TOO_LONG``: ``! name too long (at most 32 characters)``
    - ``TOO_MANY_NAMES``: ``! too many rejected names; closing``
    - ``SLOW_DOWN``: ``! slow down: line dropped (limit 5 lines/s, bursts of 20)``
    - ``NO_ROOM``: ``! no such room: attic (rooms: lobby, work)`` (the list)
    - ``ERROR``: any other ``! `` line, such as ``! no such user: carol``
    """

    CHAT = "chat"
    PRIVATE = "private"
    PRIVATE_SENT = "private_sent"
    WELCOME = "welcome"
    NAME_PROMPT = "name_prompt"
    PASSWORD_PROMPT = "password_prompt"
    HELLO = "hello"
    JOINED = "joined"  # we moved to a room
    KICKED = "kicked"  # we were kicked
    SHUTDOWN = "shutdown"
    GOODBYE = "goodbye"
    ROOMS = "rooms"
    WHO = "who"
    USER_JOINED = "user_joined"
    USER_LEFT = "user_left"
    NOTICE = "notice"
    NAME_TAKEN = "name_taken"
    NAME_BANNED = "name_banned"
    NAME_INVALID = "name_invalid"
    NAME_RESERVED = "name_reserved"
    NAME_TOO_LONG = "name_too_long"
    TOO_MANY_NAMES = "too_many_names"
    SLOW_DOWN = "slow_down"
    NO_ROOM = "no_room"
    ERROR = "error"
    OTHER = "other"


class Leave(enum.Enum):
    """Why someone left your room, read from a ``USER_LEFT`` line (``LEAVE_REASONS``).

    A plain ``* bob left lobby`` (quit, or moved to another room) has no reason.
    """

    DISCONNECTED = "disconnected"  # * bob left lobby (disconnected)
    CONNECTION_LOST = "connection lost"  # * bob left lobby (connection lost)
    IDLE = "idle"  # * bob left lobby (idle)
    FLOOD = "flood"  # * bob left lobby (flood)
    TOO_SLOW = "too slow"  # * bob left lobby (too slow)
    KICKED = "kicked"  # * bob was kicked (spam)


LINE_KINDS: tuple[What, ...] = tuple(w for w in What if w is not What.OTHER)
LEAVE_REASONS: tuple[Leave, ...] = tuple(Leave)
CHAT_KINDS = frozenset({What.CHAT, What.PRIVATE, What.PRIVATE_SENT})
NAME_REFUSALS = frozenset(
    {
        What.NAME_TAKEN,
        What.NAME_BANNED,
        What.NAME_INVALID,
        What.NAME_RESERVED,
        What.NAME_TOO_LONG,
        What.TOO_MANY_NAMES,
    }
)
ERROR_KINDS = NAME_REFUSALS | {What.SLOW_DOWN, What.NO_ROOM, What.ERROR}
_SENDER_AT = {What.CHAT: 1, What.PRIVATE: 0, What.PRIVATE_SENT: 1}  # index in args

# The prefixes are the protocol's contract; of the wording after them only the
# notices docs/protocol.md marks *stable* are relied on for anything that matters
# (login, room, kick, shutdown, goodbye).  The finer kinds (name refusals, leave
# reasons, welcome) only name lines for display and tests: any error answering a
# name is a refusal, whatever its words.  First match wins.
_READINGS: tuple[tuple[What, re.Pattern[str], Optional[Leave]], ...] = (
    (What.PRIVATE_SENT, re.compile(r"\[private to ([^\]]+)\] ([^\s:]+): (.*)", re.S), None),
    (What.PRIVATE, re.compile(r"\[private\] ([^\s:]+): (.*)", re.S), None),
    (What.CHAT, re.compile(r"\[([^\]]+)\] ([^\s:]+): (.*)", re.S), None),
    (What.WELCOME, re.compile(r"\* welcome to "), None),
    (What.NAME_PROMPT, re.compile(r"\* please enter your name$"), None),
    (What.PASSWORD_PROMPT, re.compile(r"\* password for (\S+):$"), None),
    (What.HELLO, re.compile(r"\* hello (\S+), you are in (\S+)$"), None),
    (What.JOINED, re.compile(r"\* you are now in (\S+)$"), None),
    (What.KICKED, re.compile(r"\* you were kicked: (.*)$"), None),
    (What.SHUTDOWN, re.compile(r"\* server shutting down"), None),
    (What.GOODBYE, re.compile(r"\* goodbye$"), None),
    (What.ROOMS, re.compile(r"\* rooms: (.+)$"), None),
    (What.WHO, re.compile(r"\* in (\S+) \(\d+\): (.*)$"), None),
    (What.USER_JOINED, re.compile(r"\* (\S+) joined (\S+)$"), None),
    *(
        (What.USER_LEFT, re.compile(rf"\* (\S+) left \S+ \({re.escape(why.value)}\)$"), why)
        for why in Leave
        if why is not Leave.KICKED
    ),
    (What.USER_LEFT, re.compile(r"\* (\S+) was kicked \("), Leave.KICKED),
    (What.USER_LEFT, re.compile(r"\* (\S+) (?:left|was kicked)"), None),
    (What.NOTICE, re.compile(r"\* "), None),
    (What.NAME_TAKEN, re.compile(r"! name taken: (.+)$"), None),
    (What.NAME_BANNED, re.compile(r"! the name (\S+) is banned\b"), None),
    (What.NAME_INVALID, re.compile(r"! (?:invalid name|a name is required)\b"), None),
    (What.NAME_RESERVED, re.compile(r"! the name '?(.+?)'? is reserved$"), None),
    (What.NAME_TOO_LONG, re.compile(r"! name too long\b"), None),
    (What.TOO_MANY_NAMES, re.compile(r"! too many rejected names\b"), None),
    (What.SLOW_DOWN, re.compile(r"! slow down"), None),
    (What.NO_ROOM, re.compile(r"! no such room: .*\(rooms: (.*)\)$"), None),
    (What.ERROR, re.compile(r"! "), None),
)
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?) lines/s")
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Meaning:
    """What :func:`interpret` makes of one server line.

    ``what`` is its kind, ``args`` the fields it carries (see :class:`What`),
    ``text`` the line itself (decoded, without its line end) and ``reason`` why
    someone left, for ``USER_LEFT`` lines that say.
    """

    what: What
    args: tuple[str, ...] = ()
    text: str = ""
    reason: Optional[Leave] = None

    @property
    def sender(self) -> str:
        """Who wrote a chat or private line; "" for other lines."""
        at = _SENDER_AT.get(self.what)
        return "" if at is None else self.args[at]


def interpret(line: Union[str, bytes]) -> Meaning:
    """What one server line means: its kind (a :class:`What`) and its fields.

    Takes the line as received (bytes, decoded as UTF-8 with replacement) or as
    text, with or without its line end.  Pure: no state, no I/O.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    for what, pattern, reason in _READINGS:
        m = pattern.match(text)
        if m:
            return Meaning(what, tuple(g or "" for g in m.groups()), text, reason)
    return Meaning(What.OTHER, (), text)


def split_list(text: str) -> list[str]:
    """``lobby (2) [here], work (0)`` or ``lobby, work`` to ``["lobby", "work"]``."""
    return [part.split()[0] for part in text.split(", ") if part.strip()]


class Kind(enum.Enum):
    """How a line is shown."""

    OWN = "own"
    CHAT = "chat"
    PRIVATE = "private"
    NOTICE = "notice"
    ERROR = "error"
    OTHER = "other"


def kind_of(meaning: Meaning, me: str) -> Kind:
    if meaning.what in CHAT_KINDS:
        if me and meaning.sender.casefold() == me.casefold():
            return Kind.OWN
        return Kind.CHAT if meaning.what is What.CHAT else Kind.PRIVATE
    if meaning.what in ERROR_KINDS:
        return Kind.ERROR
    return Kind.OTHER if meaning.what is What.OTHER else Kind.NOTICE


def is_command(line: str) -> bool:
    """Whether the server treats ``line`` as a command rather than chat."""
    return (line.startswith("/") and not line.startswith("//")) or line.strip().lower() == "bye"


def is_quit(line: str) -> bool:
    return line.strip().lower() in ("bye", "/quit")


# --- session state (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a connection ended: the exit code, one line for stderr, and whether
    ``--reconnect`` should try again."""

    code: ExitCode
    message: str = ""
    retry: bool = False


@dataclass
class ChatState:
    """What the client knows about its session, learnt only from server lines."""

    me: str = ""
    room: str = ""
    rooms: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    # per connection
    name_prompted: bool = False
    logged_in: bool = False
    goodbye: bool = False
    kicked: Optional[str] = None
    shutdown: Optional[str] = None
    final_error: Optional[str] = None  # the text of the last line, if it was an error

    def new_connection(self) -> None:
        self.name_prompted = self.logged_in = self.goodbye = False
        self.kicked = self.shutdown = self.final_error = None

    @property
    def prompt(self) -> str:
        return f"{self.room}> "

    def apply(self, text: str) -> Meaning:
        meaning = interpret(text)
        what, args = meaning.what, meaning.args
        self.final_error = text[2:] if meaning.what in ERROR_KINDS else None
        if what is What.NAME_PROMPT:
            self.name_prompted = True
        elif what is What.HELLO:
            self.me, room = args
            self.logged_in = True
            self._enter(room)
        elif what is What.JOINED:
            self._enter(args[0])
        elif what is What.ROOMS or what is What.NO_ROOM:
            self.rooms = split_list(args[0])
        elif what is What.WHO:
            self.names.update(split_list(args[1]))
        elif what is What.USER_JOINED:
            self.names.add(args[0])
        elif what in CHAT_KINDS:
            self.names.add(meaning.sender)
        elif what is What.KICKED:
            self.kicked = args[0]
        elif what is What.SHUTDOWN:
            self.shutdown = text[2:]
        elif what is What.GOODBYE:
            self.goodbye = True
        return meaning

    def _enter(self, room: str) -> None:
        self.room = room
        if room not in self.rooms:
            self.rooms.append(room)

    def outcome(self, error: Optional[str], address: str) -> Outcome:
        """Why the connection closed, judged from what the server said last."""
        if self.goodbye:
            return Outcome(ExitCode.OK)
        if self.kicked is not None:
            return Outcome(ExitCode.KICKED, f"kicked: {self.kicked}")
        if self.shutdown is not None:
            return Outcome(ExitCode.SERVER_SHUTDOWN, self.shutdown, retry=True)
        if not self.name_prompted and self.final_error:
            # refused at the door: server full, too many connections, shutting down
            return Outcome(
                ExitCode.CANNOT_CONNECT, f"cannot connect to {address}: {self.final_error}", True
            )
        if self.name_prompted and not self.logged_in:
            why = self.final_error or error or "connection closed"
            return Outcome(ExitCode.REFUSED, f"login failed: {why}")
        if self.final_error:
            return Outcome(ExitCode.CONNECTION_LOST, f"disconnected: {self.final_error}", True)
        detail = f" ({error})" if error else ""
        return Outcome(ExitCode.CONNECTION_LOST, f"connection to {address} lost{detail}", True)


def reconnect_delay(attempt: int) -> float:
    """Seconds to wait before reconnect attempt number ``attempt`` (0-based)."""
    if attempt < len(RECONNECT_DELAYS):
        return RECONNECT_DELAYS[attempt]
    return RECONNECT_MAX_DELAY


# --- display (pure) --------------------------------------------------------------

_SGR = {
    Kind.OWN: "32",  # green
    Kind.CHAT: "1;36",  # bold cyan, on the "[room] name:" part only
    Kind.PRIVATE: "35",  # magenta
    Kind.NOTICE: "33",  # yellow
    Kind.ERROR: "1;31",  # bold red
}


def colour_wanted(env: Mapping[str, str], is_tty: bool) -> bool:
    """Colours only on a terminal, never with NO_COLOR (https://no-color.org)."""
    return is_tty and not env.get("NO_COLOR") and env.get("TERM", "") != "dumb"


def colourize(line: str, kind: Kind, enabled: bool) -> str:
    sgr = _SGR.get(kind)
    if not enabled or sgr is None:
        return line
    if kind is Kind.CHAT:
        end = line.find(": ") + 1
        return f"\x1b[{sgr}m{line[:end]}\x1b[0m{line[end:]}"
    return f"\x1b[{sgr}m{line}\x1b[0m"


def sanitize(text: str) -> str:
    """Control characters from the server could drive our terminal; show them as U+FFFD."""
    return _CONTROL_RE.sub("\ufffd", text)


def char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide East Asian characters count two."""
    return sum(char_width(ch) for ch in text)


def input_rows(prompt: str, line: str, columns: int) -> int:
    """Screen rows an accepted input line occupies, prompt included."""
    width = display_width(prompt) + display_width(line)
    return max(1, -(-width // max(columns, 1)))


def complete(before: str, word: str, rooms: Sequence[str], names: Iterable[str]) -> list[str]:
    """Tab completions of ``word``, given the text ``before`` it on the line."""
    words = before.split()
    if not words:
        if word.startswith("/"):
            return [c + " " for c in COMMANDS if c.startswith(word.lower())]
        return _prefixed(names, word) if word else []
    head = words[0].lower()
    if head == "/join" and len(words) == 1:
        return [r + " " for r in rooms if r.startswith(word)]
    if head == "/msg" and len(words) == 1:
        return _prefixed(names, word)
    if head.startswith("/") and not head.startswith("//"):
        return []
    return _prefixed(names, word) if word else []


def _prefixed(names: Iterable[str], word: str) -> list[str]:
    folded = word.casefold()
    return [n + " " for n in sorted(names, key=str.casefold) if n.casefold().startswith(folded)]


# --- scripted sending (pure) -------------------------------------------------------


class Outbox:
    """Scripted mode's sender: one line in flight at a time, paced once the
    server says ``! slow down``.

    The server answers every line it accepts (chat is echoed to its sender,
    commands reply) and reports the first dropped line of a run with
    ``! slow down`` -- later drops in the same run are silent.  So a line is
    sent only after the previous one was answered; a ``! slow down`` puts it
    back at the front, and from then on lines are spaced at a little under the
    announced rate, so that at most one line is ever dropped and none is lost.
    """

    def __init__(self) -> None:
        self.lines: deque[bytes] = deque()
        self.in_flight: Optional[bytes] = None
        self.sent_at = 0.0
        self.gap = 0.0  # seconds between sends; 0 until the server asks us to slow down
        self.not_before = 0.0

    @property
    def idle(self) -> bool:
        return self.in_flight is None and not self.lines

    def take(self, now: float) -> Optional[bytes]:
        """The next line to send now, if any."""
        if self.in_flight is not None or not self.lines or now < self.not_before:
            return None
        line = self.lines.popleft()
        self.in_flight, self.sent_at, self.not_before = line, now, now + self.gap
        return line

    def wake_at(self) -> Optional[float]:
        """When ``take`` or ``check`` may have something to do."""
        if self.in_flight is not None:
            return self.sent_at + ACK_TIMEOUT
        return self.not_before if self.lines else None

    def on_reply(self, meaning: Meaning, kind: Kind, now: float) -> Optional[bytes]:
        """Account for one server line; returns the in-flight line it answered."""
        line = self.in_flight
        if line is None:
            return None
        if meaning.what is What.SLOW_DOWN:
            m = _RATE_RE.search(meaning.text)
            self._slow_down(float(m.group(1)) if m else 0.0, now)
            return None
        if is_command(line.decode("utf-8", "replace")):
            # Other people's comings and goings are not replies to us.
            others = (What.USER_JOINED, What.USER_LEFT, What.SHUTDOWN)
            answered = kind is Kind.OWN or (
                kind in (Kind.NOTICE, Kind.ERROR) and meaning.what not in others
            )
        else:
            answered = kind in (Kind.OWN, Kind.ERROR)
        if not answered:
            return None
        self.in_flight = None
        return line

    def check(self, now: float) -> None:
        """Give up waiting for an answer that did not come."""
        if self.in_flight is None or now < self.sent_at + ACK_TIMEOUT:
            return
        if self.gap:
            self._slow_down(0.0, now)  # paced and unanswered: a silent drop, send again
        else:
            self.in_flight = None  # the server never answers it; move on

    def requeue(self) -> None:
        """The connection broke: the line in flight may be lost, send it again."""
        if self.in_flight is not None:
            self.lines.appendleft(self.in_flight)
            self.in_flight = None
        self.not_before = 0.0

    def _slow_down(self, rate: float, now: float) -> None:
        self.requeue()
        if self.gap:
            self.gap = min(self.gap * 2, SLOW_DOWN_MAX_GAP)
        else:
            self.gap = SLOW_DOWN_MARGIN / rate if rate > 0 else SLOW_DOWN_FIRST_GAP
        self.not_before = now + self.gap


class Lines:
    """Splits a byte stream into lines (without ``\n`` or ``\r\n``) of at most
    ``limit`` bytes; the rest of a longer line is dropped, so memory stays bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = b""
        self.skipping = False  # inside the dropped rest of an over-long line

    def feed(self, data: bytes) -> list[bytes]:
        parts = (self.pending + data).split(b"\n")
        self.pending = parts.pop()
        out: list[bytes] = []
        for part in parts:
            if self.skipping:
                self.skipping = False
            else:
                out.append(strip_eol(part)[: self.limit])
        if len(self.pending) > self.limit:
            if not self.skipping:
                out.append(self.pending[: self.limit])
                self.skipping = True
            self.pending = b""
        return out

    def end(self) -> list[bytes]:
        """A last line without its newline, at the end of the stream."""
        rest, self.pending = strip_eol(self.pending), b""
        return [rest] if rest and not self.skipping else []


def strip_eol(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw[:-1] if raw.endswith(b"\r") else raw


# --- events and the threads that post them -----------------------------------------


@dataclass(frozen=True)
class ServerLine:
    gen: int
    raw: bytes


@dataclass(frozen=True)
class ServerClosed:
    gen: int
    error: Optional[str]


@dataclass(frozen=True)
class Reconnected:
    sock: socket.socket


@dataclass(frozen=True)
class ReconnectFailed:
    attempt: int
    error: str
    next_delay: Optional[float]  # None: giving up


@dataclass(frozen=True)
class InputLine:
    raw: bytes


@dataclass(frozen=True)
class InputEnd:
    pass


Event = Union[ServerLine, ServerClosed, Reconnected, ReconnectFailed, InputLine, InputEnd]


class Inbox:
    """Where the other threads hand events to the main thread.

    Every wait is a ``select`` on a self-pipe that ``post`` writes a byte to,
    and so does a signal once ``catch_signals`` has run: a lock or condition
    wait sleeps through a signal that arrives just before it starts (a Ctrl-C
    then waited for the next line), a byte in the pipe cannot be missed.  The
    readline console waits on ``wakeup_fd`` and the terminal at once.
    """

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wakeup_fd(self) -> int:
        return self._wake_r

    def catch_signals(self) -> None:
        """From the main thread: every signal also wakes whoever waits here."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def post(self, event: Event) -> None:
        with self._lock:
            self._items.append(event)
        self.poke()

    def poke(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # full: the main thread is already due to wake
            pass

    def wait(self, timeout: Optional[float]) -> None:
        """Until an event, a poke, a signal or ``timeout``; ``drain`` takes what came."""
        with self._lock:
            if self._items:
                return
        select.select([self._wake_r], [], [], timeout)

    def drain(self) -> list[Event]:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:  # BlockingIOError: emptied
            pass
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# The signals the client acts on (see ReadlineConsole.start).
HANDLED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGTSTP, signal.SIGWINCH})


def worker(target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
    """A daemon thread that leaves the handled signals to the main thread.

    The kernel gives a signal to any thread not blocking it, and Python runs the
    handler only when the main thread next wakes: a Ctrl-C that landed on the
    reader thread waited for the next keystroke or server line.
    """

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        target(*args)

    return threading.Thread(target=run, name=name, daemon=True)


def complain(text: str) -> None:
    """One line on stderr, ``chatsvc-client: ...``."""
    try:
        sys.stderr.write(f"{PROG}: {text}\n")
        sys.stderr.flush()
    except OSError:
        pass


def describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class Connection:
    """One TCP connection: a reader thread posting lines, sends from the main thread."""

    def __init__(self, sock: socket.socket, inbox: Inbox, gen: int) -> None:
        self.sock = sock
        self.inbox = inbox
        self.gen = gen
        self._reader = worker(self._read, name=f"reader-{gen}")

    def start(self) -> None:
        self._reader.start()

    def send(self, line: bytes) -> None:
        try:
            self.sock.sendall(line + b"\n")
        except OSError:
            pass  # the reader sees the connection end and reports it

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _read(self) -> None:
        error: Optional[str] = None
        lines = Lines(MAX_SERVER_LINE)
        try:
            while True:
                data = self.sock.recv(65536)
                for line in lines.feed(data) if data else lines.end():
                    self.inbox.post(ServerLine(self.gen, line))
                if not data:
                    break
        except OSError as exc:
            error = describe(exc)
        self.inbox.post(ServerClosed(self.gen, error))


class Reconnector:
    """Connects again in the background, with backoff; posts the result."""

    def __init__(self, host: str, port: int, inbox: Inbox) -> None:
        self.host, self.port, self.inbox = host, port, inbox
        self.attempts = 0
        self._stop = threading.Event()

    def start(self) -> None:
        worker(self._run, name="reconnect").start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(reconnect_delay(self.attempts)):
            self.attempts += 1
            try:
                sock = connect(self.host, self.port)
            except OSError as exc:
                more = self.attempts < RECONNECT_ATTEMPTS
                delay = reconnect_delay(self.attempts) if more else None
                self.inbox.post(ReconnectFailed(self.attempts, describe(exc), delay))
                if not more:
                    return
                continue
            self.inbox.post(Reconnected(sock))
            return


def read_input(fd: int, inbox: Inbox, slots: threading.Semaphore) -> None:
    """Input lines to events; ``slots`` keeps it at most INPUT_WINDOW lines ahead.

    Reads the file descriptor with ``os.read``: a daemon thread blocked inside
    ``sys.stdin.buffer`` would hold its lock, and the interpreter aborts when it
    finds that lock taken at exit.
    """
    lines = Lines(MAX_INPUT_LINE)
    try:
        while True:
            data = os.read(fd, 65536)
            for line in lines.feed(data) if data else lines.end():
                slots.acquire()
                inbox.post(InputLine(line))
            if not data:
                break
    except OSError:
        pass
    inbox.post(InputEnd())


# --- the runners ---------------------------------------------------------------------


class Phase(enum.Enum):
    """Where a runner is in its session; both modes go through the same phases."""

    GREETING = "greeting"  # connected; the server has not asked for a name yet
    NAMING = "naming"  # asked, and we have no name to send yet
    NAME_SENT = "name_sent"  # waiting for hello, a password prompt or a refusal
    PASSWORD = "password"  # the server asked for a password and we have none to send
    CHAT = "chat"  # logged in
    CLOSING = "closing"  # we said bye; waiting for the server to close
    RECONNECTING = "reconnecting"  # the connection is gone; the reconnector is trying


class Runner(abc.ABC):
    """What both modes share: the connection, the session state and phase, the one
    dispatch of events and server lines, logging in (again, after a reconnect) and
    leaving.

    A mode is a subclass that supplies its input and output: how a server line is
    shown (``show_line``) and the client's own notes (``note``), what happens when
    the server asks for a name nobody gave (``ask_name``), refuses one
    (``name_refused``) or lets us in (``logged_in``), and what a line answers
    (``on_reply``).
    """

    needs_goodbye = False  # after our bye, is only the server's goodbye a clean exit?

    def __init__(self, args: argparse.Namespace, inbox: Inbox) -> None:
        self.args = args
        self.inbox = inbox
        self.address = f"{args.host}:{args.port}"
        self.state = ChatState()
        self.conn: Optional[Connection] = None
        self.gen = 0
        self.phase = Phase.GREETING
        self.name: Optional[str] = (args.name or "").strip() or None  # blank: not given
        self.want_room: Optional[str] = args.room  # joined after the next hello
        self.close_by = 0.0
        self.result: Optional[Outcome] = None
        self.lost: Optional[Outcome] = None  # why we are reconnecting
        self.relogin = False  # logging in again after a reconnect
        # The password: from --password-file, or as typed; kept in memory for this run
        # only, so a reconnect logs in again without asking.
        self.password: Optional[bytes] = getattr(args, "password", None)
        self.password_sent = False  # the last thing we sent at login was the password
        self.reconnector = Reconnector(args.host, args.port, inbox)

    def open(self) -> bool:
        try:
            sock = connect(self.args.host, self.args.port)
        except OSError as exc:
            self.finish(
                Outcome(
                    ExitCode.CANNOT_CONNECT,
                    f"cannot connect to {self.address} ({describe(exc)}): "
                    f"is chatsvc running on {self.address}?",
                )
            )
            return False
        self.attach(sock)
        return True

    def attach(self, sock: socket.socket) -> None:
        self.gen += 1
        self.conn = Connection(sock, self.inbox, self.gen)
        self.state.new_connection()
        self.enter(Phase.GREETING)
        self.conn.start()

    def detach(self) -> None:
        self.gen += 1  # whatever the old reader still posts is stale
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(self, line: bytes) -> None:
        if self.conn is not None:
            self.conn.send(line)

    def enter(self, phase: Phase) -> None:
        self.phase = phase

    def finish(self, outcome: Outcome) -> None:
        if self.result is None:
            self.result = outcome
        self.reconnector.stop()
        self.detach()

    def report(self) -> int:
        outcome = self.result or Outcome(ExitCode.OK)
        if outcome.message:
            complain(outcome.message)
        return int(outcome.code)

    # --- the one dispatch: events, and what a server line makes us do ---------------

    def handle(self, ev: Event) -> None:
        if isinstance(ev, (ServerLine, ServerClosed)) and ev.gen != self.gen:
            return  # from a connection we already gave up
        if isinstance(ev, ServerLine):
            self.on_server_line(ev.raw)
        elif isinstance(ev, ServerClosed):
            self.on_closed(ev.error)
        elif isinstance(ev, Reconnected):
            self.attach(ev.sock)
            self.on_reconnected()
        elif isinstance(ev, ReconnectFailed):
            self.on_reconnect_failed(ev)
        elif isinstance(ev, InputLine):
            self.on_input_line(ev.raw)
        else:
            self.on_input_end()

    def on_server_line(self, raw: bytes) -> None:
        meaning = self.state.apply(raw.decode("utf-8", "replace"))
        kind = kind_of(meaning, self.state.me)
        self.show_line(raw, meaning, kind)
        self.react(meaning, kind)

    def react(self, meaning: Meaning, kind: Kind) -> None:
        """What a server line makes the client do, in either mode.

        The name prompt is answered and hello starts the chat; in between, any
        error refuses the name we sent.  After hello a line may answer what we
        sent (``on_reply``).  A kick, a shutdown notice, goodbye or an error just
        before the close (idle, flood, server full...) are recorded by
        ``ChatState.apply`` and decide, once the server closes the connection,
        how we exit or whether we reconnect (``on_closed``).
        """
        if meaning.what is What.NAME_PROMPT:
            self.on_name_prompt()
        elif meaning.what is What.PASSWORD_PROMPT and self.phase is Phase.NAME_SENT:
            self.on_password_prompt(meaning.args[0])
        elif meaning.what is What.HELLO:
            self.on_hello()
        elif self.phase is Phase.NAME_SENT and kind is Kind.ERROR:
            self.on_name_refused(meaning.text[2:])
        elif self.phase in (Phase.CHAT, Phase.CLOSING):
            self.on_reply(meaning, kind)

    # --- logging in: the first time, and again after a reconnect --------------------

    def on_name_prompt(self) -> None:
        if self.relogin and self.state.me:
            self.name = self.state.me  # log in again as who we were
        if self.name:
            self.send_name(self.name)
        else:
            self.enter(Phase.NAMING)
            self.ask_name()

    def send_name(self, name: str) -> None:
        self.send(name.encode("utf-8", "surrogateescape"))
        self.password_sent = False
        self.enter(Phase.NAME_SENT)

    def on_password_prompt(self, name: str) -> None:
        if self.password is not None:
            self.send_password(self.password)
        else:
            self.enter(Phase.PASSWORD)
            self.ask_password(name)

    def send_password(self, password: bytes) -> None:
        self.send(password)
        self.password_sent = True
        self.enter(Phase.NAME_SENT)

    def on_name_refused(self, why: str) -> None:
        if self.password_sent and not self.relogin:
            self.password = None  # wrong, or refused: ask again next time
        if self.relogin:  # our old session may linger a moment: try again later
            self.enter(Phase.RECONNECTING)
            self.lose(Outcome(ExitCode.REFUSED, f"login failed: {why}", True))
        else:
            self.name = None
            self.name_refused(why)

    def on_hello(self) -> None:
        self.enter(Phase.CHAT)
        self.reconnector.attempts = 0
        back, self.lost = self.lost is not None, None
        want = self.want_room
        self.logged_in(back, want if want and want != self.state.room else None)

    # --- leaving and losing the connection ------------------------------------------

    def say_bye(self, line: bytes = b"bye") -> None:
        self.send(line)
        self.enter(Phase.CLOSING)
        self.close_by = time.monotonic() + CLOSE_TIMEOUT

    def timeout(self, now: float) -> Optional[float]:
        return max(0.0, self.close_by - now) if self.phase is Phase.CLOSING else None

    def check_close_timeout(self, now: float) -> None:
        if self.phase is not Phase.CLOSING or now < self.close_by:
            return
        if self.state.goodbye or not self.needs_goodbye:
            self.finish(Outcome(ExitCode.OK))
        else:
            self.finish(Outcome(ExitCode.CONNECTION_LOST, "no goodbye from the server"))

    def on_closed(self, error: Optional[str]) -> None:
        outcome = self.state.outcome(error, self.address)
        if self.phase is Phase.CLOSING:  # we said bye: nothing to reconnect for
            self.finish(outcome if self.needs_goodbye else Outcome(ExitCode.OK))
            return
        if outcome.retry and self.args.reconnect:
            self.note(f"{outcome.message}; reconnecting")
            if self.state.logged_in:
                self.want_room = self.state.room
            self.enter(Phase.RECONNECTING)
        self.lose(outcome)

    def lose(self, outcome: Outcome) -> None:
        """The connection ended unasked: reconnect if wanted and sensible, else finish."""
        self.detach()
        if not (self.args.reconnect and outcome.retry):
            self.finish(outcome)
            return
        self.lost = self.lost or outcome
        self.relogin = True
        self.reconnector.start()

    @abc.abstractmethod
    def on_reconnected(self) -> None:
        """A new connection is up; the server's name prompt takes it from here."""

    def on_reconnect_failed(self, ev: ReconnectFailed) -> None:
        if ev.next_delay is None:
            lost = self.lost or Outcome(ExitCode.CONNECTION_LOST, "connection lost")
            self.finish(
                Outcome(
                    lost.code,
                    f"{lost.message}; gave up reconnecting after "
                    f"{ev.attempt} attempts ({ev.error})",
                )
            )

    # --- what a mode supplies -------------------------------------------------------

    @abc.abstractmethod
    def show_line(self, raw: bytes, meaning: Meaning, kind: Kind) -> None:
        """Show or copy one server line, before the client acts on it."""

    @abc.abstractmethod
    def note(self, text: str) -> None:
        """A notice of the client's own (not from the server)."""

    @abc.abstractmethod
    def ask_name(self) -> None:
        """The server wants a name and we have none: the next input line is it."""

    @abc.abstractmethod
    def ask_password(self, name: str) -> None:
        """The server wants a password for ``name`` and we have none: get one."""

    @abc.abstractmethod
    def name_refused(self, why: str) -> None:
        """The server refused the name we gave (not after a reconnect)."""

    @abc.abstractmethod
    def logged_in(self, back: bool, join: Optional[str]) -> None:
        """After hello; ``back``: after a reconnect, ``join``: the room to go to."""

    @abc.abstractmethod
    def on_reply(self, meaning: Meaning, kind: Kind) -> None:
        """A server line after hello: it may answer a line we sent."""

    @abc.abstractmethod
    def on_input_line(self, raw: bytes) -> None:
        """A line from stdin's reader thread."""

    @abc.abstractmethod
    def on_input_end(self) -> None:
        """stdin ended."""


class ScriptedRunner(Runner):
    """stdin is not a terminal: send each line, copy server lines to stdout as they are."""

    needs_goodbye = True  # only the server's goodbye says that every line arrived

    def __init__(
        self, args: argparse.Namespace, inbox: Inbox, stdin_fd: int, stdout: BinaryIO
    ) -> None:
        super().__init__(args, inbox)
        self.stdin_fd, self.stdout = stdin_fd, stdout
        self.outbox = Outbox()
        self.slots = threading.Semaphore(INPUT_WINDOW)
        self.owed = 0  # slots held by lines sitting in the outbox
        self.join_line: Optional[bytes] = None
        self.input_done = False

    def run(self) -> int:
        try:
            if self.open():
                worker(read_input, self.stdin_fd, self.inbox, self.slots, name="stdin").start()
                self.loop()
        except KeyboardInterrupt:
            if self.phase is Phase.CHAT:
                self.send(b"bye")
            self.finish(Outcome(ExitCode.INTERRUPTED, "interrupted"))
        return self.report()

    def loop(self) -> None:
        while self.result is None:
            self.inbox.wait(self.timeout(time.monotonic()))
            for ev in self.inbox.drain():
                if self.result is None:
                    self.handle(ev)
            if self.result is None:
                self.step(time.monotonic())

    def timeout(self, now: float) -> Optional[float]:
        wake = self.outbox.wake_at() if self.phase is Phase.CHAT else None
        return super().timeout(now) if wake is None else max(0.0, wake - now)

    def note(self, text: str) -> None:
        complain(text)

    def show_line(self, raw: bytes, meaning: Meaning, kind: Kind) -> None:
        try:
            self.stdout.write(raw + b"\n")
            self.stdout.flush()
        except (OSError, ValueError):
            pass  # nobody reads our output any more; keep delivering the input

    def on_input_line(self, raw: bytes) -> None:
        if self.phase is Phase.PASSWORD:  # no --password-file: the next line is it
            self.slots.release()
            self.password = raw
            self.send_password(raw)
        elif not raw.strip():  # the server ignores blank lines and would not answer
            self.slots.release()
        elif self.name is None:
            self.name = raw.strip().decode("utf-8", "surrogateescape")
            self.slots.release()
            if self.phase is Phase.NAMING:
                self.send_name(self.name)
        else:
            self.outbox.lines.append(raw)
            self.owed += 1
            self.release_slots()

    def on_input_end(self) -> None:
        self.input_done = True

    def release_slots(self) -> None:
        while self.owed and len(self.outbox.lines) < INPUT_WINDOW:
            self.owed -= 1
            self.slots.release()

    def ask_name(self) -> None:
        pass  # the first input line is the name (on_input_line sends it)

    def ask_password(self, name: str) -> None:
        if self.relogin:  # asked anew after a reconnect: no line of input is meant for it
            self.finish(Outcome(ExitCode.REFUSED, f"login failed: {name} now needs a password"))
        elif self.outbox.lines:  # read ahead already: the line after the name
            line = self.outbox.lines.popleft()
            if self.owed:
                self.owed -= 1
                self.slots.release()
            self.password = line
            self.send_password(line)
        elif self.input_done:
            self.finish(Outcome(ExitCode.REFUSED, f"login failed: no password for {name}"))

    def name_refused(self, why: str) -> None:
        self.finish(Outcome(ExitCode.REFUSED, f"name rejected: {why}"))

    def logged_in(self, back: bool, join: Optional[str]) -> None:
        if back:
            self.note(f"reconnected to {self.address}")
        if join:
            self.join_line = f"/join {join}".encode()
            self.outbox.lines.appendleft(self.join_line)

    def on_reply(self, meaning: Meaning, kind: Kind) -> None:
        answered = self.outbox.on_reply(meaning, kind, time.monotonic())
        if answered is not None and answered == self.join_line:
            self.join_line = None
            if self.state.room != self.want_room:
                why = self.state.final_error or "no answer"
                self.finish(Outcome(ExitCode.REFUSED, f"cannot join {self.want_room}: {why}"))

    def on_closed(self, error: Optional[str]) -> None:
        if self.phase is not Phase.CLOSING:  # the line in flight may be lost: again
            if self.outbox.in_flight is not None and self.outbox.in_flight == self.join_line:
                self.outbox.in_flight = None  # joined again after the next hello
            self.outbox.requeue()
        super().on_closed(error)

    def on_reconnected(self) -> None:
        pass  # said once logged in again (logged_in)

    def on_reconnect_failed(self, ev: ReconnectFailed) -> None:
        self.note(f"reconnect attempt {ev.attempt} failed ({ev.error})")
        super().on_reconnect_failed(ev)

    def step(self, now: float) -> None:
        if self.phase is Phase.NAMING and self.input_done:
            self.finish(Outcome(ExitCode.OK))  # no input at all, not even a name
        elif self.phase is Phase.PASSWORD and self.input_done:
            self.finish(Outcome(ExitCode.REFUSED, "login failed: no password given"))
        elif self.phase is Phase.CHAT:
            self.outbox.check(now)
            line = self.outbox.take(now)
            if line is not None:
                self.send(line)
                self.release_slots()
            elif self.input_done and self.outbox.idle:
                self.say_bye()
        else:
            self.check_close_timeout(now)


class Key(enum.Enum):
    EOF = "eof"
    INTERRUPT = "interrupt"


UserInput = Union[str, Key]


class Console(Protocol):
    """The terminal as the interactive runner sees it."""

    def start(self, completer: Callable[[str, str], list[str]]) -> None: ...

    def stop(self) -> None: ...

    def wait(self, timeout: Optional[float]) -> list[UserInput]:
        """Wait for input or an inbox event; return the input lines it got."""
        ...

    def update(self, lines: Sequence[str], prompt: Optional[str]) -> None:
        """Print ``lines`` above the input line and show ``prompt`` (None: no input line)."""
        ...

    def accepted(self, line: str, echoed: bool) -> None:
        """The user entered ``line``; ``echoed``: the server will show it back."""
        ...

    def secret(self, on: bool) -> None:
        """While on, the next line is typed without echo and kept out of history."""
        ...


class InteractiveRunner(Runner):
    """stdin is a terminal: a chat program."""

    def __init__(
        self, args: argparse.Namespace, inbox: Inbox, console: Console, colour: bool
    ) -> None:
        super().__init__(args, inbox)
        self.console = console
        self.colour = colour
        self.held: list[str] = []  # typed before login finished
        self.quiet_rooms = 0  # /rooms replies to swallow (sent to learn room names)
        self.prompt: Optional[str] = ""
        self.display: list[str] = []

    def run(self) -> int:
        if not self.open():
            return self.report()
        self.console.start(self.complete)
        try:
            self.console.update([], self.prompt)
            while self.result is None:
                try:
                    items = self.console.wait(self.timeout(time.monotonic()))
                except KeyboardInterrupt:  # the plain console has no handler of its own
                    items = [Key.INTERRUPT]
                for item in items:
                    self.on_input(item)
                for ev in self.inbox.drain():
                    if self.result is None:
                        self.handle(ev)
                self.check_close_timeout(time.monotonic())
                self.console.update(self.display, None if self.result else self.prompt)
                self.display = []
        finally:
            self.console.stop()
        return self.report()

    def enter(self, phase: Phase) -> None:
        super().enter(phase)
        # Greeting and reconnecting keep the prompt there was.
        self.console.secret(phase is Phase.PASSWORD)
        prompts = {
            Phase.NAMING: NAME_PROMPT,
            Phase.NAME_SENT: "",
            Phase.CHAT: self.state.prompt,
            Phase.CLOSING: None,
        }
        if phase in prompts:
            self.prompt = prompts[phase]

    def complete(self, before: str, word: str) -> list[str]:
        if self.phase is not Phase.CHAT:
            return []
        return complete(before, word, self.state.rooms, self.state.names - {self.state.me})

    def show(self, text: str, kind: Kind) -> None:
        self.display.append(colourize(sanitize(text), kind, self.colour))

    def note(self, text: str) -> None:
        self.show(f"* {text}", Kind.NOTICE)

    def show_line(self, raw: bytes, meaning: Meaning, kind: Kind) -> None:
        if meaning.what in (What.NAME_PROMPT, What.PASSWORD_PROMPT):
            return  # our own prompt asks instead
        if meaning.what is What.ROOMS and self.quiet_rooms:
            self.quiet_rooms -= 1
            return
        self.show(meaning.text, kind)

    # --- input ---------------------------------------------------------------------

    def on_input_line(self, raw: bytes) -> None:  # from the plain console's stdin thread
        self.on_input(raw.decode(sys.stdin.encoding or "utf-8", "replace"))

    def on_input_end(self) -> None:
        self.on_input(Key.EOF)

    def on_input(self, item: UserInput) -> None:
        if isinstance(item, Key):
            self.leave()
            return
        self.console.accepted(item, echoed=self.phase is Phase.CHAT and not is_command(item))
        if self.phase is Phase.PASSWORD:
            self.password = item.encode("utf-8", "surrogateescape")
            self.send_password(self.password)
        elif self.phase in (Phase.GREETING, Phase.NAME_SENT):
            self.held.append(item)
        elif self.phase is Phase.NAMING:
            self.offer_name(item)
        elif self.phase is Phase.RECONNECTING:
            self.show("! not connected (reconnecting); the line was not sent", Kind.ERROR)
        elif self.phase is Phase.CHAT:
            self.say(item)

    def say(self, line: str) -> None:
        if not line.strip():
            return
        if is_quit(line):
            self.say_bye(line.encode())
            return
        if line.strip().lower() == "/help":
            for text in CLIENT_HELP:
                self.show(f"* {text}", Kind.NOTICE)
        self.send(line.encode())

    def offer_name(self, line: str) -> None:
        name = line.strip()
        if name:
            self.send_name(name)

    def leave(self) -> None:
        """Ctrl-D or Ctrl-C: say bye when logged in, otherwise just go."""
        if self.phase is Phase.CHAT:
            self.say_bye()
        else:
            self.finish(Outcome(ExitCode.OK))

    def replay(self) -> None:
        held, self.held = self.held, []
        for line in held:
            if self.phase is Phase.NAMING:
                self.offer_name(line)
            elif self.phase is Phase.CHAT:
                self.say(line)
            else:
                self.held.append(line)

    # --- what the shared dispatch asks of us ---------------------------------------

    def ask_name(self) -> None:
        self.replay()  # a line typed early is the name

    def ask_password(self, name: str) -> None:
        if self.held:  # typed (and shown) before the question: neither password nor chat
            self.held = []
            self.note("what you typed before the password prompt was not sent")
        self.prompt = PASSWORD_PROMPT.format(name)  # typed without echo (Console.secret)

    def name_refused(self, why: str) -> None:
        self.enter(Phase.NAMING)  # the server showed why; ask again
        self.ask_name()

    def logged_in(self, back: bool, join: Optional[str]) -> None:
        self.send(b"/rooms")  # quietly, for Tab completion of room names
        self.quiet_rooms += 1
        if join:
            self.send(f"/join {join}".encode())
        self.replay()

    def on_reply(self, meaning: Meaning, kind: Kind) -> None:
        if meaning.what is What.JOINED and self.phase is Phase.CHAT:
            self.prompt = self.state.prompt

    def on_reconnected(self) -> None:
        self.note(f"reconnected to {self.address}")

    def on_reconnect_failed(self, ev: ReconnectFailed) -> None:
        if ev.next_delay is not None:
            self.note(
                f"reconnect attempt {ev.attempt} failed ({ev.error}); next in {ev.next_delay:g} s"
            )
        super().on_reconnect_failed(ev)


# --- terminals -------------------------------------------------------------------------


class Readline:
    """The parts of GNU readline's C API that Python's readline module does not offer.

    The alternate (callback) interface lets the main thread wait in ``select``
    on the terminal and the inbox at once, so incoming lines are printed between
    keystrokes -- never while readline is drawing -- and the input line is
    redrawn with its text and cursor intact.
    """

    SYMBOLS = (
        "rl_callback_handler_install",
        "rl_callback_handler_remove",
        "rl_callback_read_char",
        "rl_clear_visible_line",
        "rl_forced_update_display",
        "rl_set_prompt",
        "rl_get_screen_size",
        "rl_resize_terminal",
        "rl_insert_text",
        "rl_redisplay",
        "rl_line_buffer",
        "rl_point",
    )

    def __init__(self, module: Any, lib: Any, libc: Any, ctypes: Any) -> None:
        self.module, self.lib, self.libc, self.ctypes = module, lib, libc, ctypes
        self.line_handler_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        lib.rl_callback_handler_install.argtypes = [ctypes.c_char_p, self.line_handler_type]
        lib.rl_callback_handler_install.restype = None
        lib.rl_callback_handler_remove.restype = None
        lib.rl_callback_read_char.restype = None
        lib.rl_set_prompt.argtypes = [ctypes.c_char_p]
        size_p = ctypes.POINTER(ctypes.c_int)
        lib.rl_get_screen_size.argtypes = [size_p, size_p]
        lib.rl_get_screen_size.restype = None
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
        libc.fflush.argtypes = [ctypes.c_void_p]
        lib.rl_insert_text.argtypes = [ctypes.c_char_p]
        lib.rl_redisplay.restype = None

    def typed(self) -> tuple[bytes, int]:
        """The input line's bytes and the cursor's offset in them."""
        buffer = self.ctypes.c_char_p.in_dll(self.lib, "rl_line_buffer").value or b""
        return buffer, int(self.ctypes.c_int.in_dll(self.lib, "rl_point").value)

    def retype(self, buffer: bytes, point: int) -> None:
        """Put ``buffer`` back on a freshly installed input line, cursor at ``point``."""
        if buffer:
            self.lib.rl_insert_text(buffer)
            self.ctypes.c_int.in_dll(self.lib, "rl_point").value = min(point, len(buffer))
            self.lib.rl_redisplay()

    @classmethod
    def load(cls) -> Optional[Readline]:
        """GNU readline >= 7 through ctypes, or None (libedit, Windows, no ctypes)."""
        try:
            import ctypes
            import readline
        except ImportError:
            return None
        libedit = "libedit" in (readline.__doc__ or "")  # before 3.13 only the doc says
        if getattr(readline, "backend", "editline" if libedit else "readline") != "readline":
            return None
        for path in (getattr(readline, "__file__", None), None):
            try:
                lib = ctypes.CDLL(path)
                libc = ctypes.CDLL(None)
            except (OSError, TypeError):
                continue
            if all(hasattr(lib, name) for name in cls.SYMBOLS) and hasattr(libc, "free"):
                return cls(readline, lib, libc, ctypes)
        return None

    def screen_columns(self) -> int:
        rows, cols = self.ctypes.c_int(0), self.ctypes.c_int(0)
        self.lib.rl_get_screen_size(self.ctypes.byref(rows), self.ctypes.byref(cols))
        return int(cols.value) or 80


class ReadlineConsole:
    """The terminal through GNU readline's callback interface (see :class:`Readline`)."""

    def __init__(self, rl: Readline, inbox: Inbox, out: TextIO) -> None:
        self.rl = rl
        self.lib = rl.lib
        self.inbox = inbox
        self.wake_fd = inbox.wakeup_fd()
        self.out = out
        self.stdin_fd = sys.stdin.fileno()
        self.encoding = sys.stdin.encoding or "utf-8"
        self.prompt: Optional[str] = None
        self.installed = False
        self.prompt_at_accept = ""
        self.ready: list[UserInput] = []
        self.signals: list[int] = []
        self.saved_handlers: dict[int, Any] = {}
        self.completer: Callable[[str, str], list[str]] = lambda before, word: []
        self.matches: list[str] = []
        self.suspended_input: tuple[bytes, int] = (b"", 0)  # typed before Ctrl-Z
        self.hidden = NoEcho(self.stdin_fd)  # a password: readline stays away meanwhile
        # kept referenced: readline holds a pointer to it
        self.line_handler = rl.line_handler_type(self._on_line)

    def start(self, completer: Callable[[str, str], list[str]]) -> None:
        self.completer = completer
        module = self.rl.module
        module.set_completer(self._complete)
        module.set_completer_delims(" \t\n")
        module.parse_and_bind("tab: complete")
        for signum in HANDLED_SIGNALS:
            self.saved_handlers[signum] = signal.signal(signum, self._on_signal)

    def stop(self) -> None:
        self.hidden.set(False)  # never leave the terminal without echo
        if self.installed:
            self._uninstall()
        for signum, handler in self.saved_handlers.items():
            signal.signal(signum, handler)
        self.out.flush()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # acted on by wait(), between keystrokes
        self.inbox.poke()

    def secret(self, on: bool) -> None:
        if on and not self.hidden.on:
            if self.installed:
                self._uninstall()
            self.prompt = None
        self.hidden.set(on)

    def wait(self, timeout: Optional[float]) -> list[UserInput]:
        if self.hidden.on:
            return self.hidden.wait(self.wake_fd, timeout, self.signals, self.out)
        fds = [self.wake_fd, self.stdin_fd] if self.installed else [self.wake_fd]
        readable, _, _ = select.select(fds, [], [], timeout)
        signals, self.signals = self.signals, []
        if signal.SIGTSTP in signals:
            self._suspend()
        if signal.SIGWINCH in signals and self.installed:
            self.lib.rl_resize_terminal()
        if signal.SIGINT in signals or signal.SIGTERM in signals:
            if self.installed:
                self._uninstall()
            self.ready.append(Key.INTERRUPT)
        elif self.stdin_fd in readable and self.installed:
            self.lib.rl_callback_read_char()
            if Key.EOF in self.ready:
                self._write("\r\x1b[K")  # readline leaves the prompt of the empty line
        ready, self.ready = self.ready, []
        return ready

    def update(self, lines: Sequence[str], prompt: Optional[str]) -> None:
        if self.hidden.on:  # no readline while a password is typed
            self.hidden.show(self.out, lines, prompt)
            return
        if self.installed and (lines or prompt != self.prompt):
            self._clear_input_line()
            if prompt is None:
                self._uninstall()
        self._write("".join(line + "\n" for line in lines))
        if prompt is None:
            self.prompt = None
        elif not self.installed:
            self.prompt = prompt
            self.lib.rl_callback_handler_install(self._encode(prompt), self.line_handler)
            self.installed = True
            self.rl.retype(*self.suspended_input)
            self.suspended_input = (b"", 0)
        elif lines or prompt != self.prompt:
            if prompt != self.prompt:
                self.prompt = prompt
                self.lib.rl_set_prompt(self._encode(prompt))
            self.lib.rl_forced_update_display()

    def _suspend(self) -> None:
        """Ctrl-Z: give the terminal back as we found it, stop, and carry on when resumed."""
        if self.installed:
            self.suspended_input = self.rl.typed()
            self._uninstall()  # update() installs it again: prompt and typed text
        os.kill(os.getpid(), signal.SIGSTOP)

    def accepted(self, line: str, echoed: bool) -> None:
        if self.hidden.on:
            return  # a password: never in history
        if line.strip() and self.prompt_at_accept != NAME_PROMPT:
            self._remember(line)
        if echoed and line.strip():
            # The server shows the line back in its place in the conversation;
            # leaving the typed copy too would print every message twice.
            rows = input_rows(self.prompt_at_accept, line, self.rl.screen_columns())
            self._write(f"\x1b[{rows}A\r\x1b[J")

    def _remember(self, line: str) -> None:
        module = self.rl.module
        n = module.get_current_history_length()
        if n == 0 or module.get_history_item(n) != line:
            module.add_history(line)

    def _on_line(self, ptr: Optional[int]) -> None:
        # Called from inside rl_callback_read_char; exceptions here would be lost.
        try:
            if ptr is None:
                self.ready.append(Key.EOF)
            else:
                raw = self.rl.ctypes.string_at(ptr)
                self.rl.libc.free(ptr)
                self.ready.append(raw.decode(self.encoding, "replace"))
            self.prompt_at_accept = self.prompt or ""
        finally:
            # No new prompt until the runner has dealt with the line.
            self.lib.rl_callback_handler_remove()
            self.installed = False

    def _complete(self, word: str, state: int) -> Optional[str]:
        if state == 0:
            module = self.rl.module
            before = module.get_line_buffer()[: module.get_begidx()]
            self.matches = self.completer(before, word)
        return self.matches[state] if state < len(self.matches) else None

    def _clear_input_line(self) -> None:
        self.out.flush()
        self.lib.rl_clear_visible_line()
        self.rl.libc.fflush(None)

    def _uninstall(self) -> None:
        self._clear_input_line()
        self.lib.rl_callback_handler_remove()
        self.installed = False

    def _encode(self, text: str) -> bytes:
        return text.encode(self.encoding, "replace")

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
        self.out.flush()


class NoEcho:
    """A password line on a terminal: echo off (``termios``), read as a whole line.

    Used by both consoles; with readline its callback handler is removed first,
    so the terminal is in its ordinary line mode, just without echo.  Ctrl-C
    still interrupts (``ISIG`` stays), Ctrl-D ends input.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.on = False
        self.saved: Optional[list[Any]] = None
        self.buf = b""
        self.shown: Optional[str] = None

    def set(self, on: bool) -> None:
        if on == self.on:
            return
        self.on = on
        self.buf, self.shown = b"", None
        try:
            import termios
        except ImportError:  # pragma: no cover - not a Unix terminal
            return
        try:
            if on:
                self.saved = termios.tcgetattr(self.fd)
                quiet = termios.tcgetattr(self.fd)
                quiet[3] &= ~(termios.ECHO | termios.ECHONL)
                quiet[3] |= termios.ICANON | termios.ISIG
                termios.tcsetattr(self.fd, termios.TCSAFLUSH, quiet)
            elif self.saved is not None:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
                self.saved = None
        except (OSError, termios.error):
            pass

    def show(self, out: TextIO, lines: Sequence[str], prompt: Optional[str]) -> None:
        if lines and self.shown is not None:
            out.write("\r\x1b[K")
            self.shown = None
        out.write("".join(line + "\n" for line in lines))
        if prompt is not None and prompt != self.shown:
            out.write(prompt)
            self.shown = prompt
        out.flush()

    def wait(
        self, wake_fd: int, timeout: Optional[float], signals: list[int], out: TextIO
    ) -> list[UserInput]:
        readable, _, _ = select.select([wake_fd, self.fd], [], [], timeout)
        if signal.SIGINT in signals or signal.SIGTERM in signals:
            signals.clear()
            out.write("\n")
            return [Key.INTERRUPT]
        if self.fd not in readable:
            return []
        data = os.read(self.fd, 4096)
        if not data:
            out.write("\n")
            return [Key.EOF]
        self.buf += data
        if b"\n" not in self.buf:
            return []
        line, _, self.buf = self.buf.partition(b"\n")
        out.write("\n")  # the Enter was not echoed
        self.shown = None
        return [line.decode(sys.stdin.encoding or "utf-8", "surrogateescape")]


class PlainConsole:
    """Fallback without GNU readline: the terminal's own line editing, a stdin thread.

    Lines arriving while you type are printed with the prompt after them; what
    you had typed is still in the terminal's buffer but no longer shown.
    """

    def __init__(self, inbox: Inbox, out: TextIO, is_tty: bool) -> None:
        self.inbox = inbox
        self.out = out
        self.is_tty = is_tty
        self.prompt: Optional[str] = None
        self.prompt_shown = False
        self.slots = threading.Semaphore(INPUT_WINDOW)
        self.hidden = NoEcho(sys.stdin.fileno()) if is_tty else None

    def secret(self, on: bool) -> None:
        if self.hidden is not None:
            self.hidden.set(on)  # the stdin thread reads the line; the terminal does not echo

    def start(self, completer: Callable[[str, str], list[str]]) -> None:
        worker(read_input, sys.stdin.fileno(), self.inbox, self.slots, name="stdin").start()

    def stop(self) -> None:
        if self.hidden is not None:
            self.hidden.set(False)  # never leave the terminal without echo
        self.out.flush()

    def wait(self, timeout: Optional[float]) -> list[UserInput]:
        try:
            self.inbox.wait(timeout)
        except KeyboardInterrupt:
            self.out.write("\n")
            return [Key.INTERRUPT]
        return []

    def update(self, lines: Sequence[str], prompt: Optional[str]) -> None:
        out = self.out
        for line in lines:
            out.write(("\r\x1b[K" if self.is_tty and self.prompt_shown else "") + line + "\n")
            self.prompt_shown = False
        if prompt != self.prompt:
            self.prompt_shown = False
        self.prompt = prompt
        if prompt is not None and self.is_tty and not self.prompt_shown:
            out.write(prompt)
            self.prompt_shown = True
        out.flush()

    def accepted(self, line: str, echoed: bool) -> None:
        if self.hidden is not None and self.hidden.on:
            self.out.write("\n")  # the Enter was not echoed either
        self.prompt_shown = False  # the terminal moved to a new line
        self.slots.release()


# --- command line ------------------------------------------------------------------------


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range (1-65535): {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Console client for chatsvc. Interactive when stdin is a terminal; otherwise "
            "each input line is sent, server lines are copied to stdout, and at the end "
            "of input the client says bye and waits for the server to close."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="server address (%(default)s)")
    parser.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help="server port (%(default)s)"
    )
    parser.add_argument(
        "--name", help="log in with this name (default: ask, or the first input line)"
    )
    parser.add_argument("--room", help="join this room after logging in")
    parser.add_argument(
        "--password-file",
        metavar="PATH",
        help="when the server asks for a password, send the first line of this file "
        "(default: ask without echo on a terminal; the next input line when scripted)",
    )
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="when the connection is lost or the server restarts, reconnect with backoff "
        "and rejoin the room",
    )
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    args.password = None
    if args.password_file:
        try:
            with open(args.password_file, "rb") as fh:
                args.password = fh.readline().rstrip(b"\r\n")
        except OSError as exc:
            complain(f"cannot read the password file {args.password_file}: {describe(exc)}")
            return int(ExitCode.USAGE)
    inbox = Inbox()
    inbox.catch_signals()
    if not sys.stdin.isatty():
        return ScriptedRunner(args, inbox, sys.stdin.fileno(), sys.stdout.buffer).run()
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):
        out.reconfigure(errors="replace")  # show what the terminal cannot, never crash
    out_tty = out.isatty()
    rl = Readline.load() if out_tty else None
    console: Console = (
        ReadlineConsole(rl, inbox, out) if rl is not None else PlainConsole(inbox, out, out_tty)
    )
    return InteractiveRunner(args, inbox, console, colour_wanted(os.environ, out_tty)).run()


if __name__ == "__main__":
    sys.exit(main())
