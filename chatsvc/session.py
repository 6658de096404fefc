"""One connected client: its reader thread (setup, login, line loop, finish).

Threads: exactly one reader thread per session runs ``Session.run``; it is the
only thread that reads the socket.  It never writes to it: replies go through
``Hub.reply`` into the outbox, which the writer thread sends (see outbound.py).
``bucket`` and the splitter belong to the reader thread; ``last_active`` is
written by it and read by the reaper (a float store, no lock needed); all
outbound fields are guarded by ``Hub.lock``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Callable

from chatsvc import __version__, logsetup, protocol
from chatsvc.hub import Hub
from chatsvc.outbound import Conn
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
GREETING = (
    protocol.notice(f"welcome to chatsvc {__version__}"),
    protocol.notice("please enter your name"),
)


class Session(Conn):
    __slots__ = ("bucket", "hub")

    def __init__(self, hub: Hub, sock: socket.socket, addr: str, port: int) -> None:
        super().__init__(sock, addr, port)
        self.hub = hub
        limits = hub.cfg.limits
        self.bucket = TokenBucket(limits.flood_rate, limits.flood_burst, time.monotonic())

    # --- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        reason = "eof"
        try:
            self.hub.reply(self, *GREETING)
            frames = self._frames()
            if self._login(frames):
                self._chat(frames)
        except OSError:
            reason = "error"
        except Exception:  # a bug must cost one session, never the server
            logsetup.log.exception("session_error", name=self.name, addr=self.addr)
            reason = "error"
        finally:
            final = self.hub.remove(self, reason)
            logsetup.log.info(
                "client_disconnected",
                name=self.name,
                addr=self.addr,
                port=self.port,
                reason=final,
                duration=round(time.time() - self.connected_at, 3),
                messages=self.msgs_sent,
            )

    def _frames(self) -> Iterator[Frame]:
        """Lines from the socket until EOF; input is discarded once closing began."""
        splitter = protocol.LineSplitter(self.hub.cfg.limits.max_line_bytes)
        recv = self.sock.recv
        while True:
            data = recv(RECV_SIZE)
            if not data:
                return
            if len(data) == RECV_SIZE:
                try:
                    data += recv(BULK_RECV_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            if self.closing is not None:
                continue
            yield from splitter.feed(data)

    def _text(self, frame: Frame) -> str | None:
        """Decode one frame, answering the client if it is unusable."""
        self.last_active = time.monotonic()
        if frame is OVERLONG:
            limit = self.hub.cfg.limits.max_line_bytes
            self.hub.reply(self, protocol.error(f"line too long (max {limit} bytes); discarded"))
            return None
        assert isinstance(frame, bytes)
        try:
            return protocol.decode(frame)
        except DecodeError as exc:
            self.hub.reply(self, protocol.error(str(exc)))
            return None

    def _login(self, frames: Iterator[Frame]) -> bool:
        tries = 0
        max_len = self.hub.cfg.limits.name_max_length
        for frame in frames:
            if self.closing is not None:
                continue
            if isinstance(frame, bytes) and not frame.strip():
                continue  # (does not postpone the login timeout: that counts from connect)
            text = self._text(frame)
            if text is not None:
                name = text.strip()
                why = protocol.check_name(name, max_len) or self.hub.login(self, name)
                if why is None:
                    logsetup.log.info("client_login", name=name, addr=self.addr, port=self.port)
                    logsetup.log.info("room_joined", name=name, room=self.room)
                    return True
                self.hub.reply(self, protocol.error(why))
                logsetup.log.info("name_rejected", addr=self.addr, reason=why)
            tries += 1
            if tries >= protocol.MAX_NAME_TRIES:
                self.hub.close(
                    self, "name_rejected", protocol.error("too many rejected names; closing")
                )
        return False

    def _chat(self, frames: Iterator[Frame]) -> None:
        for frame in frames:
            if self.closing is not None:
                continue
            if isinstance(frame, bytes) and not frame.strip():
                self.last_active = time.monotonic()  # a keep-alive: not idle
                continue
            limits = self.hub.cfg.limits  # may change on reload
            bucket = self.bucket
            if bucket.rate != limits.flood_rate or bucket.burst != limits.flood_burst:
                bucket.rate, bucket.burst = limits.flood_rate, float(limits.flood_burst)
            if not bucket.take(time.monotonic()):
                self._throttle()
                continue
            self.throttled = False
            text = self._text(frame)
            if text is None:
                continue
            cmd = protocol.parse(text)
            _DISPATCH[cmd.kind](self, cmd)

    def _throttle(self) -> None:
        self.last_active = time.monotonic()
        self.throttled = True
        limits = self.hub.cfg.limits
        if not limits.flood_strikes or self.bucket.strikes <= limits.flood_strikes:
            # every dropped line is answered, so a client that waits for a reply
            # to each line (chatsvc-client in scripted mode) never waits forever
            self.hub.reply(
                self,
                protocol.error(
                    f"slow down: line dropped (limit {limits.flood_rate:g} lines/s, "
                    f"bursts of {limits.flood_burst})"
                ),
            )
        if limits.flood_strikes and self.bucket.strikes > limits.flood_strikes:
            self.hub.close(self, "flood", protocol.error("flooding; disconnected"))

    # --- commands: one method each, selected by Command.kind ---------------------------

    def cmd_chat(self, cmd: Command) -> None:
        room = self.hub.say(self, cmd.text)
        if room is None:
            return
        if self.hub.cfg.logging.log_messages:
            logsetup.log.info(
                "message", room=room, name=self.name, bytes=len(cmd.text), text=cmd.text
            )
        else:
            logsetup.log.debug("message", room=room, name=self.name, bytes=len(cmd.text))

    def cmd_join(self, cmd: Command) -> None:
        old = self.room
        why = self.hub.join(self, cmd.arg)
        if why is not None:
            self.hub.reply(self, protocol.error(why))
            return
        logsetup.log.info("room_left", name=self.name, room=old)
        logsetup.log.info("room_joined", name=self.name, room=cmd.arg)

    def cmd_rooms(self, cmd: Command) -> None:
        self.hub.reply(self, self.hub.room_counts(self))

    def cmd_who(self, cmd: Command) -> None:
        self.hub.reply(self, self.hub.who(self))

    def cmd_msg(self, cmd: Command) -> None:
        why = self.hub.private(self, cmd.arg, cmd.text)
        if why is not None:
            self.hub.reply(self, protocol.error(why))
        elif self.hub.cfg.logging.log_messages:
            logsetup.log.info(
                "private_message",
                name=self.name,
                to=cmd.arg,
                bytes=len(cmd.text),
                text=cmd.text,
            )
        else:
            logsetup.log.debug("private_message", name=self.name, to=cmd.arg, bytes=len(cmd.text))

    def cmd_help(self, cmd: Command) -> None:
        self.hub.reply(self, *(protocol.notice(line) for line in protocol.HELP_LINES))

    def cmd_quit(self, cmd: Command) -> None:
        self.hub.close(self, "bye", protocol.notice("goodbye"))

    def cmd_unknown(self, cmd: Command) -> None:
        self.hub.reply(self, protocol.error(f"unknown command: {cmd.arg} (try /help)"))

    def cmd_usage(self, cmd: Command) -> None:
        self.hub.reply(self, protocol.error(f"usage: {cmd.arg}"))

    def cmd_empty(self, cmd: Command) -> None:
        pass


_DISPATCH: dict[str, Callable[[Session, Command], None]] = {
    name[4:]: getattr(Session, name) for name in dir(Session) if name.startswith("cmd_")
}
