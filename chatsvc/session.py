"""One connected client: its reader thread (greeting, login, line loop, finish).

Threads: exactly one reader thread per session runs ``Session.run``; it is the
only thread that reads the socket, and it never writes to it: replies are
events given to ``Hub.tell``, which the member's writer thread sends (see
outbound.py).  Everything on a ``Session`` (the splitter, the flood bucket)
belongs to its reader thread; the ``Member`` it serves is the hub's (see the
field owners in hub.py).

Flood control counts every line a client sends, blank ones included, before
any other work (only name attempts are free: at most ``MAX_NAME_TRIES``): a
keep-alive every few seconds stays free, a flood of any kind of line is
dropped and, past ``flood_strikes`` in a row, disconnected.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Callable, Optional

from chatsvc import __version__, events, logsetup, protocol
from chatsvc.accounts import MAX_PASSWORD_BYTES, Authenticator, StoreError
from chatsvc.events import Event
from chatsvc.hub import Hub, Member
from chatsvc.protocol import OVERLONG, Command, DecodeError, Frame
from chatsvc.ratelimit import TokenBucket

# A reader thread spends its life blocked in recv() holding a buffer of the size
# it asked for.  479 bytes plus the bytes-object header is 512: CPython's small-
# object allocator serves that from shared pools, where a 4 KiB request would pin
# a malloc chunk per idle client (measured: ~6 KiB of RSS per client, see
# bench/README.md).  When a small read comes back full, the rest is drained at
# once with one larger non-blocking read.
RECV_SIZE = 479
BULK_RECV_SIZE = 16384


class Reader:
    """What a reader thread holds for its connection, whatever the protocol.

    The base of ``Session`` (the line protocol) and ``irc.IrcSession``: the
    hub, the member served, the socket (received from, never written to), the
    TLS channel's receive function (None: the socket's own bytes), the flood
    bucket and the account check (None: no accounts, as mode "open").  All of
    it belongs to the reader thread.
    """

    __slots__ = ("auth", "bucket", "hub", "member", "receive", "sock")

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
        self.receive = receive
        self.bucket = flood_bucket(hub)
        self.auth = auth


class Session(Reader):
    """The reader side of one connection: reads, frames, parses, calls the hub."""

    __slots__ = ()

    def tell(self, *evs: Event) -> None:
        self.hub.tell(self.member, *evs)

    # --- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        m = self.member
        reason = "eof"
        try:
            self.tell(events.Welcome(__version__))
            frames = self._frames()
            if self._login(frames):
                self._chat(frames)
        except OSError:
            reason = "error"
        except Exception:  # a bug must cost one session, never the server
            logsetup.log.exception("session_error", name=m.name, addr=m.addr)
            reason = "error"
        finally:
            final = self.hub.remove(m, reason)
            logsetup.log.info(
                "client_disconnected",
                name=m.name,
                addr=m.addr,
                port=m.port,
                reason=final,
                duration=round(time.time() - m.connected_at, 3),
                messages=m.msgs_sent,
            )

    def _frames(self) -> Iterator[Frame]:
        """Lines from the socket until EOF, each one paid for from the flood bucket.

        Input is discarded once closing began; a line the bucket refuses is
        answered (when it was not blank) and never reaches the caller.
        """
        m = self.member
        splitter = protocol.LineSplitter(self._line_limit())
        for frame in read_frames(self.sock, m, splitter, self._line_limit, self.receive):
            # Names need no token: MAX_NAME_TRIES caps them.  Blank lines
            # before the name and every line after it do.
            if m.name is None and is_text(frame):
                yield frame
                continue
            paid = pay(self.hub, m, self.bucket)
            if paid == PAID:
                yield frame
            elif paid == DROPPED and is_text(frame):
                # every dropped line is answered, so a client that waits for a reply
                # to each line (chatsvc-client in scripted mode) never waits forever
                limits_now = self.hub.cfg.limits
                rate, burst = limits_now.flood_rate, limits_now.flood_burst
                self.tell(events.error("slow_down", rate=rate, burst=burst))

    def _line_limit(self) -> int:
        return self.hub.cfg.limits.max_line_bytes  # read per batch: a reload applies at once

    def _text(self, frame: Frame) -> str | None:
        """Decode one frame, answering the client if it is unusable."""
        if frame is OVERLONG:
            self.tell(events.error("line_too_long", limit=self.hub.cfg.limits.max_line_bytes))
            return None
        assert isinstance(frame, bytes)
        try:
            return protocol.decode(frame)
        except DecodeError as exc:
            self.tell(exc.error)
            return None

    def _login(self, frames: Iterator[Frame]) -> bool:
        m = self.member
        tries = 0
        max_len = self.hub.cfg.limits.name_max_length
        for frame in frames:
            if not is_text(frame):
                continue  # (does not postpone the login timeout: that counts from connect)
            text = self._text(frame)
            if text is not None:
                name = text.strip()
                why = protocol.check_name(name, max_len)
                if why is None and self.auth is not None:
                    step = self._password_step(frames, name)
                    if step is _GONE:
                        return False
                    why = step if isinstance(step, events.Error) else None
                if why is None:
                    why = self.hub.login(m, name)
                if why is None:
                    logsetup.log.info("client_login", name=name, addr=m.addr, port=m.port)
                    logsetup.log.info("room_joined", name=name, room=m.room)
                    return True
                self.tell(why)
                logsetup.log.info("name_rejected", addr=m.addr, reason=why.code)
            tries += 1
            if tries >= protocol.MAX_NAME_TRIES:
                self.hub.close(m, "name_rejected", events.error("too_many_names"))
                for _ in frames:  # read on until the writer's linger ends: no reset
                    pass
                return False
        return False

    def _password_step(self, frames: Iterator[Frame], name: str) -> Optional[object]:
        """Ask for and check the password ``name`` needs, if it needs one.

        None: go on with the login; an ``events.Error``: refuse (one name try);
        ``_GONE``: the connection ended while we waited.  The password is one
        line, hashed here in the reader thread, never logged, never echoed.
        """
        m, auth = self.member, self.auth
        assert auth is not None
        try:
            if not auth.needs_password(name):
                return None
        except StoreError as exc:
            logsetup.log.error("auth_store_error", error=str(exc))
            return events.error("auth_unavailable")
        if self.hub.holds_name(name):  # taken is taken, as without accounts
            return events.error("name_taken", name=name)
        if auth.plaintext_refused(m.addr, m.secure):  # refuse before it is sent
            logsetup.log.warning("auth_failed", name=name, addr=m.addr, reason="plaintext")
            return events.error("password_needs_tls")
        self.tell(events.PasswordWanted(name))
        frame = next(frames, None)
        if frame is None:
            return _GONE
        password = frame if isinstance(frame, bytes) else b"\0" * (MAX_PASSWORD_BYTES + 1)
        verdict = auth.verify(name, password, m.addr, m.secure)
        del password, frame
        if verdict.ok:
            logsetup.log.info("auth_ok", name=name, addr=m.addr)
            return None
        if verdict.reason == "throttled":
            wait = verdict.error.params.get("seconds") if verdict.error else None
            logsetup.log.warning("auth_throttled", name=name, addr=m.addr, seconds=wait)
        else:
            logsetup.log.warning("auth_failed", name=name, addr=m.addr, reason=verdict.reason)
        return verdict.error

    def _chat(self, frames: Iterator[Frame]) -> None:
        for frame in frames:
            if not is_text(frame):
                continue  # a keep-alive: it counted as activity
            text = self._text(frame)
            if text is None:
                continue
            cmd = protocol.parse(text)
            _DISPATCH[cmd.kind](self, cmd)

    # --- commands: one method each, selected by Command.kind ---------------------------

    def cmd_chat(self, cmd: Command) -> None:
        m = self.member
        room = self.hub.say(m, cmd.text)
        if room is None:
            return
        if self.hub.cfg.logging.log_messages:
            logsetup.log.info("message", room=room, name=m.name, bytes=len(cmd.text), text=cmd.text)
        else:
            logsetup.log.debug("message", room=room, name=m.name, bytes=len(cmd.text))

    def cmd_join(self, cmd: Command) -> None:
        m = self.member
        old = m.room
        why = self.hub.join(m, cmd.arg)
        if why is not None:
            self.tell(why)
            return
        logsetup.log.info("room_left", name=m.name, room=old)
        logsetup.log.info("room_joined", name=m.name, room=cmd.arg)

    def cmd_rooms(self, cmd: Command) -> None:
        self.tell(self.hub.room_list(self.member))

    def cmd_who(self, cmd: Command) -> None:
        self.tell(self.hub.who(self.member))

    def cmd_msg(self, cmd: Command) -> None:
        m = self.member
        why = self.hub.private(m, cmd.arg, cmd.text)
        if why is not None:
            self.tell(why)
        elif self.hub.cfg.logging.log_messages:
            logsetup.log.info(
                "private_message", name=m.name, to=cmd.arg, bytes=len(cmd.text), text=cmd.text
            )
        else:
            logsetup.log.debug("private_message", name=m.name, to=cmd.arg, bytes=len(cmd.text))

    def cmd_help(self, cmd: Command) -> None:
        self.tell(events.Help())

    def cmd_quit(self, cmd: Command) -> None:
        self.hub.close(self.member, "bye", events.Goodbye())

    def cmd_unknown(self, cmd: Command) -> None:
        self.tell(events.error("unknown_command", command=cmd.arg))

    def cmd_usage(self, cmd: Command) -> None:
        self.tell(events.error("usage", usage=cmd.arg))

    def cmd_empty(self, cmd: Command) -> None:
        pass


_DISPATCH: dict[str, Callable[[Session, Command], None]] = {
    name[4:]: getattr(Session, name) for name in dir(Session) if name.startswith("cmd_")
}


# --- shared by every protocol's reader thread (the line protocol and IRC) --------------

PAID, DROPPED, CUT = "paid", "dropped", "cut"
_GONE = object()  # the connection ended during the password step


Receive = Callable[[], bytes]  # blocking; b"" at EOF, OSError on a reset


def read_frames(
    sock: socket.socket,
    m: Member,
    splitter: protocol.LineSplitter,
    limit: Optional[Callable[[], int]] = None,
    receive: Optional[Receive] = None,
) -> Iterator[Frame]:
    """Frames from ``sock`` (or from ``receive``: a TLS channel's plaintext) until
    EOF; the rest is discarded once ``m`` is closing.

    Every frame counts as activity for the idle timeout.  ``limit``, if given,
    is read before each batch, so a reloaded line limit applies at once.
    """
    recv = sock.recv
    while True:
        if receive is not None:
            data = receive()
        else:
            data = recv(RECV_SIZE)
            if len(data) == RECV_SIZE:
                try:
                    data += recv(BULK_RECV_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
        if not data:
            return
        if limit is not None:
            splitter.limit = limit()
        for frame in splitter.feed(data):
            if m.close_reason is not None:  # closing: discard the rest
                break
            m.last_active = time.monotonic()
            yield frame


def flood_bucket(hub: Hub) -> TokenBucket:
    """A new connection's bucket, full, at the live limits."""
    limits = hub.cfg.limits
    return TokenBucket(limits.flood_rate, limits.flood_burst, time.monotonic())


def pay(hub: Hub, m: Member, bucket: TokenBucket) -> str:
    """Take a token for one line: ``PAID``, ``DROPPED`` (answer it) or ``CUT`` (flooding).

    The bucket follows the live limits; past ``flood_strikes`` refused lines in a
    row the member is closed as ``flood``.
    """
    limits = hub.cfg.limits  # may change on reload
    if bucket.rate != limits.flood_rate or bucket.burst != limits.flood_burst:
        bucket.rate, bucket.burst = limits.flood_rate, float(limits.flood_burst)
    if bucket.take(time.monotonic()):
        m.throttled = False
        return PAID
    m.throttled = True
    if limits.flood_strikes and bucket.strikes > limits.flood_strikes:
        hub.close(m, "flood", events.error("flooding"))
        return CUT
    return DROPPED


def is_text(frame: Frame) -> bool:
    """Not a blank line (an overlong one counts as text)."""
    return not isinstance(frame, bytes) or bool(frame.strip())
