"""The shared state: rooms, the name -> member map, bans and counters.

Who calls in
  * each session's reader thread: ``add``/``login``/``say``/``join``/``private``/
    ``reply``/``close``/``remove``;
  * the accept loop (main thread): ``add``, ``reap``, ``begin_shutdown``;
  * the writer thread: takes members' outboxes (``Member.out``) under ``lock``;
  * admin threads: ``kick``, ``announce``, ``stats``, ``rooms``, ``users``.

Lock discipline
  One lock, ``Hub.lock``.  It guards every map and counter here and the outbound
  fields of every member (``out``, ``queued``, ``dirty``, ``closing``).  It is held
  only to change maps and to append ready-encoded lines to outboxes -- never
  around socket I/O and never around logging: methods collect what to log and
  log after releasing it, and wake the writer (a pipe write) after releasing it.
  Because every line for a room is appended while the lock is held, all members
  of a room see the room's lines in the same order.

Fan-out seam
  Room delivery goes through ``Hub.backend`` (:class:`RoomBackend`).  The embedded
  default, :class:`LocalBackend`, appends to local members' outboxes.  A
  multi-node backend (e.g. Redis pub/sub) would publish there and feed lines
  received from other nodes back through ``Hub.deliver_remote``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Optional, Protocol

from chatsvc import protocol
from chatsvc.config import Config


class Member:
    """One connection as the hub and the writer see it (``Session`` extends it)."""

    __slots__ = (
        "addr",
        "close_flush",
        "closing",
        "connected_at",
        "connected_mono",
        "dirty",
        "key",
        "last_active",
        "msgs_sent",
        "name",
        "out",
        "port",
        "queued",
        "room",
        "throttled",
        "w",
    )

    def __init__(self, addr: str = "127.0.0.1", port: int = 0) -> None:
        self.addr = addr
        self.port = port
        self.name: Optional[str] = None  # set at login
        self.key: Optional[str] = None  # casefolded name, the key in Hub.by_name
        self.room: Optional[str] = None
        self.connected_at = time.time()
        self.connected_mono = time.monotonic()  # the login timeout counts from here
        self.last_active = self.connected_mono
        self.msgs_sent = 0
        self.throttled = False
        # Outbound state, guarded by Hub.lock; the writer drains ``out``.
        self.out: list[bytes] = []
        self.queued = 0  # bytes in ``out`` plus bytes the writer holds unsent
        self.dirty = False  # already on the writer's list
        self.closing: Optional[str] = None  # disconnect reason once closing began
        self.close_flush = True  # deliver what is queued before closing
        self.w: Writer = _UNASSIGNED  # the writer that serves it, set by Hub.add

    @property
    def label(self) -> str:
        return self.name or f"{self.addr}:{self.port}"


class Writer(Protocol):
    """What the hub needs from the outbound writer (see ``chatsvc.outbound``).

    ``dirty``, ``closing`` and ``retired`` are lists guarded by ``Hub.lock``;
    ``claim_wake`` is called with the lock held, ``wake`` after releasing it.
    """

    dirty: list[Member]
    closing: list[Member]
    retired: list[Member]

    def claim_wake(self) -> bool: ...

    def wake(self) -> None: ...


class NullWriter:
    """A writer that never sends: for unit tests of the hub's logic."""

    def __init__(self) -> None:
        self.dirty: list[Member] = []
        self.closing: list[Member] = []
        self.retired: list[Member] = []

    def claim_wake(self) -> bool:
        return False

    def wake(self) -> None:
        pass


_UNASSIGNED: Writer = NullWriter()


class RoomBackend(Protocol):
    """Where room fan-out goes; called with ``Hub.lock`` held, must not block."""

    def publish(self, room: str, line: bytes, exclude: Optional[Member]) -> None: ...


class LocalBackend:
    """The embedded single-process backend: deliver to this hub's members."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def publish(self, room: str, line: bytes, exclude: Optional[Member]) -> None:
        self._hub.deliver_local(room, line, exclude)


# Why a member left, as the room is told (None: say nothing).
LEAVE_SUFFIX = {
    "bye": "",
    "eof": " (disconnected)",
    "error": " (connection lost)",
    "idle": " (idle)",
    "flood": " (flood)",
    "send_queue_exceeded": " (too slow)",
    "login_timeout": "",
    "name_rejected": "",
}


class KickResult(NamedTuple):
    """What ``Hub.kick`` did: each part can happen without the others."""

    kicked: bool  # a logged-in user of that name was disconnected
    name_banned: bool  # the name is banned (until the ban's expiry)
    address: Optional[str]  # the address banned too (only known for a kicked user)
    also_closed: int  # other connections from that address closed by the address ban


class Hub:
    def __init__(
        self,
        cfg: Config,
        writers: Sequence[Writer] = (),
        lock: threading.Lock | None = None,
    ) -> None:
        self.lock = lock or threading.Lock()
        # Members are spread over the writers round-robin; each writer sends to
        # and closes only its own members' sockets.
        self.writers: list[Writer] = list(writers) or [NullWriter()]
        self.writer = self.writers[0]
        self._next_writer = 0
        self.backend: RoomBackend = LocalBackend(self)
        self.started_at = time.time()
        self.rooms: dict[str, dict[Member, None]] = {r: {} for r in cfg.rooms.names}
        self.members: dict[Member, None] = {}  # every connection, logged in or not
        self.by_name: dict[str, Member] = {}
        self.per_ip: Counter[str] = Counter()
        self.bans: dict[str, float] = {}  # casefolded name -> monotonic expiry
        self.address_bans: dict[str, float] = {}  # address -> monotonic expiry
        self.shutting_down = False
        # counters
        self.messages_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.kicks = 0
        self.connections = 0
        self.logins = 0
        self.drops: Counter[str] = Counter()  # disconnect reason -> count
        self.refused: Counter[str] = Counter()
        self.apply(cfg)

    def apply(self, cfg: Config) -> None:
        """Take the run-time-changeable settings (limits, logging flags) from ``cfg``."""
        self.cfg = cfg
        self.default_room = cfg.rooms.default
        self.send_cap = cfg.limits.send_queue_bytes
        self.announce_limit = cfg.rooms.announce_limit
        self.max_clients = cfg.server.max_clients
        self.max_per_ip = cfg.server.max_clients_per_ip

    # --- enqueueing (lock held) --------------------------------------------------

    def _put(self, m: Member, line: bytes) -> None:
        """Append one line to a member's outbox; lock held."""
        if m.closing is not None and not m.close_flush:
            return
        q = m.queued + len(line)
        if q > self.send_cap and m.closing is None:
            self._begin_close(m, "send_queue_exceeded", None, flush=False)
            return
        m.queued = q
        m.out.append(line)
        if not m.dirty:
            m.dirty = True
            m.w.dirty.append(m)

    @staticmethod
    def _drop_out(m: Member) -> None:
        """Forget what is queued in the outbox (not what the writer holds); lock held."""
        if m.out:
            m.queued -= sum(map(len, m.out))
            m.out.clear()

    def deliver_local(self, room: str, line: bytes, exclude: Optional[Member] = None) -> None:
        """Append ``line`` to every local member of ``room``; lock held."""
        n = len(line)
        cap = self.send_cap
        over: list[Member] = []
        count = 0
        for m in self.rooms[room]:
            if m is exclude:
                continue
            q = m.queued + n
            if q > cap:
                over.append(m)
                continue
            m.queued = q
            m.out.append(line)
            count += 1
            if not m.dirty:
                m.dirty = True
                m.w.dirty.append(m)
        self.bytes_out += n * count
        for m in over:
            self._begin_close(m, "send_queue_exceeded", None, flush=False)

    def deliver_remote(self, room: str, line: bytes) -> None:
        """Entry point for lines a multi-node backend received from another node."""
        with self.lock:
            if room in self.rooms:
                self.deliver_local(room, line)
        self._done()

    def _announce_membership(self, room: str, text: str, exclude: Member) -> None:
        if len(self.rooms[room]) <= self.announce_limit:
            self.backend.publish(room, protocol.notice(text), exclude)

    def _done(self) -> None:
        """Release-time duty of every public method: wake the writers that are owed."""
        with self.lock:
            owed = [w for w in self.writers if w.claim_wake()]
        for w in owed:
            w.wake()

    # --- connections -------------------------------------------------------------

    def add(self, m: Member) -> str | None:
        """Admit a new connection, or say why not (``server_full``, ``per_ip_limit``)."""
        with self.lock:
            expiry = self.address_bans.get(m.addr)
            if expiry is not None and expiry <= time.monotonic():
                del self.address_bans[m.addr]
                expiry = None
            if self.shutting_down:
                reason = "shutting_down"
            elif expiry is not None:
                reason = "banned"
            elif len(self.members) >= self.max_clients:
                reason = "server_full"
            elif self.max_per_ip and self.per_ip[m.addr] >= self.max_per_ip:
                reason = "per_ip_limit"
            else:
                self.members[m] = None
                m.w = self.writers[self._next_writer]
                self._next_writer = (self._next_writer + 1) % len(self.writers)
                self.per_ip[m.addr] += 1
                self.connections += 1
                return None
            self.refused[reason] += 1
            return reason

    def login(self, m: Member, name: str) -> str | None:
        """Register ``name`` and join the default room; the reason if refused."""
        key = name.casefold()
        with self.lock:
            if m.closing is not None:
                return "closing"
            expiry = self.bans.get(key)
            if expiry is not None:
                left = expiry - time.monotonic()
                if left > 0:
                    return f"the name {name} is banned for another {left:.0f} s"
                del self.bans[key]
            if key in self.by_name:
                return f"name taken: {name}"
            m.name, m.key = name, key
            self.by_name[key] = m
            self.logins += 1
            room = self.default_room
            self.rooms[room][m] = None
            m.room = room
            self._announce_membership(room, f"{name} joined {room}", m)
            self._put(m, protocol.notice(f"hello {name}, you are in {room}"))
        self._done()
        return None

    def join(self, m: Member, room: str) -> str | None:
        """Move ``m`` to ``room``; an error text if that is not possible."""
        with self.lock:
            old = m.room
            if room not in self.rooms:
                return f"no such room: {room} (rooms: {', '.join(self.rooms)})"
            if old is None or m.closing is not None:
                return "not in a room"
            if room == old:
                return f"you are already in {room}"
            del self.rooms[old][m]
            self._announce_membership(old, f"{m.name} left {old}", m)
            self.rooms[room][m] = None
            m.room = room
            self._announce_membership(room, f"{m.name} joined {room}", m)
            self._put(m, protocol.notice(f"you are now in {room}"))
        self._done()
        return None

    def say(self, m: Member, text: str) -> Optional[str]:
        """Chat to ``m``'s room, the sender included; returns the room (None if none)."""
        with self.lock:
            room = m.room
            if room is None or m.closing is not None:
                return None
            line = protocol.chat(room, m.name or "?", text)
            self.messages_in += 1
            self.bytes_in += len(line)
            m.msgs_sent += 1
            self.backend.publish(room, line, None)
        self._done()
        return room

    def private(self, m: Member, target: str, text: str) -> str | None:
        """A private message; the error text if the target is unknown."""
        with self.lock:
            peer = self.by_name.get(target.casefold())
            if peer is None or peer.closing is not None or m.name is None:
                return f"no such user: {target}"
            self.messages_in += 1
            m.msgs_sent += 1
            line = protocol.private(m.name, text)
            self.bytes_in += len(line)
            self._put(peer, line)
            self.bytes_out += len(line)
            self._put(m, protocol.private_echo(m.name, peer.name or target, text))
        self._done()
        return None

    def reply(self, m: Member, *lines: bytes) -> None:
        """Lines to one member only (command output, errors)."""
        with self.lock:
            for line in lines:
                self._put(m, line)
        self._done()

    def room_counts(self, m: Member | None = None) -> bytes:
        with self.lock:
            counts = [(r, len(ms)) for r, ms in self.rooms.items()]
            current = m.room if m else None
        return protocol.rooms_line(counts, current)

    def who(self, m: Member) -> bytes:
        with self.lock:
            room = m.room or self.default_room
            names = [x.name or "?" for x in self.rooms[room]]
        return protocol.who_line(room, names)

    # --- closing -----------------------------------------------------------------

    def _begin_close(
        self, m: Member, reason: str, final: Optional[bytes], *, flush: bool, kicked: str = ""
    ) -> bool:
        """Start closing ``m``: leave its room, queue ``final``, hand it to the writer.

        Lock held.  Idempotent: only the first reason counts.
        """
        if m.closing is not None:
            return False
        # Mark first: the final line may then exceed send_queue_bytes (by one line)
        # instead of re-entering here as send_queue_exceeded.
        m.closing = reason
        m.close_flush = flush
        if final is not None and flush:
            self._put(m, final)
        if not flush:
            self._drop_out(m)
        self._detach(m, reason, kicked)
        m.w.closing.append(m)
        return True

    def _detach(self, m: Member, reason: str, kicked: str = "") -> None:
        """Take ``m`` out of its room and the name map, telling the room; lock held."""
        room = m.room
        if room is not None:
            m.room = None
            del self.rooms[room][m]
            if kicked:
                text: Optional[str] = f"{m.name} was kicked ({kicked})"
            elif self.shutting_down or reason == "shutdown":
                text = None
            else:
                text = f"{m.name} left {room}{LEAVE_SUFFIX.get(reason, '')}"
            if text is not None:
                self._announce_membership(room, text, m)
        if m.key is not None and self.by_name.get(m.key) is m:
            del self.by_name[m.key]

    def close(
        self, m: Member, reason: str, final: Optional[bytes] = None, flush: bool = True
    ) -> bool:
        """Begin a server-side close (bye, idle, flood, ...); False if already closing."""
        with self.lock:
            began = self._begin_close(m, reason, final, flush=flush)
        self._done()
        return began

    def remove(self, m: Member, reason: str) -> str:
        """Called once by the reader thread as it ends; returns the final reason.

        Hands the connection to the writer, which closes the socket.
        """
        with self.lock:
            final_reason = m.closing or reason
            if m.closing is None:
                m.closing = reason
                # A client that shut its sending side may still read: deliver what
                # is queued for it (bounded by the writer's flush timeout).
                m.close_flush = reason == "eof"
            self._detach(m, final_reason)
            if m in self.members:
                del self.members[m]
                self.per_ip[m.addr] -= 1
                if self.per_ip[m.addr] <= 0:
                    del self.per_ip[m.addr]
                self.drops[final_reason] += 1
            if not m.close_flush:
                self._drop_out(m)
            m.w.retired.append(m)
        self._done()
        return final_reason

    def kick(
        self, name: str, reason: str, ban_seconds: float = 0, ban_address: bool = False
    ) -> KickResult:
        """Kick a logged-in user, optionally banning the name and/or its address.

        A name ban is set even when nobody holds the name (a pre-emptive ban);
        an address ban needs the user's connection to know the address, and
        closes every other connection from that address too.
        """
        key = name.casefold()
        address: Optional[str] = None
        also = 0
        with self.lock:
            m = self.by_name.get(key)
            if ban_seconds > 0:
                self.bans[key] = time.monotonic() + ban_seconds
            kicked = m is not None and m.closing is None
            if m is not None and kicked:
                self.kicks += 1
                final = protocol.notice(f"you were kicked: {reason}")
                self._begin_close(m, "kicked", final, flush=True, kicked=reason)
                if ban_address and ban_seconds > 0:
                    address = m.addr
                    self.address_bans[address] = time.monotonic() + ban_seconds
                    also = self._close_address(address, final, reason)
        self._done()
        return KickResult(kicked, ban_seconds > 0, address, also)

    def _close_address(self, address: str, final: bytes, reason: str) -> int:
        """Close every open connection from ``address``; lock held."""
        n = 0
        for x in list(self.members):
            if x.addr == address and x.closing is None:
                self._begin_close(x, "kicked", final, flush=True, kicked=reason)
                n += 1
        return n

    def ban_address(self, address: str, seconds: float, reason: str) -> int:
        """Ban an address for ``seconds``; closes its connections, returns how many."""
        with self.lock:
            self.address_bans[address] = time.monotonic() + seconds
            final = protocol.notice(f"you were kicked: {reason}")
            n = self._close_address(address, final, reason)
            self.kicks += n
        self._done()
        return n

    def unban(self, name: Optional[str] = None, address: Optional[str] = None) -> bool:
        """Lift a name or address ban; False if there was none."""
        with self.lock:
            found = False
            if name is not None:
                found = self.bans.pop(name.casefold(), None) is not None
            if address is not None:
                found = self.address_bans.pop(address, None) is not None or found
            return found

    def ban_list(self) -> list[dict[str, Any]]:
        """Bans in force: kind, what, seconds left."""
        now = time.monotonic()
        with self.lock:
            names = [("name", k, e) for k, e in self.bans.items()]
            addrs = [("address", a, e) for a, e in self.address_bans.items()]
        return [
            {"kind": kind, "what": what, "expires_in": round(expiry - now, 1)}
            for kind, what, expiry in names + addrs
            if expiry > now
        ]

    def announce(self, text: str, room: Optional[str] = None) -> int:
        """A server notice to one room or to every logged-in member; how many got it."""
        line = protocol.notice(text)
        with self.lock:
            targets = [room] if room is not None else list(self.rooms)
            n = 0
            for r in targets:
                n += len(self.rooms[r])
                self.backend.publish(r, line, None)
        self._done()
        return n

    def reap(self, now: float, idle_timeout: float, login_timeout: float) -> list[Member]:
        """Close members idle too long or still nameless too long; returns them."""
        closed: list[Member] = []
        with self.lock:
            for bans in (self.bans, self.address_bans):  # forget expired bans
                for key in [k for k, expiry in bans.items() if expiry <= now]:
                    del bans[key]
            for m in self.members:
                if m.closing is not None:
                    continue
                quiet = now - m.last_active
                if m.name is None and now - m.connected_mono > login_timeout:
                    final = protocol.error("no name given in time; closing")
                    self._begin_close(m, "login_timeout", final, flush=True)
                    closed.append(m)
                elif m.name is not None and idle_timeout and quiet > idle_timeout:
                    final = protocol.error(f"idle for too long ({idle_timeout:g} s); closing")
                    self._begin_close(m, "idle", final, flush=True)
                    closed.append(m)
        self._done()
        return closed

    def begin_shutdown(self, final: bytes) -> int:
        """Refuse new logins and close everyone after what is queued plus ``final``."""
        with self.lock:
            self.shutting_down = True
            everyone = list(self.members)
            for m in everyone:
                self._begin_close(m, "shutdown", final, flush=True)
        self._done()
        return len(everyone)

    def force_close_all(self) -> None:
        """Grace is over: drop whatever is still queued and close everyone now."""
        with self.lock:
            for m in self.members:
                m.close_flush = False
                self._drop_out(m)
                m.w.closing.append(m)
        self._done()

    # --- views ---------------------------------------------------------------------

    def count(self) -> int:
        with self.lock:
            return len(self.members)

    def queued_total(self) -> int:
        with self.lock:
            return sum(m.queued for m in self.members)

    def room_members(self) -> dict[str, list[str]]:
        with self.lock:
            return {r: [m.name or "?" for m in ms] for r, ms in self.rooms.items()}

    def users(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self.lock:
            return [
                {
                    "name": m.name,
                    "room": m.room,
                    "addr": f"{m.addr}:{m.port}",
                    "connected_at": m.connected_at,
                    "idle": round(now - m.last_active, 1),
                    "queued_bytes": m.queued,
                    "messages": m.msgs_sent,
                    "throttled": m.throttled,
                }
                for m in self.members
                if m.name is not None
            ]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "uptime": round(time.time() - self.started_at, 1),
                "clients": len(self.members),
                "logged_in": len(self.by_name),
                "rooms": {r: len(ms) for r, ms in self.rooms.items()},
                "connections": self.connections,
                "logins": self.logins,
                "messages_in": self.messages_in,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "kicks": self.kicks,
                "drops": dict(self.drops),
                "refused": dict(self.refused),
            }

    def names(self) -> Iterable[str]:
        with self.lock:
            return list(self.by_name)
