"""The line protocol's input side as pure functions: bytes in, commands out.

Nothing here touches a socket, so all of it is unit-tested (and fuzzed) without
I/O.  What the server sends is rendered from events by ``chatsvc.dialects``.
``docs/protocol.md`` is the prose version of both.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple, Optional, Union

from chatsvc import events
from chatsvc.dialects import error_text

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
RESERVED_NAMES = frozenset(
    {"server", "admin", "system", "root", "chatsvc", "operator", "everyone", "nobody"}
)
# C0 controls except TAB, DEL and the C1 range: they could drive other users' terminals.
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Runs of blanks are squeezed to one space in chat text: a long run could push
# a forged "[lobby] alice: ..." to the start of its own row on a terminal that
# wraps at 80 columns while the rest of the line looked innocent.
_BLANKS_RE = re.compile("[ \t]{2,}|\t")
# Allowed although it is a format character: it joins emoji sequences and moves
# nothing on the screen.
_ZWJ = "\u200d"
MAX_NAME_TRIES = 5


class Overlong:
    """Marker for a line that exceeded the limit (it was discarded, not buffered)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG = Overlong()
Frame = Union[bytes, Overlong]


class LineSplitter:
    """Splits a byte stream into lines of at most ``limit`` bytes.

    A line that grows past the limit is reported once as ``OVERLONG`` and its
    remaining bytes are dropped as they arrive until the next newline, so memory
    stays bounded by the limit whatever the peer sends.
    """

    __slots__ = ("_buf", "_discarding", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (bounded by limit + 1)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[Frame] = []
        limit = self.limit
        start = 0
        find = data.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False  # the overlong line ended; already reported
            else:
                end = nl - 1 if nl > start and data[nl - 1] == 13 else nl  # strip \r
                out.append(data[start:end] if end - start <= limit else OVERLONG)
            start = nl + 1
        if not self._discarding:
            rest = data[start:]
            if len(rest) > limit + 1:  # +1: the \r of a \r\n may be all that is missing
                self._discarding = True
                out.append(OVERLONG)
            else:
                self._buf = rest
        return out


class DecodeError(ValueError):
    """A line that is not acceptable text; ``error`` says why, for the client."""

    def __init__(self, code: str, **params: object) -> None:
        self.error = events.error(code, **params)
        super().__init__(error_text(self.error))


def decode(raw: bytes) -> str:
    """Bytes of one line (terminator removed) to text, or DecodeError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("invalid_utf8") from None
    if _CONTROL_RE.search(text):
        raise DecodeError("control_characters")
    bad = invisible_character(text)
    if bad is not None:
        raise DecodeError("invisible_character", char=f"U+{ord(bad):04X}")
    return text


def text_problem(text: str) -> Optional[str]:
    """Why ``text`` may not appear on a line others see, or None if it may.

    Refused: C0/C1 controls other than TAB (they drive terminals), line and
    paragraph separators (a second line inside one), and invisible format
    characters such as bidi overrides (U+202E) or zero-width spaces, which make
    text look like something else.  The zero-width joiner of emoji is allowed.
    The same rule holds for users' lines and for operators' texts (kick and
    shutdown reasons, broadcasts).
    """
    if _CONTROL_RE.search(text):
        return "control characters are not allowed"
    bad = invisible_character(text)
    if bad is not None:
        return f"invisible or direction-changing characters (U+{ord(bad):04X}) are not allowed"
    return None


def invisible_character(text: str) -> Optional[str]:
    """The first line/paragraph separator or format character (ZWJ aside), if any."""
    if text.isascii():
        return None
    for ch in text:
        if ch > "\x7f" and ch != _ZWJ and unicodedata.category(ch) in ("Cf", "Zl", "Zp"):
            return ch
    return None


def squeeze(text: str) -> str:
    """Chat text as others see it: tabs and runs of blanks become one space."""
    return _BLANKS_RE.sub(" ", text) if ("  " in text or "\t" in text) else text


class Command(NamedTuple):
    """A parsed client line. ``kind`` selects the session's ``cmd_<kind>`` handler."""

    kind: str
    arg: str = ""
    text: str = ""


EMPTY = Command("empty")
COMMAND_USAGE = {
    "rooms": "/rooms",
    "join": "/join ROOM",
    "who": "/who",
    "msg": "/msg NAME TEXT",
    "help": "/help",
    "quit": "/quit",
}


def parse(text: str) -> Command:
    """Classify one decoded line after login."""
    stripped = text.strip()
    if not stripped:
        return EMPTY
    if stripped.lower() == "bye":
        return Command("quit")
    if not text.startswith("/"):
        return Command("chat", text=squeeze(text))
    if text.startswith("//"):
        return Command("chat", text=squeeze(text[1:]))
    word, _, rest = text[1:].partition(" ")
    kind = word.lower()
    rest = rest.strip()
    if kind not in COMMAND_USAGE:
        return Command("unknown", arg="/" + word)
    if kind == "join":
        return Command("join", arg=rest) if rest and " " not in rest else _usage(kind)
    if kind == "msg":
        target, _, body = rest.partition(" ")
        body = body.strip()
        return Command("msg", arg=target, text=squeeze(body)) if target and body else _usage(kind)
    if rest:
        return _usage(kind)
    return Command(kind)


def _usage(kind: str) -> Command:
    return Command("usage", arg=COMMAND_USAGE[kind])


def check_name(name: str, max_length: int) -> Optional[events.Error]:
    """Why ``name`` is not a valid user name, or None if it is."""
    if not name:
        return events.error("name_required")
    if len(name) > max_length:
        return events.error("name_too_long", max=max_length)
    if not NAME_RE.fullmatch(name):
        return events.error("name_invalid")
    if name.lower() in RESERVED_NAMES:
        return events.error("name_reserved", name=name)
    return None
