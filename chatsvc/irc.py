"""IRC: the parser (pure), the dialect objects and the IRC session's reader thread.

An IRC client is a member of the same hub as a line-protocol client: the same
rooms (shown as channels ``#ROOM``), one name space (a nick is a chatsvc name),
the same flood bucket, send-queue bound, timeouts, kicks, bans, broadcasts and
shutdown drain.  ``docs/irc.md`` is the prose version of this module.

Who renders what
  Room events (chat, joins, parts, quits, kicks, announcements) do not depend
  on who receives them, so :class:`IrcDialect` renders them and the hub does it
  once per dialect object per broadcast.  There is one dialect object per
  combination of negotiated capabilities (``dialect_for`` caches them), so
  every IRC member with the same capabilities shares the rendered bytes, as
  line-protocol members do.  Replies to one client (numerics) carry the
  recipient's nick: the session words them itself and hands them to the hub
  as ``events.Raw`` through ``Hub.tell``, in the member's own order.

Threads
  One reader thread per IRC connection runs :meth:`IrcSession.run`; like
  ``chatsvc.session.Session`` it only reads its socket and calls the hub, and
  everything on the session belongs to it.  The away book is shared between
  IRC sessions and guarded by its own small lock (it is IRC-only state the hub
  does not need).

Accounts
  ``PASS`` and SASL PLAIN (``AUTHENTICATE``) check a password through
  ``Authenticator.verify`` in the reader thread, never under the hub lock; a
  login makes the account name the nick (one name space with the line
  protocol).
"""

from __future__ import annotations

import base64
import binascii
import collections
import fnmatch
import functools
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple, Optional

from chatsvc import __version__, events, logsetup, protocol
from chatsvc.accounts import MAX_PASSWORD_BYTES, Authenticator, StoreError, Verdict
from chatsvc.dialects import REFUSAL_TEXT, error_text, shutdown_text
from chatsvc.events import Event
from chatsvc.hub import Hub, Member
from chatsvc.protocol import OVERLONG, Frame, LineSplitter
from chatsvc.session import (
    DROPPED,
    PAID,
    Receive,
    flood_bucket,
    is_text,
    pay,
    read_frames,
)

MAX_BODY = 510  # bytes of a line without tags and CRLF (RFC 1459: 512 with CRLF)
MAX_TAGS = 4096  # bytes of a client's tags part, '@' and the trailing space included (IRCv3)
MAX_PARAMS = 15
MAX_TARGETS = 4  # per PRIVMSG/NOTICE/JOIN/PART/WHOIS
WHO_MAX = 500  # users listed for a WHO with a wildcard mask
WHOWAS_HISTORY = 200  # IRC users remembered after they leave
MONITOR_MAX = 100  # names one connection may MONITOR (ISUPPORT MONITOR=100)
REALNAME_MAX = 100  # characters of a real name (USER, SETNAME)
SASL_CHUNK = 400  # base64 characters per AUTHENTICATE line (IRCv3 sasl-3.1)
# The most base64 one SASL PLAIN response may take: two names and the longest password.
SASL_MAX = 4 * ((MAX_PASSWORD_BYTES + 2 * 64 + 2) // 3 + 1)
SASL_MECHANISMS = ("PLAIN",)
# Capabilities offered; each combination gets its own dialect object.
CAPS = (
    "away-notify",
    "batch",
    "cap-notify",
    "echo-message",
    "extended-monitor",
    "labeled-response",
    "message-tags",
    "multi-prefix",
    "server-time",
    "setname",
    "userhost-in-names",
)
# IRC formatting codes (bold, colour, reset, reverse, italic, strike, underline,
# monospace): stripped from what IRC clients send, because line-protocol members'
# terminals would act on them.  Colour codes take their digits with them.
_FORMATTING_RE = re.compile("\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?|[\x02\x0f\x16\x1d\x1e\x1f\x11]")
# What a line-protocol member's "/me waves" becomes for IRC clients, and back.
ME = "/me "


# --- parsing (pure) ---------------------------------------------------------------


class Message(NamedTuple):
    """One parsed client line; ``command`` is upper-case."""

    tags: dict[str, str]
    source: str
    command: str
    params: tuple[str, ...]


class IrcParseError(ValueError):
    """A line that cannot be used: ``code`` is ``input_too_long`` or ``invalid_utf8``."""

    def __init__(self, code: str, command: str = "*") -> None:
        super().__init__(code)
        self.code = code
        self.command = command


def parse_line(raw: bytes) -> Optional[Message]:
    """One line (terminator removed) to a Message; None for a blank line.

    Raises IrcParseError for a line over the limits (512 bytes with CRLF, plus
    4096 for a client's tags) or one that is not UTF-8.
    """
    tags: dict[str, str] = {}
    if raw.startswith(b"@"):
        end = raw.find(b" ")
        if end < 0:
            return None
        if end + 1 > MAX_TAGS:
            raise IrcParseError("input_too_long")
        tags = _parse_tags(raw[1:end].decode("utf-8", "replace"))
        raw = raw[end + 1 :]
    raw = raw.lstrip(b" ")
    command_guess = _command_guess(raw)
    if len(raw) > MAX_BODY:
        raise IrcParseError("input_too_long", command_guess)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IrcParseError("invalid_utf8", command_guess) from None
    if "\x00" in text or "\r" in text:
        raise IrcParseError("invalid_utf8", command_guess)  # no NUL or bare CR in IRC
    source = ""
    if text.startswith(":"):
        source, _, text = text[1:].partition(" ")
        text = text.lstrip(" ")
    if not text:
        return None
    head, sep, trailing = text.partition(" :")
    if text.startswith(":"):  # a lone trailing parameter with no command
        return None
    words = [w for w in head.split(" ") if w]
    params = words[1:]
    if sep:
        params.append(trailing)
    return Message(tags, source, words[0].upper(), tuple(params[:MAX_PARAMS]))


def _command_guess(raw: bytes) -> str:
    """The command word of a line that could not be decoded, for ``FAIL <command>``."""
    words = [w for w in raw.split(b" ", 2) if w]
    if words and words[0].startswith(b":"):
        words = words[1:]
    word = re.sub(rb"[^A-Za-z0-9]", b"", words[0][:20]) if words else b""
    return word.decode().upper() or "*"


_TAG_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_TAG_ESCAPE = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})


def escape_tag(value: str) -> str:
    """A tag value as written on the wire (IRCv3 message-tags escaping)."""
    return value.translate(_TAG_ESCAPE)


def client_tags(tags: dict[str, str]) -> events.Tags:
    """The client-only tags (``+name``) of a client's message: the ones relayed."""
    return tuple((k, v) for k, v in tags.items() if k.startswith("+") and len(k) > 1)


def _parse_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        out, i = [], 0
        while i < len(value):
            ch = value[i]
            if ch == "\\" and i + 1 < len(value):
                i += 1
                ch = _TAG_UNESCAPE.get(value[i], value[i])
            elif ch == "\\":
                ch = ""
            out.append(ch)
            i += 1
        tags[key] = "".join(out)
    return tags


def irc_lower(text: str) -> str:
    """CASEMAPPING=ascii (chatsvc names are ASCII, so this is also their casefold)."""
    return text.lower() if text.isascii() else text.casefold()


# Commands whose last parameter is free text: always written with ':'.
_TEXT_LAST = frozenset({"PRIVMSG", "NOTICE", "QUIT", "ERROR", "KICK"})


def line(source: str, command: str, *params: str, colon: bool = False) -> str:
    """One wire line; the last parameter gets a ':' when it needs one (or ``colon``)."""
    parts = [f":{source} {command}" if source else command]
    if params:
        *middle, last = params
        parts.extend(middle)
        colon = colon or command in _TEXT_LAST
        if colon or not last or " " in last or last.startswith(":"):
            last = ":" + last
        parts.append(last)
    return " ".join(parts) + "\r\n"


def clean_text(text: str) -> tuple[str, Optional[str]]:
    """What an IRC client typed, as chatsvc text; (text, why not) — why is None if usable.

    Formatting codes are stripped; a CTCP ACTION becomes ``/me ...``; any other
    CTCP is refused, as is text the line protocol refuses (controls, invisible
    characters).  Runs of blanks are squeezed as in the line protocol.
    """
    if text.startswith("\x01"):
        body = text[1:].rstrip("\x01")
        verb, _, rest = body.partition(" ")
        if verb.upper() != "ACTION":
            return "", "ctcp"
        text = ME + rest
    text = _FORMATTING_RE.sub("", text)
    why = protocol.text_problem(text)
    if why is not None:
        return "", why
    return protocol.squeeze(text).strip(), None


def sasl_plain(response: bytes, name_max: int) -> tuple[str, bytes] | str:
    """A SASL PLAIN response (base64 of ``authzid NUL authcid NUL password``) to
    (account, password), or why not (words for 904).

    The authzid must be empty or the authcid (no acting as another account);
    the authcid must be a valid chatsvc name and the password not empty.
    """
    try:
        plain = base64.b64decode(response, validate=True) if response else b""
    except (binascii.Error, ValueError):
        return "invalid base64"
    parts = plain.split(b"\0")
    if len(parts) != 3 or not parts[2]:
        return "malformed PLAIN response"
    try:
        authzid, authcid = parts[0].decode(), parts[1].decode()
    except UnicodeDecodeError:
        return "malformed PLAIN response"
    if protocol.check_name(authcid, name_max) is not None:
        return "malformed PLAIN response"
    if authzid and authzid.casefold() != authcid.casefold():
        return "authorization identity must be empty or the account"
    return authcid, parts[2]


def pass_split(password: bytes, name_max: int) -> tuple[Optional[str], bytes]:
    """``PASS`` text to (account it names, password): ``name:password`` names the
    account when ``name`` is a valid chatsvc name; else (None, the whole text)."""
    head, sep, rest = password.partition(b":")
    if sep and head.isascii() and protocol.check_name(head.decode(), name_max) is None:
        return head.decode(), rest
    return None, password


def _chunks(text: str, room: int) -> Iterator[str]:
    """``text`` in pieces of at most ``room`` UTF-8 bytes, cut between characters."""
    data = text.encode()
    room = max(room, 16)
    while len(data) > room:
        cut = room
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a character
            cut -= 1
        yield data[:cut].decode()
        data = data[cut:]
    yield data.decode()


# --- the dialect ------------------------------------------------------------------

QUIT_WORDS = {
    "bye": "Quit",
    "eof": "Connection closed",
    "error": "Connection lost",
    "idle": "Idle timeout",
    "flood": "Excess flood",
    "send_queue_exceeded": "SendQ exceeded",
    "name_rejected": "Quit",
    "kicked": "Kicked",
}
CLOSING_ERRORS = frozenset({"flooding", "login_timeout", "idle_timeout", "too_many_names"})


class IrcDialect:
    """Renders events as IRC lines; shared by every IRC member with the same capabilities."""

    name = "irc"

    def __init__(self, server_name: str, network: str, caps: frozenset[str]) -> None:
        self.server_name = server_name
        self.network = network
        self.caps = caps
        self.echo_own = "echo-message" in caps
        self._time = "server-time" in caps
        self._tags = "message-tags" in caps
        # Hub.share: watchers with extended-monitor hear of AWAY/SETNAME too
        self.follows_watched = "extended-monitor" in caps
        away, setname = "away-notify" in caps, "setname" in caps
        self._table: dict[type[Any], Callable[[Any], str]] = {
            events.Chat: self._chat,
            events.Joined: lambda e: line(self.mask(e.name), "JOIN", "#" + e.room),
            events.Left: self._left,
            events.Kicked: lambda e: line(
                self.server_name, "KICK", "#" + e.room, e.name, e.reason or "kicked"
            ),
            events.Renamed: lambda e: line(self.mask(e.old), "NICK", e.new, colon=True),
            events.Announcement: lambda e: line(
                self.server_name, "NOTICE", "#" + e.room if e.room else "*", e.text
            ),
            events.ShuttingDown: self._shutting_down,
            events.Private: self._private,
            events.Welcome: lambda e: self.notice("*", f"chatsvc {e.version}"),
            events.Hello: lambda e: line(
                self.server_name,
                "001",
                e.name,
                f"Welcome to the {self.network} IRC network {self.mask(e.name)}",
            ),
            events.PasswordWanted: lambda e: "",  # IRC sends PASS before NICK
            events.NowIn: lambda e: "",
            events.YouWereKicked: lambda e: line("", "ERROR", f"Closing link: kicked ({e.reason})"),
            events.Goodbye: lambda e: line("", "ERROR", "Closing link: quit"),
            events.RoomList: lambda e: "",
            events.WhoList: lambda e: "",
            events.Help: lambda e: "",
            events.Error: self._error,
            events.Raw: lambda e: e.text,
            events.Presence: self._presence,
            events.Away: lambda e: (
                ""
                if not away
                else line(self.mask(e.name), "AWAY", e.text, colon=True)
                if e.text
                else line(self.mask(e.name), "AWAY")
            ),
            events.RealName: lambda e: (
                line(self.mask(e.name), "SETNAME", e.realname, colon=True) if setname else ""
            ),
        }

    def mask(self, nick: str) -> str:
        """``nick!nick@server``: the only user and host chatsvc knows for a name."""
        return f"{nick}!{nick}@{self.server_name}"

    def notice(self, target: str, text: str) -> str:
        return line(self.server_name, "NOTICE", target, text)

    def render(self, event: Event) -> bytes:
        text = self._table[type(event)](event)
        if not text:
            return b""
        tags = []
        if self._time:
            stamp = getattr(event, "time", None)
            tags.append("time=" + _iso(stamp if isinstance(stamp, float) else time.time()))
        if self._tags and isinstance(event, (events.Chat, events.Private)) and event.msgid:
            tags.append("msgid=" + event.msgid)
            tags += [f"{k}={escape_tag(v)}" if v else k for k, v in event.tags]
        if tags:
            tag = ";".join(tags)
            text = "".join(_add_tag(ln, tag) + "\r\n" for ln in text.split("\r\n") if ln)
        return text.encode()

    def _presence(self, e: events.Presence) -> str:
        who = self.mask(e.name) if e.online else e.name
        return line(self.server_name, "730" if e.online else "731", "*", who, colon=True)

    def _message(self, source: str, target: str, text: str, notice: bool) -> str:
        verb = "NOTICE" if notice else "PRIVMSG"
        if text.startswith(ME) and not notice:
            action = "\x01ACTION " + text[len(ME) :] + "\x01"
            return line(source, verb, target, action, colon=True)
        # Text an IRC client could send (510 bytes) goes out whole, even if the
        # prefix takes the line past 512 (as Ergo does; clients take it); longer
        # line-protocol text is cut into pieces of that size.
        return "".join(line(source, verb, target, c, colon=True) for c in _chunks(text, MAX_BODY))

    def _chat(self, e: events.Chat) -> str:
        if e.tagmsg:  # only for clients that take tags
            return line(self.mask(e.sender), "TAGMSG", "#" + e.room) if self._tags else ""
        return self._message(self.mask(e.sender), "#" + e.room, e.text, e.notice)

    def _private(self, e: events.Private) -> str:
        if e.echo and not self.echo_own:
            return ""
        if e.tagmsg:
            return line(self.mask(e.sender), "TAGMSG", e.target) if self._tags else ""
        return self._message(self.mask(e.sender), e.target, e.text, e.notice)

    def _left(self, e: events.Left) -> str:
        if e.reason in ("part", "moved"):
            if e.text:
                return line(self.mask(e.name), "PART", "#" + e.room, e.text, colon=True)
            return line(self.mask(e.name), "PART", "#" + e.room)
        return line(self.mask(e.name), "QUIT", e.text or QUIT_WORDS.get(e.reason, "Quit"))

    def _shutting_down(self, e: events.ShuttingDown) -> str:
        text = self.notice("*", _shutdown_text(e))
        if e.seconds is None:  # now: the connection closes after this
            text += line("", "ERROR", "Closing link: server shutting down")
        return text

    def _error(self, e: events.Error) -> str:
        if e.code in CLOSING_ERRORS:
            return line("", "ERROR", "Closing link: " + error_text(e))
        return self.notice("*", error_text(e))


def _shutdown_text(e: events.ShuttingDown) -> str:
    return shutdown_text(e.seconds, e.reason)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def dialect_for(server_name: str, network: str, caps: frozenset[str]) -> IrcDialect:
    """The one dialect object for this capability combination (render-once holds)."""
    return IrcDialect(server_name, network, caps)


def refusal_line(reason: str) -> bytes:
    """What an IRC connection refused at accept gets (``reason`` as in ``events.Error``)."""
    return line("", "ERROR", "Closing link: " + REFUSAL_TEXT[reason]).encode()


# --- what IRC clients said about themselves --------------------------------------


class Ident(NamedTuple):
    """What an IRC member gave at registration (USER) and its away message."""

    user: str
    realname: str
    away: str = ""


class IdentBook:
    """IRC members' USER details and away messages, read by other IRC sessions.

    IRC-only state the hub neither needs nor sees, so it has its own small lock.
    A line-protocol user has no entry: its user name and real name are its name.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Ident] = {}
        self._history: collections.deque[tuple[str, Ident, float]] = collections.deque(
            maxlen=WHOWAS_HISTORY
        )

    def put(self, name: str, ident: Ident) -> None:
        with self._lock:
            self._by_name[irc_lower(name)] = ident

    def drop(self, name: str, ident: Ident) -> None:
        """Forget ``name``'s entry if it is still ``ident`` (a new holder keeps theirs)."""
        with self._lock:
            if self._by_name.get(irc_lower(name)) is ident:
                del self._by_name[irc_lower(name)]

    def get(self, name: str) -> Ident:
        with self._lock:
            return self._by_name.get(irc_lower(name)) or Ident(name, name)

    def away(self, name: str) -> str:
        return self.get(name).away

    def gone(self, name: str, ident: Ident) -> None:
        """``name`` left: keep it for WHOWAS (most recent last, bounded)."""
        with self._lock:
            self._history.append((name, ident, time.time()))

    def was(self, name: str) -> list[tuple[str, Ident, float]]:
        """WHOWAS entries for ``name``, most recent first."""
        key = irc_lower(name)
        with self._lock:
            return [h for h in reversed(self._history) if irc_lower(h[0]) == key]


IDENTS = IdentBook()


# --- the session ------------------------------------------------------------------

# HELP texts: the first line is the synopsis.
HELP = {
    "*": "chatsvc speaks enough IRC to chat in its rooms (channels #ROOM).\n"
    "Commands: AWAY HELP ISON JOIN LIST LUSERS MODE MONITOR MOTD NAMES NICK NOTICE\n"
    "PART PING PRIVMSG QUIT SETNAME TAGMSG TIME TOPIC USERHOST VERSION WHO WHOIS WHOWAS.\n"
    "HELP <command> describes one.",
    "AWAY": "AWAY [:message] - mark yourself away (no message: back)",
    "HELP": "HELP [command] - this help",
    "ISON": "ISON nick ... - which of these nicks are online",
    "JOIN": "JOIN #room[,#room] - enter rooms; JOIN 0 leaves them all",
    "LIST": "LIST [#room,...] - the rooms, their member counts and topics",
    "LUSERS": "LUSERS - how many users are online",
    "MODE": "MODE #room | MODE nick - show modes (they cannot be changed)",
    "MONITOR": "MONITOR +|- nick[,nick] | C | L | S - be told when nicks come and go",
    "MOTD": "MOTD - the message of the day",
    "NAMES": "NAMES #room - who is in a room",
    "NICK": "NICK newnick - change your name (a chatsvc name: letters, digits, _ - .)",
    "NOTICE": "NOTICE target :text - like PRIVMSG, never answered automatically",
    "PART": "PART #room[,#room] [:message] - leave rooms",
    "PING": "PING token - the server answers PONG with the token",
    "PRIVMSG": "PRIVMSG #room|nick :text - talk in a room or to a user of either protocol",
    "QUIT": "QUIT [:message] - leave the server",
    "SETNAME": "SETNAME :real name - change your real name",
    "TAGMSG": "TAGMSG #room|nick - send message tags only (message-tags)",
    "TIME": "TIME - the server's time",
    "TOPIC": "TOPIC #room - show the topic (topics are set in the server's configuration)",
    "USERHOST": "USERHOST nick ... - user and host of up to five nicks",
    "VERSION": "VERSION - the server's version",
    "WHO": "WHO #room | WHO nick | WHO mask - list users",
    "WHOIS": "WHOIS nick - about a user",
    "WHOWAS": "WHOWAS nick [count] - about an IRC user who left",
}

# Numerics whose last parameter is a list or free text: always written with ':'.
_TEXT_NUMERICS = frozenset({"301", "302", "303", "311", "314", "319", "322", "332", "352", "353"})
# Commands allowed before registration; anything else gets 451.
_BEFORE_REGISTRATION = frozenset(
    {"AUTHENTICATE", "CAP", "PASS", "NICK", "USER", "PING", "PONG", "QUIT"}
)


class IrcSession:
    """The reader side of one IRC connection: reads, frames, parses, calls the hub."""

    __slots__ = (
        "account",
        "auth",
        "batches",
        "bucket",
        "cap_pending",
        "caps",
        "hub",
        "ident",
        "member",
        "nick",
        "password",
        "quit",
        "realname",
        "receive",
        "registered",
        "sasl",
        "sock",
        "user",
    )

    def __init__(
        self,
        hub: Hub,
        member: Member,
        sock: socket.socket,
        auth: Optional[Authenticator] = None,
        receive: Optional[Receive] = None,
    ) -> None:
        self.hub = hub
        self.member = member
        self.sock = sock
        self.auth = auth  # accounts: PASS and SASL PLAIN check passwords through it
        self.receive = receive  # TLS: the channel's plaintext; None: the socket's bytes
        self.bucket = flood_bucket(hub)
        self.caps: frozenset[str] = frozenset()
        self.cap_pending = False  # CAP LS/REQ seen, CAP END not yet: registration waits
        self.nick: Optional[str] = None  # wanted, before registration; the name after
        self.user: Optional[str] = None
        self.realname = ""
        self.registered = False
        self.ident: Optional[Ident] = None  # ours in IDENTS, once registered
        self.quit = False  # QUIT seen (and the WHOWAS entry made)
        self.batches = 0  # labeled-response batches sent (their references)
        self.account: Optional[str] = None  # the account logged in to (SASL or PASS)
        self.password: Optional[bytes] = None  # PASS, checked at registration; then dropped
        self.sasl: Optional[bytearray] = None  # AUTHENTICATE PLAIN under way: base64 so far

    # --- wording -----------------------------------------------------------------

    @property
    def server_name(self) -> str:
        return self.hub.cfg.irc.server_name

    @property
    def me(self) -> str:
        """The nick numerics are addressed to (``*`` before registration)."""
        return self.member.name or "*"

    def num(self, code: str, *params: str, colon: bool = False) -> str:
        colon = colon or code in _TEXT_NUMERICS
        return line(self.server_name, code, self.me, *params, colon=colon)

    def send(self, *lines: str) -> None:
        text = "".join(lines)
        if text:
            self.hub.tell(self.member, events.Raw(text))

    def reply(self, code: str, *params: str) -> None:
        self.send(self.num(code, *params))

    # --- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        m = self.member
        reason = "eof"
        try:
            for msg in self._messages():
                self.dispatch(msg)
        except OSError:
            reason = "error"
        except Exception:  # a bug must cost one session, never the server
            logsetup.log.exception("session_error", name=m.name, addr=m.addr, protocol="irc")
            reason = "error"
        finally:
            final = self.hub.remove(m, reason)
            if m.name is not None and self.ident is not None:
                IDENTS.drop(m.name, self.ident)
                if not self.quit:
                    IDENTS.gone(m.name, self.ident)
            logsetup.log.info(
                "client_disconnected",
                name=m.name,
                addr=m.addr,
                port=m.port,
                protocol="irc",
                reason=final,
                duration=round(time.time() - m.connected_at, 3),
                messages=m.msgs_sent,
            )

    def _messages(self) -> Iterator[Message]:
        """Parsed messages until EOF, each line paid for from the flood bucket."""
        splitter = LineSplitter(MAX_TAGS + MAX_BODY)
        for frame in read_frames(self.sock, self.member, splitter, receive=self.receive):
            paid = pay(
                self.hub, self.member, self.bucket
            )  # every line pays, as in the line protocol
            if paid == DROPPED and is_text(frame):
                limits = self.hub.cfg.limits
                slow = events.error("slow_down", rate=limits.flood_rate, burst=limits.flood_burst)
                self.send(line(self.server_name, "NOTICE", self.me, error_text(slow)))
            if paid != PAID:
                continue
            msg = self._parse(frame)
            if msg is not None:
                yield msg

    def _parse(self, frame: Frame) -> Optional[Message]:
        if frame is OVERLONG:
            self.reply("417", "Input line was too long")
            return None
        assert isinstance(frame, bytes)
        try:
            return parse_line(frame)
        except IrcParseError as exc:
            if exc.code == "input_too_long":
                self.reply("417", "Input line was too long")
            else:
                self.send(
                    line(self.server_name, "FAIL", exc.command, "INVALID_UTF8", "Invalid UTF-8")
                )
            return None

    def dispatch(self, msg: Message) -> None:
        label = msg.tags.get("label") if "labeled-response" in self.caps else None
        if not label:
            self._dispatch(msg)
            return
        # labeled-response: everything this command makes for us is held back by
        # the hub, then sent labeled (one line), as a batch (several) or as ACK.
        self.hub.capture(self.member, True)
        try:
            self._dispatch(msg)
        finally:
            held = self.hub.capture(self.member, False)
            if held is not None:
                self.send(self._labeled(label, held))

    def _labeled(self, label: str, held: list[bytes]) -> str:
        lines = [ln for chunk in held for ln in chunk.decode().split("\r\n") if ln]
        tag = "label=" + escape_tag(label)
        if not lines:
            return f"@{tag} " + line(self.server_name, "ACK")
        if len(lines) == 1:
            return _add_tag(lines[0], tag) + "\r\n"
        self.batches += 1
        ref = f"L{self.batches}"
        return (
            f"@{tag} "
            + line(self.server_name, "BATCH", "+" + ref, "labeled-response")
            + "".join(_add_tag(ln, "batch=" + ref) + "\r\n" for ln in lines)
            + line(self.server_name, "BATCH", "-" + ref)
        )

    def _dispatch(self, msg: Message) -> None:
        if not self.registered and msg.command not in _BEFORE_REGISTRATION:
            self.reply("451", "You have not registered")
            return
        handler = _DISPATCH.get(msg.command)
        if handler is None:
            self.reply("421", msg.command, "Unknown command")
            return
        handler(self, msg)

    def need(self, msg: Message, n: int) -> bool:
        """At least ``n`` parameters (the last non-empty), or 461 and False."""
        if len(msg.params) < n or not msg.params[n - 1]:
            self.reply("461", msg.command, "Not enough parameters")
            return False
        return True

    # --- registration --------------------------------------------------------------

    def cmd_cap(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        sub = msg.params[0].upper()
        if sub == "LS":
            if not self.registered:
                self.cap_pending = True
            offered = list(CAPS)
            if self._sasl_offered():
                v302 = len(msg.params) > 1 and msg.params[1].isdigit() and int(msg.params[1]) >= 302
                offered.append("sasl=" + ",".join(SASL_MECHANISMS) if v302 else "sasl")
            self.send(line(self.server_name, "CAP", self.me, "LS", " ".join(sorted(offered))))
        elif sub == "LIST":
            self.send(line(self.server_name, "CAP", self.me, "LIST", " ".join(sorted(self.caps))))
        elif sub == "REQ":
            if not self.registered:
                self.cap_pending = True
            wanted = msg.params[1] if len(msg.params) > 1 else ""
            caps = set(self.caps)
            ok = bool(wanted.split())
            for item in wanted.split():
                name = item.lstrip("-")
                if name not in CAPS and not (name == "sasl" and self._sasl_offered()):
                    ok = False
                elif item.startswith("-"):
                    caps.discard(name)
                else:
                    caps.add(name)
            if not ok:
                self.send(line(self.server_name, "CAP", self.me, "NAK", wanted))
                return
            self.caps = frozenset(caps)
            irc = self.hub.cfg.irc
            rendered = self.caps - {"sasl"}  # sasl changes nothing rendered
            self.hub.set_dialect(self.member, dialect_for(irc.server_name, irc.network, rendered))
            self.send(line(self.server_name, "CAP", self.me, "ACK", wanted))
        elif sub == "END":
            if self.cap_pending:
                self.cap_pending = False
                if self.sasl is not None:  # registration ends an unfinished SASL exchange
                    self.sasl = None
                    self.reply("906", "SASL authentication aborted")
                self._try_register()
        else:
            self.reply("410", msg.params[0], "Invalid CAP command")

    def cmd_pass(self, msg: Message) -> None:
        """PASS before registration: the password of the nick's account (or ``name:password``).

        Kept until NICK and USER are in, checked then (by ``_try_register``) if
        the name needs one, else ignored (chatsvc has no server password).
        """
        if self.registered:
            self.reply("462", "You may not reregister")
            return
        if not self.need(msg, 1):
            return
        if not self._sasl_offered():
            return  # no accounts (open mode): PASS means nothing here, as before
        m = self.member
        assert self.auth is not None
        if self.auth.plaintext_refused(m.addr, m.secure):
            logsetup.log.warning("auth_failed", name=self.nick, addr=m.addr, reason="plaintext")
            self._refuse_login(events.error("password_needs_tls"))
            return
        self.password = msg.params[0].encode("utf-8", "surrogateescape")

    # --- SASL (IRCv3 sasl-3.1, mechanism PLAIN) -------------------------------------

    def _sasl_offered(self) -> bool:
        """SASL is offered while accounts are on (``[auth] mode`` not ``open``)."""
        return self.auth is not None and self.auth.mode != "open"

    def cmd_authenticate(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        arg = msg.params[0]
        if self.registered:
            # The nick is the account name: logging in later would rename the user.
            self.reply("462", "You may not reregister (log in with SASL before CAP END)")
            return
        if self.account is not None:
            self.reply("907", "You have already authenticated using SASL")
            return
        if not self._sasl_offered():
            self.reply("904", "SASL authentication failed: accounts are not enabled")
            return
        if self.sasl is None:
            self._sasl_start(arg)
            return
        if arg == "*":
            self.sasl = None
            self.reply("906", "SASL authentication aborted")
            return
        if len(arg) > SASL_CHUNK:
            self.sasl = None
            self.reply("905", "SASL message too long")
            return
        if arg != "+":
            self.sasl += arg.encode()
            if len(self.sasl) > SASL_MAX:
                self.sasl = None
                self.reply("904", "SASL authentication failed: response too long")
                return
            if len(arg) == SASL_CHUNK:
                return  # more to come (a last chunk of exactly 400 is followed by "+")
        data, self.sasl = bytes(self.sasl), None
        self._sasl_plain(data)

    def _sasl_start(self, mechanism: str) -> None:
        if mechanism.upper() not in SASL_MECHANISMS:
            self.send(
                self.num("908", ",".join(SASL_MECHANISMS), "are available SASL mechanisms"),
                self.num("904", "SASL authentication failed"),
            )
            return
        m = self.member
        assert self.auth is not None
        if self.auth.plaintext_refused(m.addr, m.secure):  # refuse before it is sent
            logsetup.log.warning("auth_failed", name=self.nick, addr=m.addr, reason="plaintext")
            self.reply(
                "904",
                "SASL authentication failed: " + error_text(events.error("password_needs_tls")),
            )
            return
        self.sasl = bytearray()
        self.send(line("", "AUTHENTICATE", "+"))

    def _sasl_plain(self, data: bytes) -> None:
        """Check a PLAIN response (authzid NUL authcid NUL password): 900 + 903, or 904."""
        decoded = sasl_plain(data, self.hub.cfg.limits.name_max_length)
        if isinstance(decoded, str):
            self.reply("904", "SASL authentication failed: " + decoded)
            return
        authcid, password = decoded
        verdict = self._verify(authcid, password)
        del password, decoded
        if not verdict.ok:
            assert verdict.error is not None
            self.reply("904", "SASL authentication failed: " + error_text(verdict.error))
            return
        self.account = authcid
        who = self.nick or authcid
        self.send(
            self.num(
                "900",
                f"{who}!{self.user or who}@{self.server_name}",
                authcid,
                f"You are now logged in as {authcid}",
            ),
            self.num("903", "SASL authentication successful"),
        )

    def _verify(self, name: str, password: bytes) -> Verdict:
        """The one password check (in this reader thread, never under the hub lock), logged."""
        m, auth = self.member, self.auth
        assert auth is not None
        verdict = auth.verify(name, password, m.addr, m.secure)
        if verdict.ok:
            logsetup.log.info("auth_ok", name=name, addr=m.addr, protocol="irc")
        elif verdict.reason == "throttled":
            wait = verdict.error.params.get("seconds") if verdict.error else None
            logsetup.log.warning("auth_throttled", name=name, addr=m.addr, seconds=wait)
        else:
            logsetup.log.warning("auth_failed", name=name, addr=m.addr, reason=verdict.reason)
        return verdict

    def _refuse_login(self, why: events.Error) -> None:
        """A refused PASS: 464 with the reason, then ERROR and the connection closes."""
        self.password = None
        self.reply("464", "Password incorrect: " + error_text(why))
        final = events.Raw(line("", "ERROR", "Closing link: " + error_text(why)))
        self.hub.close(self.member, "name_rejected", final)

    def cmd_nick(self, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.reply("431", "No nickname given")
            return
        nick = msg.params[0]
        why = protocol.check_name(nick, self.hub.cfg.limits.name_max_length)
        if why is not None:
            self.reply("432", nick, "Erroneous nickname: " + error_text(why))
            return
        if self.registered:
            self._rename(nick)
            return
        self.nick = nick
        self._try_register()

    def cmd_user(self, msg: Message) -> None:
        if self.registered:
            self.reply("462", "You may not reregister")
            return
        if len(msg.params) < 4 or not msg.params[0] or not msg.params[3]:
            self.reply("461", msg.command, "Not enough parameters")
            return
        self.user = msg.params[0]
        self.realname = msg.params[3]
        self._try_register()

    def _rename(self, nick: str) -> None:
        old = self.member.name
        if old is None or nick == old:
            return
        if nick.casefold() != old.casefold() and self.account is not None:
            self.reply("432", nick, f"Erroneous nickname: your nick is your account name {old}")
            return
        if nick.casefold() != old.casefold() and self._needs_password(nick):
            self.reply("432", nick, "Erroneous nickname: this name needs a password")
            return
        why = self.hub.rename(self.member, nick)
        if why is None:
            if self.ident is not None:
                IDENTS.drop(old, self.ident)
                IDENTS.put(nick, self.ident)
            logsetup.log.info("name_changed", name=nick, old=old, addr=self.member.addr)
        elif why.code == "name_taken":
            self.reply("433", nick, "Nickname is already in use")
        elif why.code == "name_banned":
            self.reply("432", nick, "Erroneous nickname: " + error_text(why))

    def _try_register(self) -> None:
        if self.registered or self.cap_pending or self.nick is None or self.user is None:
            return
        m = self.member
        nick = self.nick
        if self.sasl is not None:  # registered without CAP: the exchange ends unfinished
            self.sasl = None
            self.reply("906", "SASL authentication aborted")
        if self.account is None and self.password is not None and self._sasl_offered():
            account, password = self._pass_account(nick)
            self.password = None
            if account is not None:
                verdict = self._verify(account, password)
                del password
                if not verdict.ok:
                    assert verdict.error is not None
                    self._refuse_login(verdict.error)
                    return
                self.account = account
        if self.account is not None:
            nick = self.account  # one name space: the account name is the nick
        elif self._needs_password(nick):
            self.reply("464", "Password required: send PASS before NICK, or log in with SASL")
            self.nick = None
            return
        why = self.hub.login(m, nick, join_default=False)
        if why is not None:
            if why.code == "name_taken":
                self.reply("433", nick, "Nickname is already in use")
            elif why.code == "name_banned":
                self.reply("432", nick, "Erroneous nickname: " + error_text(why))
            self.nick = None
            self.account = None  # held elsewhere or banned: go on as a guest, another nick
            return
        self.registered = True
        user = "".join(ch for ch in self.user if ch.isascii() and (ch.isalnum() or ch in "_.-~"))
        realname, bad = clean_text(self.realname)
        realname = realname[:REALNAME_MAX]
        self.ident = Ident(user[:10] or nick, realname if bad is None and realname else nick)
        IDENTS.put(nick, self.ident)
        logsetup.log.info("client_login", name=nick, addr=m.addr, port=m.port, protocol="irc")
        self._welcome()

    def _pass_account(self, nick: str) -> tuple[Optional[str], bytes]:
        """What PASS asks for: (account, password); account None when nothing to check.

        ``PASS name:password`` names the account when ``name`` is a valid name
        (so a password containing ':' is sent as ``NICK:password``); otherwise
        the password is for the nick's account, and ignored if it has none.
        """
        assert self.password is not None
        named, password = pass_split(self.password, self.hub.cfg.limits.name_max_length)
        if named is not None:
            return named, password
        if self._needs_password(nick):
            return nick, self.password
        return None, b""

    def _needs_password(self, nick: str) -> bool:
        if self.auth is None:
            return False
        try:
            return self.auth.needs_password(nick)
        except StoreError:
            return True

    def _welcome(self) -> None:
        cfg = self.hub.cfg
        irc = cfg.irc
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.hub.started_at))
        version = f"chatsvc-{__version__}"
        isupport = (
            f"AWAYLEN=200 CASEMAPPING=ascii CHANLIMIT=#:{len(cfg.rooms.names)} CHANMODES=,,,nt "
            f"CHANNELLEN={33} CHANTYPES=# MAXTARGETS={MAX_TARGETS} "
            f"NETWORK={irc.network} NICKLEN={cfg.limits.name_max_length} PREFIX=(ov)@+ "
            f"TARGMAX=JOIN:,PART:,PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},WHOIS:1 "
            f"TOPICLEN=300 UTF8ONLY WHOX MONITOR={MONITOR_MAX}"
        ).split()
        self.send(
            self.num("002", f"Your host is {irc.server_name}, running version {version}"),
            self.num("003", f"This server was created {started}"),
            self.num("004", irc.server_name, version, "i", "nt"),
            self.num("005", *isupport[:10], "are supported by this server"),
            self.num("005", *isupport[10:], "are supported by this server"),
            *self._lusers(),
            *self._motd(),
        )

    def _lusers(self) -> list[str]:
        stats = self.hub.stats()
        n = int(stats["logged_in"])
        return [
            self.num("251", f"There are {n} users and 0 invisible on 1 servers"),
            self.num("254", str(len(self.hub.cfg.rooms.names)), "channels formed"),
            self.num("255", f"I have {n} clients and 0 servers"),
            # the optional counts are left out: chatsvc keeps no all-time maximum
            self.num("265", f"Current local users: {n}"),
            self.num("266", f"Current global users: {n}"),
        ]

    def _motd(self) -> list[str]:
        motd = self.hub.cfg.irc.motd
        if not motd:
            return [self.num("422", "MOTD File is missing")]
        out = [self.num("375", f"- {self.server_name} Message of the day - ")]
        out += [self.num("372", "- " + ln) for ln in motd.split("\n")]
        out.append(self.num("376", "End of /MOTD command."))
        return out

    # --- connection ---------------------------------------------------------------

    def cmd_ping(self, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.reply("409", "No origin specified")
            return
        self.send(line(self.server_name, "PONG", self.server_name, msg.params[0]))

    def cmd_pong(self, msg: Message) -> None:
        pass  # activity was already counted

    def cmd_quit(self, msg: Message) -> None:
        if self.member.name is not None and self.ident is not None and not self.quit:
            IDENTS.gone(self.member.name, self.ident)  # now: a WHOWAS may come at once
        self.quit = True
        text, why = clean_text(msg.params[0] if msg.params else "")
        words = "Quit: " + text if text and why is None else ""
        self.hub.close(self.member, "bye", events.Goodbye(), text=words)

    def cmd_motd(self, msg: Message) -> None:
        self.send(*self._motd())

    def cmd_lusers(self, msg: Message) -> None:
        self.send(*self._lusers())

    def cmd_help(self, msg: Message) -> None:
        subject = msg.params[0].upper() if msg.params and msg.params[0] else "*"
        text = HELP.get(subject.lstrip("*") or "*")
        if text is None:
            self.reply("524", msg.params[0], "No help available on this topic")
            return
        first, *rest = text.split("\n")
        self.send(
            self.num("704", subject, first),
            *(self.num("705", subject, ln) for ln in rest),
            self.num("706", subject, "End of /HELP"),
        )

    def cmd_helpop(self, msg: Message) -> None:
        self.cmd_help(msg)

    def cmd_links(self, msg: Message) -> None:
        self.send(
            self.num("364", self.server_name, self.server_name, f"0 {self.hub.cfg.irc.network}"),
            self.num("365", "*", "End of /LINKS list"),
        )

    def cmd_version(self, msg: Message) -> None:
        self.reply("351", f"chatsvc-{__version__}.", self.server_name, "")

    def cmd_time(self, msg: Message) -> None:
        self.reply("391", self.server_name, time.strftime("%A %B %d %Y -- %H:%M:%S UTC"))

    # --- channels -----------------------------------------------------------------

    def room_of(self, channel: str) -> Optional[str]:
        """The room a channel name means (case-insensitively), or None."""
        if not channel.startswith("#"):
            return None
        wanted = irc_lower(channel[1:])
        return next((r for r in self.hub.cfg.rooms.names if irc_lower(r) == wanted), None)

    def cmd_join(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        if msg.params[0] == "0":  # leave every channel (not-a-member errors ignored)
            for each in self.hub.cfg.rooms.names:
                self.hub.part(self.member, each)
            return
        for channel in msg.params[0].split(","):
            room = self.room_of(channel)
            if room is None:
                self.reply("403", channel, "No such channel")
                continue
            why = self.hub.enter(self.member, room)
            if why is None:
                logsetup.log.info("room_joined", name=self.member.name, room=room)
                self.send(*self._topic(room, on_join=True), *self._names(room))
                if self.ident is not None and self.ident.away and self.member.name is not None:
                    away = events.Away(self.member.name, self.ident.away)
                    self.hub.share(self.member, away, room=room)  # away-notify on join
            elif why.code != "already_in_room":
                return  # closing

    def cmd_part(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        text = msg.params[1] if len(msg.params) > 1 else ""
        text, why = clean_text(text)
        for channel in msg.params[0].split(","):
            room = self.room_of(channel)
            if room is None:
                self.reply("403", channel, "No such channel")
            elif self.hub.part(self.member, room, text if why is None else "") is not None:
                self.reply("442", channel, "You're not on that channel")
            else:
                logsetup.log.info("room_left", name=self.member.name, room=room)

    def _topic(self, room: str, on_join: bool = False) -> list[str]:
        topic = self.hub.cfg.irc.topic(room)
        if topic:
            return [self.num("332", "#" + room, topic)]
        return [] if on_join else [self.num("331", "#" + room, "No topic is set")]

    def _names(self, room: str) -> list[str]:
        names = self.hub.who(self.member, room).names
        head = len(self.num("353", "=", "#" + room, "x").encode())
        out, batch = [], ""
        if "userhost-in-names" in self.caps:
            names = tuple(f"{n}!{IDENTS.get(n).user}@{self.server_name}" for n in names)
        for name in names:
            if batch and head + len(batch) + len(name) + 1 > MAX_BODY:
                out.append(self.num("353", "=", "#" + room, batch))
                batch = ""
            batch = f"{batch} {name}" if batch else name
        if batch:
            out.append(self.num("353", "=", "#" + room, batch))
        out.append(self.num("366", "#" + room, "End of /NAMES list"))
        return out

    def cmd_names(self, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.reply("366", "*", "End of /NAMES list")
            return
        out: list[str] = []
        seen: set[Optional[str]] = set()
        for channel in msg.params[0].split(","):
            room = self.room_of(channel)
            if room in seen:
                continue  # "NAMES #big,#big,..." must not multiply one long reply
            seen.add(room)
            if room is None:
                out.append(self.num("366", channel, "End of /NAMES list"))
            else:
                out += self._names(room)
        self.send(*out)

    def cmd_topic(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        channel = msg.params[0]
        room = self.room_of(channel)
        if room is None:
            self.reply("403", channel, "No such channel")
        elif len(msg.params) > 1:
            self.reply("482", channel, "Topics are set in the server's configuration")
        else:
            self.send(*self._topic(room))

    def cmd_list(self, msg: Message) -> None:
        wanted = None
        if msg.params and msg.params[0]:
            wanted = {self.room_of(c) for c in msg.params[0].split(",")}
        out = [self.num("321", "Channel", "Users  Name")]
        for room, count in self.hub.room_list(self.member).counts:
            if wanted is None or room in wanted:
                out.append(self.num("322", "#" + room, str(count), self.hub.cfg.irc.topic(room)))
        out.append(self.num("323", "End of /LIST"))
        self.send(*out)

    def cmd_mode(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        target = msg.params[0]
        if target.startswith("#"):
            room = self.room_of(target)
            if room is None:
                self.reply("403", target, "No such channel")
            elif len(msg.params) == 1:
                self.send(
                    self.num("324", "#" + room, "+nt"),
                    self.num("329", "#" + room, str(int(self.hub.started_at))),
                )
            elif msg.params[1].lstrip("+") in ("b", "e", "I"):
                end = {"b": ("368", "ban"), "e": ("349", "exception"), "I": ("347", "invite")}
                code, what = end[msg.params[1].lstrip("+")]
                self.reply(code, "#" + room, f"End of channel {what} list")
            else:
                self.reply("482", "#" + room, "Channel modes cannot be changed")
        elif irc_lower(target) != irc_lower(self.me):
            if self.hub.user(target) is None:
                self.reply("401", target, "No such nick")
            else:
                self.reply("502", "Can't change mode for other users")
        elif len(msg.params) == 1:
            self.reply("221", "+")
        else:
            self.reply("501", "Unknown MODE flag")

    def cmd_kick(self, msg: Message) -> None:
        if not self.need(msg, 2):
            return
        room = self.room_of(msg.params[0])
        if room is None:
            self.reply("403", msg.params[0], "No such channel")
        else:
            self.reply("482", "#" + room, "You're not channel operator")

    # --- messages -----------------------------------------------------------------

    def cmd_privmsg(self, msg: Message, notice: bool = False) -> None:
        if not msg.params or not msg.params[0]:
            if not notice:
                self.reply("411", f"No recipient given ({msg.command})")
            return
        if len(msg.params) < 2 or not msg.params[1]:
            if not notice:
                self.reply("412", "No text to send")
            return
        text, why = clean_text(msg.params[1])
        if why is not None or not text:
            if not notice and why != "ctcp":
                self.send(line(self.server_name, "NOTICE", self.me, f"Message refused: {why}"))
            return
        targets = msg.params[0].split(",")
        if len(targets) > MAX_TARGETS:
            if not notice:
                self.reply("407", msg.params[0], "Too many recipients")
            return
        tags = client_tags(msg.tags)
        for target in targets:
            self._message(target, text, notice, tags)

    def cmd_notice(self, msg: Message) -> None:
        self.cmd_privmsg(msg, notice=True)

    def cmd_tagmsg(self, msg: Message) -> None:
        """IRCv3 TAGMSG: client-only tags without text, for clients with message-tags."""
        if not msg.params or not msg.params[0]:
            self.reply("411", "No recipient given (TAGMSG)")
            return
        targets = msg.params[0].split(",")
        if len(targets) > MAX_TARGETS:
            self.reply("407", msg.params[0], "Too many recipients")
            return
        for target in targets:
            self._message(target, "", False, client_tags(msg.tags))

    def _message(self, target: str, text: str, notice: bool, tags: events.Tags = ()) -> None:
        m = self.member
        full = self.hub.cfg.logging.log_messages
        if target.startswith("#"):
            room = self.room_of(target)
            if room is None:
                if not notice:
                    self.reply("403", target, "No such channel")
            elif self.hub.say(m, text, room, notice, tags, tagmsg=not text) is None:
                if not notice:
                    self.reply("404", target, "Cannot send to channel")
            elif text:
                _log_message("message", m.name, room, text, full)
            return
        why = self.hub.private(m, target, text, notice, tags, tagmsg=not text)
        if why is not None:
            if not notice:
                self.reply("401", target, "No such nick/channel")
            return
        if not text:
            return  # TAGMSG
        _log_message("private_message", m.name, target, text, full)
        away = IDENTS.away(target)
        if away and not notice:
            self.reply("301", target, away)

    # --- users ----------------------------------------------------------------------

    def cmd_away(self, msg: Message) -> None:
        assert self.member.name is not None
        text = msg.params[0] if msg.params else ""
        text, _ = clean_text(text)
        if self.ident is not None:
            self.ident = self.ident._replace(away=text[:200])
            IDENTS.put(self.member.name, self.ident)
        if text:
            self.reply("306", "You have been marked as being away")
        else:
            self.reply("305", "You are no longer marked as being away")
        # away-notify: the rooms' members and extended-monitor watchers that asked
        self.hub.share(self.member, events.Away(self.member.name, text[:200]))

    def cmd_setname(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        realname, why = clean_text(msg.params[-1])
        if why is not None or not realname or len(realname) > REALNAME_MAX:
            self.send(
                line(
                    self.server_name,
                    "FAIL",
                    "SETNAME",
                    "INVALID_REALNAME",
                    f"Real name must be 1 to {REALNAME_MAX} printable characters",
                )
            )
            return
        if self.ident is not None and self.member.name is not None:
            self.ident = self.ident._replace(realname=realname)
            IDENTS.put(self.member.name, self.ident)
            self.hub.share(self.member, events.RealName(self.member.name, realname), echo=True)

    def cmd_monitor(self, msg: Message) -> None:
        """IRCv3 MONITOR: + (add), - (remove), C (clear), L (list), S (status)."""
        if not self.need(msg, 1):
            return
        sub = msg.params[0].upper()
        names = [n for n in (msg.params[1] if len(msg.params) > 1 else "").split(",") if n]
        if sub == "+":
            valid = []
            for name in names:
                if protocol.check_name(name, self.hub.cfg.limits.name_max_length) is None:
                    valid.append(name)
                else:
                    self.reply("432", name, "Erroneous nickname")
            added, refused = self.hub.watch(self.member, valid, MONITOR_MAX)
            self.send(*self._presence_lines(added))
            if refused:
                self.reply("734", str(MONITOR_MAX), ",".join(refused), "Monitor list is full")
        elif sub == "-":
            self.hub.unwatch(self.member, names)
        elif sub == "C":
            self.hub.unwatch(self.member)
        elif sub == "L":
            watched = [name for name, _ in self.hub.watched(self.member)]
            out = [self.num("732", part, colon=True) for part in self._comma_lists(watched)]
            self.send(*out, self.num("733", "End of MONITOR list"))
        elif sub == "S":
            self.send(*self._presence_lines(self.hub.watched(self.member)))
        else:
            self.reply("421", "MONITOR", f"Unknown MONITOR subcommand {sub.strip()[:20]}")

    def _presence_lines(self, status: list[tuple[str, Optional[str]]]) -> list[str]:
        online = [f"{n}!{IDENTS.get(n).user}@{self.server_name}" for _, n in status if n]
        offline = [name for name, n in status if not n]
        out = [self.num("730", part, colon=True) for part in self._comma_lists(online)]
        return out + [self.num("731", part, colon=True) for part in self._comma_lists(offline)]

    def _comma_lists(self, items: list[str]) -> Iterator[str]:
        """``items`` joined by commas, in parts that fit a numeric line."""
        room = MAX_BODY - len(self.num("730", "x").encode()) - 1
        part = ""
        for item in items:
            if part and len(part) + 1 + len(item) > room:
                yield part
                part = ""
            part = f"{part},{item}" if part else item
        if part:
            yield part

    def cmd_whois(self, msg: Message) -> None:
        if not self.need(msg, 1):
            return
        nick = msg.params[-1].split(",")[0]
        user = self.hub.user(nick)
        if user is None:
            self.send(self.num("401", nick, "No such nick"), self.num("318", nick, "End of /WHOIS"))
            return
        name = str(user["name"])
        ident = IDENTS.get(name)
        out = [self.num("311", name, ident.user, self.server_name, "*", ident.realname)]
        channels = " ".join("#" + r for r in user["rooms"])
        if channels:
            out.append(self.num("319", name, channels))
        out.append(self.num("312", name, self.server_name, f"chatsvc ({user['protocol']})"))
        away = ident.away
        if away:
            out.append(self.num("301", name, away))
        out.append(
            self.num(
                "317",
                name,
                str(int(user["idle"])),
                str(int(user["connected_at"])),
                "seconds idle, signon time",
            )
        )
        out.append(self.num("318", name, "End of /WHOIS list"))
        self.send(*out)

    def cmd_who(self, msg: Message) -> None:
        mask = msg.params[0] if msg.params and msg.params[0] else "*"
        fields = msg.params[1] if len(msg.params) > 1 and msg.params[1].startswith("%") else ""
        hits: list[tuple[str, str]] = []  # (channel, name)
        room = self.room_of(mask)
        if room is not None:
            hits = [("#" + room, name) for name in self.hub.who(self.member, room).names]
        elif not mask.startswith("#") and "*" not in mask and "?" not in mask:
            user = self.hub.user(mask)
            if user is not None:
                hits = [("*", str(user["name"]))]
        elif not mask.startswith("#"):
            pattern = re.compile(fnmatch.translate(irc_lower(mask)))
            names = sorted(str(u["name"]) for u in self.hub.users())
            hits = [("*", n) for n in names if pattern.match(irc_lower(n))][:WHO_MAX]
        if fields:
            out = [self._whox_line(channel, name, fields) for channel, name in hits]
        else:
            out = [self._who_line(channel, name) for channel, name in hits]
        out.append(self.num("315", mask, "End of /WHO list"))
        self.send(*out)

    def _who_line(self, channel: str, name: str) -> str:
        ident = IDENTS.get(name)
        flags = "G" if ident.away else "H"
        server = self.server_name
        return self.num(
            "352", channel, ident.user, server, server, name, flags, "0 " + ident.realname
        )

    def _whox_line(self, channel: str, name: str, spec: str) -> str:
        """WHOX (IRCv3): the asked-for fields, always in the order t c u i h s n f d l a o r."""
        wanted, _, token = spec[1:].partition(",")
        ident = IDENTS.get(name)
        user = self.hub.user(name) if "l" in wanted else None
        server = self.server_name
        values = {
            "t": token[:3] or "0",
            "c": channel,
            "u": ident.user,
            "i": "255.255.255.255",  # addresses are not shown to other users
            "h": server,
            "s": server,
            "n": name,
            "f": "G" if ident.away else "H",
            "d": "0",
            "l": str(int(user["idle"])) if user is not None else "0",
            "a": "0",  # no accounts
            "o": "n/a",
            "r": ident.realname,
        }
        params = [values[f] for f in "tcuihsnfdlaor" if f in wanted]
        if not params:
            return ""
        return self.num("354", *params, colon="r" in wanted)

    def cmd_whowas(self, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.reply("431", "No nickname given")
            return
        nick = msg.params[0]
        count = 0
        if len(msg.params) > 1 and msg.params[1].lstrip("-").isdigit():
            count = max(0, int(msg.params[1]))
        found = IDENTS.was(nick)[: count or None]
        out = [] if found else [self.num("406", nick, "There was no such nickname")]
        for name, ident, when in found:
            out.append(self.num("314", name, ident.user, self.server_name, "*", ident.realname))
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
            out.append(self.num("312", name, self.server_name, stamp))
        out.append(self.num("369", nick, "End of WHOWAS"))
        self.send(*out)

    def cmd_ison(self, msg: Message) -> None:
        nicks = " ".join(msg.params).split()
        online = [str(u["name"]) for u in map(self.hub.user, nicks) if u is not None]
        self.reply("303", " ".join(online))

    def cmd_userhost(self, msg: Message) -> None:
        out = []
        for nick in " ".join(msg.params).split()[:5]:
            user = self.hub.user(nick)
            if user is not None:
                name = str(user["name"])
                ident = IDENTS.get(name)
                away = "-" if ident.away else "+"
                out.append(f"{name}={away}{ident.user}@{self.server_name}")
        self.reply("302", " ".join(out))


def _add_tag(text: str, tag: str) -> str:
    """One wire line (no CRLF) with ``tag`` added first to its tags."""
    if text.startswith("@"):
        return "@" + tag + ";" + text[1:]
    return "@" + tag + " " + text


def _log_message(event: str, name: Optional[str], to: str, text: str, full: bool) -> None:
    if full:
        logsetup.log.info(event, name=name, to=to, bytes=len(text), text=text)
    else:
        logsetup.log.debug(event, name=name, to=to, bytes=len(text))


_DISPATCH: dict[str, Callable[[IrcSession, Message], None]] = {
    name[4:].upper(): getattr(IrcSession, name)
    for name in dir(IrcSession)
    if name.startswith("cmd_")
}
