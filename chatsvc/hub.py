"""The shared state: rooms, the name -> member map, bans, counters, the live config.

Who calls in
  * each session's reader thread: ``add``/``login``/``say``/``join``/``private``/
    ``tell``/``room_list``/``who``/``close``/``remove``; over TLS also ``poke``
    (the writer has ciphertext of its own to send);
  * the accept loop (main thread): ``add``, ``reap``, ``apply`` (reload),
    ``begin_shutdown``, ``force_close_all``, ``announce``;
  * the writer threads: ``collect`` (take their mailbox) and ``sent``;
  * admin threads: ``kick``, ``ban_address``, ``unban``, ``ban_list``,
    ``announce`` and the views (``room_members``, ``users``, ``stats``, ``count``);
  * a multi-node backend's reader thread: ``deliver_remote``.

Lock discipline
  One lock, ``Hub.lock``, created here and taken only by this module's methods.
  It guards every map and counter here, the live config reference, every
  field of every :class:`Member` marked "hub" and every :class:`Mailbox`.  It is
  held only to change maps, render events and append bytes to outboxes --
  never around socket I/O or logging: methods return what to log, and wake the
  writers (a pipe write) after releasing it.  Because every line for a room is
  appended while the lock is held, all members of a room see the room's lines
  in the same order.  The only other lock on a client's path is a TLS
  connection's ``TlsChannel.lock`` (tls.py), a leaf: never held while calling
  in here.

Events
  The hub fans out typed events (``chatsvc.events``); each member's dialect
  renders them, once per dialect per broadcast.  Room delivery goes through
  ``Hub.backend`` (:class:`RoomBackend`).  The embedded default,
  :class:`LocalBackend`, appends to local members' outboxes; a multi-node
  backend would publish the event and feed events from other nodes back
  through ``deliver_remote``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from typing import Any, Callable, NamedTuple, Optional, Protocol

from chatsvc import events
from chatsvc.config import Config
from chatsvc.dialects import LINE, Dialect
from chatsvc.events import Error, Event, RoomEvent


class Mailbox:
    """A writer thread's in-tray.  Every field is guarded by ``Hub.lock``."""

    __slots__ = ("stop", "to_close", "to_retire", "to_send", "wake", "wake_owed")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.to_send: list[Member] = []  # members whose outbox has bytes
        self.to_close: list[Member] = []  # members whose close began
        self.to_retire: list[Member] = []  # members whose reader thread ended
        self.wake_owed = False  # a wake is pending: don't write the pipe again
        self.stop = False
        self.wake = wake  # called after the lock is released

    def _claim_wake(self) -> bool:
        if not self.wake_owed and (self.to_send or self.to_close or self.to_retire or self.stop):
            self.wake_owed = True
            return True
        return False


class Member:
    """One connection as the hub sees it.  Fields by owner:

    * fixed at creation, read by anyone: ``addr``, ``port``, ``connected_at``,
      ``connected_mono``, ``secure`` (came through a TLS listener), ``link``
      (the writer's per-connection state; only the writer thread looks inside
      it); ``dialect`` too, except that an IRC session may switch it through
      ``Hub.set_dialect`` (under the lock);
    * written by the member's reader thread only, read without the lock by
      the reaper and the views (single attribute stores): ``last_active``,
      ``throttled``;
    * hub, guarded by ``Hub.lock``: everything else (``watching``: the names
      it monitors, IRC ``MONITOR``; ``capture``: while not None, replies are
      collected there instead of queued, IRC ``labeled-response``).
    """

    __slots__ = (
        "addr",
        "capture",
        "claim",
        "close_flush",
        "close_reason",
        "connected_at",
        "connected_mono",
        "dialect",
        "key",
        "last_active",
        "link",
        "mailbox",
        "msgs_sent",
        "name",
        "outbox",
        "port",
        "queued",
        "rooms",
        "scheduled",
        "secure",
        "slack",
        "throttled",
        "watching",
    )

    def __init__(
        self,
        addr: str = "127.0.0.1",
        port: int = 0,
        dialect: Dialect = LINE,
        link: Any = None,
        secure: bool = False,
    ) -> None:
        self.addr = addr
        self.port = port
        self.secure = secure  # the connection is TLS (a TLS listener)
        self.dialect = dialect
        self.link = link
        self.connected_at = time.time()
        self.connected_mono = time.monotonic()  # the login timeout counts from here
        # reader thread
        self.last_active = self.connected_mono
        self.throttled = False
        # hub
        self.name: Optional[str] = None  # set at login
        self.key: Optional[str] = None  # casefolded name, the key in Hub.by_name
        self.rooms: dict[str, None] = {}  # one room (line protocol) or several (IRC)
        self.msgs_sent = 0
        self.outbox: list[bytes] = []  # rendered lines the writer has not taken yet
        self.queued = 0  # bytes in ``outbox`` plus bytes the writer holds unsent
        self.slack = 0  # how far a reply took ``queued`` past the bound (see Hub._put)
        self.scheduled = False  # on its mailbox's ``to_send`` list
        self.close_reason: Optional[str] = None  # set once closing began
        self.close_flush = True  # deliver what is queued before closing
        self.mailbox: Mailbox = _NO_WRITER  # set by Hub.add
        self.claim = ""  # the cluster's token for this member's name (cluster mode)
        self.watching: dict[str, str] = {}  # casefolded name -> name as given (MONITOR)
        self.capture: Optional[list[bytes]] = None  # replies held back (labeled-response)

    @property
    def label(self) -> str:
        return self.name or f"{self.addr}:{self.port}"

    @property
    def room(self) -> Optional[str]:
        """The room of a one-room member (the first one joined otherwise); hub."""
        for room in self.rooms:
            return room
        return None


_NO_WRITER = Mailbox(lambda: None)


class Batch(NamedTuple):
    """What a writer takes from its mailbox in one step (see ``Hub.collect``)."""

    sends: list[tuple[Member, bytes]]
    closes: list[tuple[Member, bool]]  # (member, flush first)
    retires: list[tuple[Member, bool]]  # (member, flush first)
    stop: bool


class RoomBackend(Protocol):
    """Where room fan-out and cluster-wide names go (see docs/architecture.md).

    ``spans_nodes``: other nodes share the rooms.  ``claim`` runs in a reader
    thread without the hub lock (it may wait for the cluster: login is the one
    place a client thread may block on it); every other method is called with
    ``Hub.lock`` held and must not block.
    """

    spans_nodes: bool
    node_id: str  # this node's name in the cluster ("" when embedded)

    def publish(self, room: str, event: RoomEvent, exclude: Optional[Member]) -> bool:
        """Fan ``event`` out to ``room``; False if it cannot be taken now."""
        ...

    def claim(self, m: Member, key: str) -> Optional[Error]: ...

    def release(self, m: Member) -> None: ...

    def release_name(self, key: str, claim: str) -> None:
        """Free a name this node claimed (after a rename)."""
        ...

    def rooms_changed(self, m: Member) -> None: ...

    def send_private(self, node: str, event: events.Private) -> bool: ...

    def kick_remote(
        self, node: str, name: str, reason: str, ban_seconds: float, ban_address: bool = False
    ) -> None: ...

    def ban_name(self, key: str, seconds: float) -> None:
        """Share a name ban (0 seconds: lift it)."""
        ...

    def ban_address(self, address: str, seconds: float, reason: str) -> None:
        """Share an address ban: every node refuses it and closes its connections."""
        ...

    def unban(self, kind: str, what: str) -> None:
        """Lift a name or address ban on every node."""
        ...

    def ban_known(self, kind: str, what: str) -> bool:
        """A shared ban in force on a name or address (an admin thread; may wait)."""
        ...

    def bans(self) -> Optional[list[dict[str, Any]]]:
        """Every shared ban, None if the cluster cannot say (an admin thread; may wait)."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes (an admin view; may wait for the cluster)."""
        ...


class LocalBackend:
    """The embedded single-process backend: deliver to this hub's members."""

    spans_nodes = False
    node_id = ""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def publish(self, room: str, event: RoomEvent, exclude: Optional[Member]) -> bool:
        self._hub.deliver_local(room, event, exclude)
        return True

    def claim(self, m: Member, key: str) -> Optional[Error]:
        return None

    def release(self, m: Member) -> None:
        pass

    def release_name(self, key: str, claim: str) -> None:
        pass

    def rooms_changed(self, m: Member) -> None:
        pass

    def send_private(self, node: str, event: events.Private) -> bool:
        return False

    def kick_remote(
        self, node: str, name: str, reason: str, ban_seconds: float, ban_address: bool = False
    ) -> None:
        pass

    def ban_name(self, key: str, seconds: float) -> None:
        pass

    def ban_address(self, address: str, seconds: float, reason: str) -> None:
        pass

    def unban(self, kind: str, what: str) -> None:
        pass

    def ban_known(self, kind: str, what: str) -> bool:
        return False

    def bans(self) -> Optional[list[dict[str, Any]]]:
        return None

    def nodes(self) -> list[dict[str, Any]]:
        return []


class KickResult(NamedTuple):
    """What ``Hub.kick`` did: each part can happen without the others."""

    kicked: bool  # a logged-in user of that name was disconnected
    name_banned: bool  # the name is banned (until the ban's expiry)
    address: Optional[str]  # the address banned too (only known for a kicked user)
    also_closed: int  # other connections from that address closed by the address ban
    address_node: Optional[str] = None  # another node's member: that node bans its address


class Hub:
    def __init__(self, cfg: Config) -> None:
        self.lock = threading.Lock()
        self.cfg = cfg  # the live config: replaced whole by ``apply``, never copied
        self.mailboxes: list[Mailbox] = []
        self._next_mailbox = 0
        self.backend: RoomBackend = LocalBackend(self)
        self.started_at = time.time()
        self.rooms: dict[str, dict[Member, None]] = {r: {} for r in cfg.rooms.names}
        self.members: dict[Member, None] = {}  # every connection, logged in or not
        self.by_name: dict[str, Member] = {}
        self.per_ip: Counter[str] = Counter()
        self.bans: dict[str, float] = {}  # casefolded name -> monotonic expiry
        self.address_bans: dict[str, float] = {}  # address -> monotonic expiry
        self.shutting_down = False
        # Members of other nodes (cluster mode), as their rooms' streams told:
        # room -> casefolded name -> display name, and name -> node.
        self.remote_rooms: dict[str, dict[str, str]] = {r: {} for r in cfg.rooms.names}
        self.remote_nodes: dict[str, str] = {}
        # casefolded name -> the members watching it (IRC MONITOR; bounded per member)
        self.watchers: dict[str, dict[Member, None]] = {}
        self._msgid_prefix = secrets.token_hex(4)  # message ids unique across nodes/restarts
        self._msgid_seq = 0
        # counters
        self.messages_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.kicks = 0
        self.connections = 0
        self.logins = 0
        self.drops: Counter[str] = Counter()  # disconnect reason -> count
        self.refused: Counter[str] = Counter()

    def apply(self, cfg: Config) -> None:
        """Make ``cfg`` the live config (reload); the rooms never change at run time."""
        with self.lock:
            self.cfg = cfg

    def new_mailbox(self, wake: Callable[[], None]) -> Mailbox:
        """A mailbox for a writer thread; members are spread over them round-robin."""
        box = Mailbox(wake)
        with self.lock:
            self.mailboxes.append(box)
        return box

    # --- enqueueing (lock held) --------------------------------------------------

    def _put(self, m: Member, event: Event, reply: bool = False) -> int:
        """Render ``event`` for ``m`` and append it to its outbox; lock held.

        The send-queue bound (see ``collect``): a ``reply`` to the member's own
        request, made while its queue is within ``send_queue_bytes``, may take
        the queue over the bound once, by its own size (``slack``), so asking
        never gets the asker cut.  Returns the bytes queued.
        """
        if m.close_reason is not None and not m.close_flush:
            return 0
        line = m.dialect.render(event)
        if not line:
            return 0
        if reply and m.capture is not None:  # sent later, labeled (see ``capture``)
            m.capture.append(line)
            return len(line)
        cap = self.cfg.limits.send_queue_bytes
        q = m.queued + len(line)
        if q > cap + m.slack and m.close_reason is None:
            if reply and m.queued <= cap:
                m.slack = q - cap
            elif q > 2 * cap + m.slack:
                self._begin_close(m, "send_queue_exceeded", None, flush=False)
                return 0
        m.queued = q
        m.outbox.append(line)
        if not m.scheduled:
            m.scheduled = True
            m.mailbox.to_send.append(m)
        return len(line)

    @staticmethod
    def _drop_outbox(m: Member) -> None:
        """Forget what is in the outbox (not what the writer holds); lock held."""
        if m.outbox:
            m.queued -= sum(map(len, m.outbox))
            m.outbox.clear()

    def deliver_local(self, room: str, event: RoomEvent, exclude: Optional[Member] = None) -> None:
        """Append ``event`` to every local member of ``room``, rendered once per dialect.

        Lock held.
        """
        hard = 2 * self.cfg.limits.send_queue_bytes  # the bound at enqueue (see collect)
        over: list[Member] = []
        rendered: dict[Dialect, bytes] = {}
        dialect: Optional[Dialect] = None
        line = b""
        n = 0
        out = 0
        for m in self.rooms[room]:
            if m is exclude:
                continue
            if m.dialect is not dialect:
                dialect = m.dialect
                line = rendered.get(dialect) or rendered.setdefault(dialect, dialect.render(event))
                n = len(line)
            if not n:  # nothing for this dialect (an IRC TAGMSG for a line client)
                continue
            q = m.queued + n
            if q > hard + m.slack:
                over.append(m)
                continue
            m.queued = q
            m.outbox.append(line)
            out += n
            if not m.scheduled:
                m.scheduled = True
                m.mailbox.to_send.append(m)
        self.bytes_out += out
        for m in over:
            self._begin_close(m, "send_queue_exceeded", None, flush=False)

    def deliver_remote(
        self, room: str, event: RoomEvent, exclude: Optional[str] = None, origin: str = ""
    ) -> None:
        """Entry point for events a multi-node backend read back, in the room's order.

        ``exclude``: the casefolded name of a member who must not get it (a joiner
        its own join, a sender whose dialect does not echo).  ``origin``: the node
        it came from, when it is another node: membership changes there are
        mirrored for /who and /rooms.
        """
        with self.lock:
            if room in self.rooms:
                if origin:
                    self._mirror(room, event, origin)
                membership = (events.Joined, events.Left, events.Kicked, events.Renamed)
                quiet = isinstance(event, membership) and (
                    len(self.rooms[room]) > self.cfg.rooms.announce_limit
                )
                if not quiet:
                    skip = self.by_name.get(exclude) if exclude else None
                    self.deliver_local(room, event, skip)
            owed = self._owed()
        _wake(owed)

    def _mirror(self, room: str, event: RoomEvent, node: str) -> None:
        """Follow another node's membership changes; lock held."""
        if isinstance(event, events.Joined):
            key = event.name.casefold()
            self.remote_rooms[room][key] = event.name
            if self.remote_nodes.get(key) is None:
                self._presence(key, event.name, True)
            self.remote_nodes[key] = node
        elif isinstance(event, events.Renamed):
            old, new = event.old.casefold(), event.new.casefold()
            self.remote_rooms[room].pop(old, None)
            self.remote_rooms[room][new] = event.new
            known = self.remote_nodes.pop(old, None) is not None
            if old != new:  # a change of case only is no news to watchers
                if known:
                    self._presence(old, event.old, False)
                if new not in self.remote_nodes:
                    self._presence(new, event.new, True)
            self.remote_nodes[new] = node
        elif isinstance(event, (events.Left, events.Kicked)):
            key = event.name.casefold()
            self.remote_rooms[room].pop(key, None)
            moving = isinstance(event, events.Left) and event.reason == "moved"
            if (
                not moving
                and not any(key in names for names in self.remote_rooms.values())
                and self.remote_nodes.pop(key, None) is not None
            ):
                self._presence(key, event.name, False)

    def set_remote(self, members: dict[str, tuple[str, str, list[str]]]) -> None:
        """Replace the mirror of other nodes' members: key -> (name, node, rooms)."""
        with self.lock:
            before = {k: self._remote_name(k) for k in self.remote_nodes}
            self.remote_rooms = {r: {} for r in self.rooms}
            self.remote_nodes = {}
            for key, (name, node, rooms) in members.items():
                self.remote_nodes[key] = node
                for room in rooms:
                    if room in self.remote_rooms:
                        self.remote_rooms[room][key] = name
            for key, old_name in before.items():
                if key not in members:
                    self._presence(key, old_name, False)
            for key, (name, _, _) in members.items():
                if key not in before:
                    self._presence(key, name, True)
            owed = self._owed()
        _wake(owed)

    def _remote_name(self, key: str) -> str:
        """The display name of another node's member; lock held."""
        return next((names[key] for names in self.remote_rooms.values() if key in names), key)

    # --- presence (IRC MONITOR) and notifications about a user (lock held) ---------

    def _presence(self, key: str, name: str, online: bool) -> None:
        """Tell the members watching ``key`` that ``name`` came online or left; lock held."""
        watching = self.watchers.get(key)
        if watching:
            event = events.Presence(name, online)
            for w in watching:
                self.bytes_out += self._put(w, event)

    def _online(self, key: str) -> Optional[str]:
        """The display name of the user holding ``key`` on any node, or None; lock held."""
        m = self.by_name.get(key)
        if m is not None and m.close_reason is None:
            return m.name
        if key in self.remote_nodes:
            return self._remote_name(key)
        return None

    def watch(
        self, m: Member, names: list[str], limit: int
    ) -> tuple[list[tuple[str, Optional[str]]], list[str]]:
        """Add ``names`` to what ``m`` watches (at most ``limit`` names in all).

        Returns (name, online display name or None) for each name now watched,
        and the names refused because the list is full.
        """
        added: list[tuple[str, Optional[str]]] = []
        refused: list[str] = []
        with self.lock:
            for name in names:
                key = name.casefold()
                if key not in m.watching and len(m.watching) >= limit:
                    refused.append(name)
                    continue
                m.watching.setdefault(key, name)
                self.watchers.setdefault(key, {})[m] = None
                added.append((name, self._online(key)))
        return added, refused

    def unwatch(self, m: Member, names: Optional[list[str]] = None) -> None:
        """Stop watching ``names`` (None: every name)."""
        with self.lock:
            self._unwatch(m, list(m.watching) if names is None else [n.casefold() for n in names])

    def _unwatch(self, m: Member, keys: list[str]) -> None:
        for key in keys:
            if m.watching.pop(key, None) is not None:
                watching = self.watchers.get(key)
                if watching is not None:
                    watching.pop(m, None)
                    if not watching:
                        del self.watchers[key]

    def watched(self, m: Member) -> list[tuple[str, Optional[str]]]:
        """What ``m`` watches: (name as given, online display name or None)."""
        with self.lock:
            return [(name, self._online(key)) for key, name in m.watching.items()]

    def share(
        self, m: Member, event: Event, room: Optional[str] = None, echo: bool = False
    ) -> None:
        """Tell ``event`` (about ``m``) once to every local member sharing a room with it.

        Only ``room``'s members when given; otherwise also those watching ``m``
        whose dialect follows watched users (``follows_watched``: IRC
        ``extended-monitor``).  ``echo``: ``m`` gets it too.  Each recipient's
        dialect decides whether it shows it (IRC ``away-notify``, ``setname``).
        """
        with self.lock:
            if m.name is None or m.close_reason is not None:
                return
            to: dict[Member, None] = {}
            for r in [room] if room is not None else list(m.rooms):
                to.update(self.rooms.get(r, {}))
            if room is None and m.key is not None:
                for w in self.watchers.get(m.key, {}):
                    if getattr(w.dialect, "follows_watched", False):
                        to[w] = None
            to.pop(m, None)
            if echo:
                to[m] = None
            for x in to:
                self.bytes_out += self._put(x, event, reply=x is m)
            owed = self._owed()
        _wake(owed)

    def capture(self, m: Member, on: bool) -> Optional[list[bytes]]:
        """Start (``on``) or end collecting ``m``'s replies instead of queueing them.

        Ending returns what was collected, for the session to label and
        ``tell`` (IRC ``labeled-response``); None if ``m`` is closing.
        """
        with self.lock:
            held, m.capture = m.capture, ([] if on else None)
            return None if on or m.close_reason is not None else held or []

    def _msgid(self) -> str:
        self._msgid_seq += 1
        return f"{self._msgid_prefix}{self._msgid_seq:x}"

    def deliver_private(self, event: events.Private) -> None:
        """A private message from another node for a member of this one."""
        with self.lock:
            peer = self.by_name.get(event.target.casefold())
            if peer is not None and peer.close_reason is None:
                self.bytes_out += self._put(peer, event)
            owed = self._owed()
        _wake(owed)

    def _announce_membership(self, room: str, event: RoomEvent, exclude: Member) -> None:
        # Across nodes every change travels (the other nodes mirror membership);
        # the announce limit then applies where it is delivered.
        if self.backend.spans_nodes or len(self.rooms[room]) <= self.cfg.rooms.announce_limit:
            self.backend.publish(room, event, exclude)

    def _owed(self) -> list[Mailbox]:
        """Lock held, at the end of every public method: the writers to wake after it."""
        return [b for b in self.mailboxes if b._claim_wake()]

    # --- connections -------------------------------------------------------------

    def add(self, m: Member) -> Optional[str]:
        """Admit a new connection, or the refusal reason (``server_full``, ...)."""
        with self.lock:
            expiry = self.address_bans.get(m.addr)
            if expiry is not None and expiry <= time.monotonic():
                del self.address_bans[m.addr]
                expiry = None
            server = self.cfg.server
            if self.shutting_down:
                reason = "shutting_down"
            elif expiry is not None:
                reason = "banned"
            elif len(self.members) >= server.max_clients:
                reason = "server_full"
            elif server.max_clients_per_ip and self.per_ip[m.addr] >= server.max_clients_per_ip:
                reason = "per_ip_limit"
            else:
                self.members[m] = None
                if not self.mailboxes:  # no writer threads (unit tests of this logic)
                    self.mailboxes.append(Mailbox(lambda: None))
                m.mailbox = self.mailboxes[self._next_mailbox % len(self.mailboxes)]
                self._next_mailbox += 1
                self.per_ip[m.addr] += 1
                self.connections += 1
                return None
            self.refused[reason] += 1
            return reason

    def login(self, m: Member, name: str, join_default: bool = True) -> Optional[Error]:
        """Register ``name`` (and join the default room); why not, if refused."""
        key = name.casefold()
        if self.backend.spans_nodes:  # claim it cluster-wide first; this may wait for Redis
            with self.lock:
                taken = key in self.by_name  # no round trip for a name held here
            if taken:
                return events.error("name_taken", name=name)
            claimed = self.backend.claim(m, key)
            if claimed is not None and claimed.code == "refused":  # a cluster-wide address ban
                self.close(m, "banned", claimed)
                return claimed
            if claimed is not None:
                if claimed.code in ("name_taken", "name_banned"):  # worded as typed
                    return events.error(claimed.code, **{**claimed.params, "name": name})
                return claimed
        with self.lock:
            refusal = self._admit_name(m, name, key)
            if refusal is not None:
                self.backend.release(m)
                return refusal
            m.name, m.key = name, key
            self.by_name[key] = m
            self.logins += 1
            self._presence(key, name, True)
            room: Optional[str] = None
            if join_default:
                room = self.cfg.rooms.default
                self.rooms[room][m] = None
                m.rooms[room] = None
                self.backend.rooms_changed(m)  # queued before the join it goes with
                self._announce_membership(room, events.Joined(room, name), m)
            else:
                self.backend.rooms_changed(m)
            self._put(m, events.Hello(name, room), reply=True)
            owed = self._owed()
        _wake(owed)
        return None

    def _admit_name(self, m: Member, name: str, key: str) -> Optional[Error]:
        """Why ``name`` may not log in now; lock held."""
        if m.close_reason is not None:
            return events.error("closing")
        expiry = self.bans.get(key)
        if expiry is not None:
            left = expiry - time.monotonic()
            if left > 0:
                return events.error("name_banned", name=name, seconds=left)
            del self.bans[key]
        if key in self.by_name:
            return events.error("name_taken", name=name)
        return None

    def join(self, m: Member, room: str) -> Optional[Error]:
        """Move ``m`` to ``room``; why not, if that is not possible."""
        with self.lock:
            old = m.room
            if room not in self.rooms:
                return events.error("no_such_room", room=room, rooms=", ".join(self.rooms))
            if old is None or m.close_reason is not None or m.name is None:
                return events.error("not_in_room")
            if room == old:
                return events.error("already_in_room", room=room)
            del self.rooms[old][m]
            del m.rooms[old]
            self.rooms[room][m] = None
            m.rooms[room] = None
            self.backend.rooms_changed(m)  # queued before the leave and join it goes with
            self._announce_membership(old, events.Left(old, m.name, "moved"), m)
            self._announce_membership(room, events.Joined(room, m.name), m)
            self._put(m, events.NowIn(room), reply=True)
            owed = self._owed()
        _wake(owed)
        return None

    def rename(self, m: Member, name: str) -> Optional[Error]:
        """Change a logged-in member's name (IRC ``NICK``); why not, if refused.

        Its rooms are told (as joins are: not past ``announce_limit``) and the
        member gets its own ``Renamed``.  A change of case only is allowed.
        """
        key = name.casefold()
        old_claim = m.claim
        if self.backend.spans_nodes and key != m.key:  # claim the new name cluster-wide
            with self.lock:
                taken = key in self.by_name
            claimed = self.backend.claim(m, key) if not taken else None
            if taken or claimed is not None:
                m.claim = old_claim
                if taken or (claimed is not None and claimed.code == "name_taken"):
                    return events.error("name_taken", name=name)
                return claimed
        with self.lock:
            refusal = self._rename_refusal(m, name, key)
            if refusal is not None:
                if m.claim != old_claim:  # give back the new claim, keep the old
                    self.backend.release_name(key, m.claim)
                    m.claim = old_claim
                return refusal
            if m.claim != old_claim and m.key is not None:
                self.backend.release_name(m.key, old_claim)
            old, old_key = m.name or "?", m.key or ""
            del self.by_name[old_key]
            m.name, m.key = name, key
            self.by_name[key] = m
            if old_key != key:  # a change of case only is no news to watchers
                self._presence(old_key, old, False)
                self._presence(key, name, True)
            self.backend.rooms_changed(m)
            for room in m.rooms:
                self._announce_membership(room, events.Renamed(room, old, name), m)
            self._put(m, events.Renamed(m.room or "", old, name), reply=True)
            owed = self._owed()
        _wake(owed)
        return None

    def _rename_refusal(self, m: Member, name: str, key: str) -> Optional[Error]:
        """Why ``m`` may not take ``name`` now; lock held."""
        if m.name is None or m.key is None or m.close_reason is not None:
            return events.error("closing")
        expiry = self.bans.get(key)
        if expiry is not None and expiry > time.monotonic():
            return events.error("name_banned", name=name, seconds=expiry - time.monotonic())
        holder = self.by_name.get(key)
        if holder is not None and holder is not m:
            return events.error("name_taken", name=name)
        return None

    def enter(self, m: Member, room: str) -> Optional[Error]:
        """Join ``room`` as well as the rooms ``m`` is in (IRC); why not, if refused.

        The member gets its own ``Joined`` (an IRC client waits for its JOIN);
        the room is told as usual.
        """
        with self.lock:
            if room not in self.rooms:
                return events.error("no_such_room", room=room, rooms=", ".join(self.rooms))
            if m.name is None or m.close_reason is not None:
                return events.error("not_in_room")
            if room in m.rooms:
                return events.error("already_in_room", room=room)
            self.rooms[room][m] = None
            m.rooms[room] = None
            joined = events.Joined(room, m.name)
            self.backend.rooms_changed(m)
            self._announce_membership(room, joined, m)
            self._put(m, joined, reply=True)
            owed = self._owed()
        _wake(owed)
        return None

    def part(self, m: Member, room: str, text: str = "") -> Optional[Error]:
        """Leave one room (IRC ``PART``); the member gets its own ``Left``."""
        with self.lock:
            if room not in m.rooms or m.name is None:
                return events.error("not_on_channel", room=room)
            del self.rooms[room][m]
            del m.rooms[room]
            left = events.Left(room, m.name, "part", text)
            self.backend.rooms_changed(m)
            self._announce_membership(room, left, m)
            self._put(m, left, reply=True)
            owed = self._owed()
        _wake(owed)
        return None

    def say(
        self,
        m: Member,
        text: str,
        room: Optional[str] = None,
        notice: bool = False,
        tags: events.Tags = (),
        tagmsg: bool = False,
    ) -> Optional[str]:
        """Chat to ``room`` (default: ``m``'s one room); returns the room (None if not in it).

        The sender gets its own line back when its dialect echoes (the line
        protocol does; IRC only with ``echo-message``), in the room's order.
        """
        with self.lock:
            if room is None:
                room = m.room
            if room is None or room not in m.rooms or m.close_reason is not None:
                return None
            if m.name is None:
                return None
            self.messages_in += 1
            self.bytes_in += len(text.encode())
            m.msgs_sent += 1
            exclude = None if m.dialect.echo_own else m
            now = time.time()
            chat = events.Chat(room, m.name, text, now, notice, tags, self._msgid(), tagmsg)
            # A labeled request (m.capture) gets its echo as a reply; locally that
            # keeps the room's order, since the fan-out happens under this lock.
            own_echo = exclude is None and m.capture is not None and not self.backend.spans_nodes
            if not self.backend.publish(room, chat, m if own_echo else exclude):
                self._put(m, events.error("cluster_unavailable"), reply=True)
            elif own_echo:
                self._put(m, chat, reply=True)
            owed = self._owed()
        _wake(owed)
        return room

    def private(
        self,
        m: Member,
        target: str,
        text: str,
        notice: bool = False,
        tags: events.Tags = (),
        tagmsg: bool = False,
    ) -> Optional[Error]:
        """A private message; why not, if the target is unknown."""
        with self.lock:
            key = target.casefold()
            peer = self.by_name.get(key)
            node = self.remote_nodes.get(key) if peer is None else None
            if m.name is None or (peer is None and node is None):
                return events.error("no_such_user", name=target)
            if peer is not None and peer.close_reason is not None:
                return events.error("no_such_user", name=target)
            now = time.time()
            msgid = self._msgid()
            if peer is not None:
                peer_name = peer.name or target
                msg = events.Private(
                    m.name, peer_name, text, now, False, notice, tags, msgid, tagmsg
                )
                self.bytes_out += self._put(peer, msg)
            else:
                peer_name = next(
                    (names[key] for names in self.remote_rooms.values() if key in names), target
                )
                msg = events.Private(
                    m.name, peer_name, text, now, False, notice, tags, msgid, tagmsg
                )
                if node is None or not self.backend.send_private(node, msg):
                    return events.error("cluster_unavailable")
            self.messages_in += 1
            self.bytes_in += len(text.encode())
            m.msgs_sent += 1
            self._put(m, msg._replace(echo=True), reply=True)
            owed = self._owed()
        _wake(owed)
        return None

    def set_dialect(self, m: Member, dialect: Dialect) -> None:
        """Switch ``m`` to another dialect (IRC capability negotiation).

        Under the lock, so every event is rendered wholly in the old or the new one.
        """
        with self.lock:
            m.dialect = dialect

    def poke(self, m: Member) -> None:
        """Schedule ``m``'s writer with nothing new to send.

        A TLS reader calls it when reading produced ciphertext (an alert, a
        key-update reply) that the writer must send; the reader holds no other
        lock when it does.
        """
        with self.lock:
            if not m.scheduled:
                m.scheduled = True
                m.mailbox.to_send.append(m)
            owed = self._owed()
        _wake(owed)

    def tell(self, m: Member, *evs: Event) -> None:
        """Events for one member only: replies to its commands, errors."""
        with self.lock:
            for ev in evs:
                self._put(m, ev, reply=True)
            owed = self._owed()
        _wake(owed)

    def room_list(self, m: Optional[Member] = None) -> events.RoomList:
        with self.lock:
            remote = self.remote_rooms
            counts = tuple((r, len(ms) + len(remote[r])) for r, ms in self.rooms.items())
            return events.RoomList(counts, m.room if m else None)

    def who(self, m: Member, room: Optional[str] = None) -> events.WhoList:
        with self.lock:
            room = room or m.room or self.cfg.rooms.default
            names = [x.name or "?" for x in self.rooms[room]]
            names += self.remote_rooms[room].values()
            return events.WhoList(room, tuple(names))

    # --- closing -----------------------------------------------------------------

    def _begin_close(
        self,
        m: Member,
        reason: str,
        final: Optional[Event],
        *,
        flush: bool,
        kicked: str = "",
        text: str = "",
    ) -> bool:
        """Start closing ``m``: leave its room, queue ``final``, hand it to the writer.

        Lock held.  Idempotent: only the first reason counts.
        """
        if m.close_reason is not None:
            return False
        # Mark first: the final line may then exceed send_queue_bytes (by one line)
        # instead of re-entering here as send_queue_exceeded.
        m.close_reason = reason
        m.close_flush = flush
        if final is not None and flush:
            self._put(m, final)
        if not flush:
            self._drop_outbox(m)
        self._detach(m, reason, kicked, text)
        m.mailbox.to_close.append(m)
        return True

    def _detach(self, m: Member, reason: str, kicked: str = "", text: str = "") -> None:
        """Take ``m`` out of its room and the name map, telling the room; lock held."""
        if m.name is not None:
            quiet = self.shutting_down or reason in ("shutdown", "fenced")
            for room in m.rooms:
                del self.rooms[room][m]
                if kicked:
                    self._announce_membership(room, events.Kicked(room, m.name, kicked), m)
                elif not quiet:
                    self._announce_membership(room, events.Left(room, m.name, reason, text), m)
                elif self.backend.spans_nodes and reason != "fenced":
                    # this node stops: its own members need no word, the others do
                    self.backend.publish(room, events.Left(room, m.name, reason, text), m)
            m.rooms = {}
        if m.key is not None and self.by_name.get(m.key) is m:
            del self.by_name[m.key]
            self.backend.release(m)
            self._presence(m.key, m.name or m.key, False)
        if m.watching:
            self._unwatch(m, list(m.watching))

    def close(
        self,
        m: Member,
        reason: str,
        final: Optional[Event] = None,
        flush: bool = True,
        text: str = "",
    ) -> bool:
        """Begin a server-side close (bye, idle, flood, ...); False if already closing.

        ``text``: the member's parting words (IRC ``QUIT :text``), told to its rooms.
        """
        with self.lock:
            began = self._begin_close(m, reason, final, flush=flush, text=text)
            owed = self._owed()
        _wake(owed)
        return began

    def remove(self, m: Member, reason: str) -> str:
        """Called once by the reader thread as it ends; returns the final reason.

        Hands the connection to the writer, which closes the socket.
        """
        with self.lock:
            final_reason = m.close_reason or reason
            if m.close_reason is None:
                m.close_reason = reason
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
                self._drop_outbox(m)
            m.mailbox.to_retire.append(m)
            owed = self._owed()
        _wake(owed)
        return final_reason

    def kick(
        self,
        name: str,
        reason: str,
        ban_seconds: float = 0,
        ban_address: bool = False,
        forward: bool = True,
    ) -> KickResult:
        """Kick a logged-in user, optionally banning the name and/or its address.

        A name ban is set even when nobody holds the name (a pre-emptive ban);
        an address ban needs the user's connection to know the address, and
        closes every other connection from that address too.  In cluster mode
        a member of another node is kicked by its node (``forward``), and a
        name ban holds on every node.
        """
        key = name.casefold()
        address: Optional[str] = None
        also = 0
        with self.lock:
            m = self.by_name.get(key)
            if ban_seconds > 0:
                self.bans[key] = time.monotonic() + ban_seconds
                if forward:  # (a kick forwarded here: the node asked shared it)
                    self.backend.ban_name(key, ban_seconds)
            kicked = m is not None and m.close_reason is None
            node = self.remote_nodes.get(key) if m is None and forward else None
            by_node = ban_address and ban_seconds > 0
            if node is not None:  # a member of another node: its node kicks it
                self.backend.kick_remote(node, name, reason, ban_seconds, by_node)
                kicked = True
            if m is not None and kicked:
                self.kicks += 1
                self._begin_close(
                    m, "kicked", events.YouWereKicked(reason), flush=True, kicked=reason
                )
                if ban_address and ban_seconds > 0:
                    address = m.addr
                    self.address_bans[address] = time.monotonic() + ban_seconds
                    self.backend.ban_address(address, ban_seconds, reason)
                    also = self._close_address(address, reason)
            owed = self._owed()
        _wake(owed)
        address_node = node if node is not None and by_node else None
        return KickResult(kicked, ban_seconds > 0, address, also, address_node)

    def _close_address(self, address: str, reason: str) -> int:
        """Close every open connection from ``address`` as kicked; lock held."""
        n = 0
        for x in list(self.members):
            if x.addr == address and x.close_reason is None:
                self._begin_close(
                    x, "kicked", events.YouWereKicked(reason), flush=True, kicked=reason
                )
                n += 1
        return n

    def ban_address(self, address: str, seconds: float, reason: str, forward: bool = True) -> int:
        """Ban an address for ``seconds``; closes its connections, returns how many.

        In cluster mode the ban is shared (``forward``): every node closes that
        address's connections and refuses it at login.
        """
        with self.lock:
            self.address_bans[address] = time.monotonic() + seconds
            if forward:
                self.backend.ban_address(address, seconds, reason)
            n = self._close_address(address, reason)
            self.kicks += n
            owed = self._owed()
        _wake(owed)
        return n

    def unban(
        self, name: Optional[str] = None, address: Optional[str] = None, forward: bool = True
    ) -> bool:
        """Lift a name or address ban; False if there was none.

        In cluster mode (``forward``) the ban is lifted on every node, and it
        counts as found if any node had set it.
        """
        kind, what = ("name", name.casefold()) if name is not None else ("address", address or "")
        shared = forward and self.backend.spans_nodes and self.backend.ban_known(kind, what)
        with self.lock:
            if kind == "name":
                found = self.bans.pop(what, None) is not None
            else:
                found = self.address_bans.pop(what, None) is not None
            if forward:
                self.backend.unban(kind, what)
        return found or shared

    def ban_list(self) -> list[dict[str, Any]]:
        """Bans in force: kind, what, seconds left (cluster mode: every node's, and whose)."""
        shared = self.backend.bans() if self.backend.spans_nodes else None
        now = time.monotonic()
        with self.lock:
            names = [("name", k, e) for k, e in self.bans.items()]
            addrs = [("address", a, e) for a, e in self.address_bans.items()]
        node = {"node": self.backend.node_id} if self.backend.spans_nodes else {}
        local = [
            {"kind": kind, "what": what, "expires_in": round(expiry - now, 1), **node}
            for kind, what, expiry in names + addrs
            if expiry > now
        ]
        if shared is None:
            return local
        # The cluster's list, plus this node's bans it does not have yet (queued).
        known = {(b["kind"], b["what"]) for b in shared}
        return shared + [b for b in local if (b["kind"], b["what"]) not in known]

    def announce(self, event: RoomEvent, room: Optional[str] = None, local: bool = False) -> int:
        """A server event to one room or to every room; how many members got it.

        ``local``: to this node's members only (a node's own shutdown countdown).
        """
        with self.lock:
            targets = [room] if room is not None else list(self.rooms)
            n = 0
            for r in targets:
                n += len(self.rooms[r])
                if local:
                    self.deliver_local(r, event)
                else:
                    n += len(self.remote_rooms[r])
                    self.backend.publish(r, event, None)
            owed = self._owed()
        _wake(owed)
        return n

    def reap(self, now: float) -> list[Member]:
        """Close members idle too long or still nameless too long; returns them."""
        closed: list[Member] = []
        with self.lock:
            limits = self.cfg.limits
            for bans in (self.bans, self.address_bans):  # forget expired bans
                for key in [k for k, expiry in bans.items() if expiry <= now]:
                    del bans[key]
            for m in self.members:
                if m.close_reason is not None:
                    continue
                if m.name is None and now - m.connected_mono > limits.login_timeout:
                    final: Event = events.error("login_timeout")
                    self._begin_close(m, "login_timeout", final, flush=True)
                    closed.append(m)
                elif (
                    m.name is not None
                    and limits.idle_timeout
                    and now - m.last_active > limits.idle_timeout
                ):
                    final = events.error("idle_timeout", seconds=limits.idle_timeout)
                    self._begin_close(m, "idle", final, flush=True)
                    closed.append(m)
            owed = self._owed()
        _wake(owed)
        return closed

    def begin_shutdown(self, final: Event) -> int:
        """Refuse new logins and close everyone after what is queued plus ``final``."""
        with self.lock:
            self.shutting_down = True
            everyone = list(self.members)
            for m in everyone:
                self._begin_close(m, "shutdown", final, flush=True)
            owed = self._owed()
        _wake(owed)
        return len(everyone)

    def force_close_all(self) -> None:
        """Grace is over: drop whatever is still queued and close everyone now."""
        with self.lock:
            for m in self.members:
                m.close_flush = False
                self._drop_outbox(m)
                m.mailbox.to_close.append(m)
            owed = self._owed()
        _wake(owed)

    # --- the writers' side ---------------------------------------------------------

    def collect(self, box: Mailbox) -> Batch:
        """Take a writer's mailbox: the bytes to send, the closes and retirements.

        The send-queue bound is judged here, where the count is exact: a member
        whose writer still holds more than ``send_queue_bytes`` (plus a reply's
        ``slack``) from earlier sends has stopped reading and is cut.  Judged at
        enqueue time the count could still include bytes the writer had handed
        to the kernel but not yet reported through ``sent``, and a client quick
        to answer a long reply was cut for bytes it had already read.  Between
        two collects the enqueueing side holds each queue to twice the bound.
        """
        with self.lock:
            box.wake_owed = False
            cap = self.cfg.limits.send_queue_bytes
            sends: list[tuple[Member, bytes]] = []
            for m in box.to_send:  # a cut below may append (its leave notice): seen too
                m.scheduled = False
                out = m.outbox
                if out:
                    data = b"".join(out) if len(out) > 1 else out[0]
                    if m.queued - len(data) > cap + m.slack and m.close_reason is None:
                        self._begin_close(m, "send_queue_exceeded", None, flush=False)
                        continue
                    sends.append((m, data))
                    m.outbox = []
                else:  # poked: its writer has bytes of its own (TLS) to send
                    sends.append((m, b""))
            closes = [(m, m.close_flush) for m in box.to_close]
            retires = [(m, m.close_flush) for m in box.to_retire]
            box.to_send, box.to_close, box.to_retire = [], [], []
            batch = Batch(sends, closes, retires, box.stop)
            owed = self._owed()  # a cut told its rooms: other writers may have work
        _wake(owed)
        return batch

    def sent(self, done: list[tuple[Member, int]]) -> None:
        """A writer sent (or dropped) these many bytes of these members' queues."""
        with self.lock:
            cap = self.cfg.limits.send_queue_bytes
            for m, n in done:
                m.queued -= n
                if m.slack and m.queued <= cap:
                    m.slack = 0

    def stop_writer(self, box: Mailbox) -> None:
        with self.lock:
            box.stop = True
            owed = self._owed()
        _wake(owed)

    # --- views ---------------------------------------------------------------------

    def count(self) -> int:
        with self.lock:
            return len(self.members)

    def names(self) -> list[str]:
        """Logged-in names, casefolded (the e2e tests check the name map with it)."""
        with self.lock:
            return list(self.by_name)

    def holds_name(self, name: str) -> bool:
        """Someone is logged in as ``name``, here or (as far as we know) on another node."""
        key = name.casefold()
        with self.lock:
            return key in self.by_name or key in self.remote_nodes

    def room_members(self) -> dict[str, list[str]]:
        """Every room's members, other nodes' too (cluster mode)."""
        with self.lock:
            remote = self.remote_rooms
            return {
                r: [m.name or "?" for m in ms] + list(remote[r].values())
                for r, ms in self.rooms.items()
            }

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes; empty in the embedded mode."""
        return self.backend.nodes()

    def users(self) -> list[dict[str, Any]]:
        """Logged-in users; in cluster mode other nodes' members too (fewer fields)."""
        now = time.monotonic()
        node = self.backend.node_id
        with self.lock:
            remote: dict[str, list[str]] = {}
            for room, names in self.remote_rooms.items():
                for key in names:
                    remote.setdefault(key, []).append(room)
            others = [
                {
                    "name": next(self.remote_rooms[r][key] for r in rooms),
                    "room": rooms[0],
                    "rooms": rooms,
                    "node": self.remote_nodes.get(key, "?"),
                }
                for key, rooms in remote.items()
            ]
            local = [_user_view(m, now, node) for m in self.members if m.name is not None]
            return local + others

    def user(self, name: str) -> Optional[dict[str, Any]]:
        """One logged-in user's view (as in ``users``), found by name; None if absent."""
        now = time.monotonic()
        with self.lock:
            m = self.by_name.get(name.casefold())
            if m is None or m.close_reason is not None:
                return None
            return _user_view(m, now, self.backend.node_id)

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
                "queued_bytes": sum(m.queued for m in self.members),
                **(
                    {"node": self.backend.node_id, "remote_members": len(self.remote_nodes)}
                    if self.backend.spans_nodes
                    else {}
                ),
            }


def _user_view(m: Member, now: float, node: str = "") -> dict[str, Any]:
    """A member as the views show it (with its node in cluster mode); lock held."""
    view = {
        "name": m.name,
        "room": m.room,
        "rooms": list(m.rooms),
        "addr": f"{m.addr}:{m.port}",
        "protocol": m.dialect.name,
        "connected_at": m.connected_at,
        "idle": round(now - m.last_active, 1),
        "queued_bytes": m.queued,
        "messages": m.msgs_sent,
        "throttled": m.throttled,
        "tls": m.secure,
    }
    if node:
        view["node"] = node
    return view


def _wake(owed: list[Mailbox]) -> None:
    for box in owed:
        box.wake()
