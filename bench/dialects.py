"""What the load generator says and expects on the wire, per server family.

``chat`` is the chatsvc protocol (docs/protocol.md), spoken by chatsvc and the
seed server. ``irc`` is enough of RFC 2812 to register, join a channel, send
and receive PRIVMSG, and quit; rooms map to channels (``lobby`` -> ``#lobby``).
It is spoken to chatsvc's IRC listener and to InspIRCd. ``irc-oper`` is the same
for ngIRCd, whose sending clients also become operators to relax its flood
protection.

Every benchmark message carries ``<send time us> <sender id> <seq> <padding>``
as its text, so a receiver can measure latency and spot gaps without knowing
anything else about the sender.
"""

from __future__ import annotations

import time
from typing import Optional

DEFAULT_ROOM = "lobby"

# (sender id, sequence number, send time in microseconds)
Payload = tuple[int, int, int]


def now_us() -> int:
    # CLOCK_MONOTONIC is system-wide on Linux, so stamps compare across processes.
    return time.monotonic_ns() // 1000


def make_text(gid: int, seq: int, pad: bytes) -> bytes:
    return b"%d %d %d %s" % (now_us(), gid, seq, pad)


def parse_text(text: bytes) -> Optional[Payload]:
    parts = text.split(b" ", 3)
    if len(parts) < 3:
        return None
    try:
        return int(parts[1]), int(parts[2]), int(parts[0])
    except ValueError:
        return None


class Dialect:
    """Base: the chatsvc line protocol."""

    name = "chat"
    #: True when a sender receives its own chat message back (the ack).
    echoes = True

    def login(self, name: str, room: str, sends: bool = False) -> bytes:
        """Bytes to send right after connecting.

        ``room`` empty means "wherever the server puts a new client"; ``sends``
        marks a client that will send at a high rate.
        """
        if not room or room == DEFAULT_ROOM:
            return name.encode() + b"\n"
        return name.encode() + b"\n/join " + room.encode() + b"\n"

    def login_next(self, line: bytes, room: str, sends: bool = False) -> Optional[bytes]:
        """Bytes to send in answer to ``line`` while logging in, or None."""
        return None

    def login_done(self, line: bytes, room: str) -> bool:
        if not room or room == DEFAULT_ROOM:
            return line.startswith(b"* hello ")
        return line.startswith(b"* you are now in " + room.encode())

    def login_error(self, line: bytes) -> bool:
        return line.startswith(b"! ") or line.startswith(b"* server full")

    def chat(self, room: str, text: bytes) -> bytes:
        return text + b"\n"

    def chat_text(self, line: bytes) -> Optional[bytes]:
        """The text of a chat line, or None for anything else."""
        if line[:1] != b"[" or line.startswith(b"[private"):
            return None
        index = line.find(b": ")
        return None if index < 0 else line[index + 2 :]

    def echo_prefix(self, name: str, room: str) -> bytes:
        return b"[" + (room or DEFAULT_ROOM).encode() + b"] " + name.encode() + b": "

    def quit(self) -> bytes:
        return b"/quit\n"

    def pong(self, line: bytes) -> Optional[bytes]:
        return None


class IrcDialect(Dialect):
    name = "irc"
    # IRC servers do not send a PRIVMSG back to its sender: a dedicated
    # receiver in the sender's process reports acks instead.
    echoes = False
    #: Senders send OPER and set user mode +F (ngIRCd only).
    oper_senders = False

    def login(self, name: str, room: str, sends: bool = False) -> bytes:
        nick = name.encode()
        return b"NICK " + nick + b"\r\nUSER " + nick + b" 0 * :" + nick + b"\r\n"

    def login_next(self, line: bytes, room: str, sends: bool = False) -> Optional[bytes]:
        # JOIN once registered (end of the MOTD), as clients do: InspIRCd
        # refuses commands sent before registration completes (451).
        if not room or _numeric(line) not in (b"376", b"422"):
            return None
        out = b""
        if sends and self.oper_senders:
            # Operator status only to set +F, ngIRCd's relaxed flood protection
            # (see the [Operator] block of the generated ngircd.conf).
            nick = line.split(b" ", 3)[2]
            out = b"OPER bench bench\r\nMODE " + nick + b" +F\r\n"
        return out + b"JOIN #" + room.encode() + b"\r\n"

    def login_done(self, line: bytes, room: str) -> bool:
        # Without a channel, registration ends with the MOTD (376) or its
        # absence (422); with one, with the end of the NAMES list (366).
        code = _numeric(line)
        if not room:
            return code in (b"376", b"422")
        return code == b"366"

    def login_error(self, line: bytes) -> bool:
        if line.startswith(b"ERROR"):
            return True
        code = _numeric(line)
        # 422 (no MOTD) is an error numeric that ends registration normally.
        return code is not None and code[:1] in (b"4", b"5") and code != b"422"

    def chat(self, room: str, text: bytes) -> bytes:
        return b"PRIVMSG #" + room.encode() + b" :" + text + b"\r\n"

    def chat_text(self, line: bytes) -> Optional[bytes]:
        index = line.find(b" PRIVMSG ")
        if index < 0:
            return None
        start = line.find(b" :", index + 9)
        return None if start < 0 else line[start + 2 :]

    def echo_prefix(self, name: str, room: str) -> bytes:
        return b"\x00"  # never matches: no echo in IRC

    def quit(self) -> bytes:
        return b"QUIT :bye\r\n"

    def pong(self, line: bytes) -> Optional[bytes]:
        if line.startswith(b"PING"):
            return b"PONG" + line[4:] + b"\r\n"
        return None


class IrcOperDialect(IrcDialect):
    name = "irc-oper"
    oper_senders = True


def _numeric(line: bytes) -> Optional[bytes]:
    # ":server 001 nick :Welcome" -> b"001"
    if line[:1] != b":":
        return None
    parts = line.split(b" ", 2)
    if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return parts[1]


def get(name: str) -> Dialect:
    if name == "irc":
        return IrcDialect()
    if name == "irc-oper":
        return IrcOperDialect()
    if name == "chat":
        return Dialect()
    raise ValueError(f"unknown dialect {name!r}")
