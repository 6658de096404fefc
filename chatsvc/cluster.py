"""Cluster mode: rooms that span several chatsvc nodes, ordered by Redis streams.

Imported only when ``[cluster] backend`` is set; the embedded mode never loads
Redis.  docs/cluster.md states the design, the guarantees and the failures.

Order.  Each room has a stream.  A Lua script (``APPEND``) gives every line the
room's next sequence number (the stream id is ``SEQ-0``), stamps the cluster's
epoch and remembers the message id for ten minutes, so a retried append whose
reply was lost is not added twice.  Every node delivers a room's lines, the
sender's own echo included, only when it reads them back from the stream, so
all members on all nodes see one order.

Threads (each with its own Redis connection; none ever holds ``Hub.lock``
while it talks to Redis):

* the **publisher** takes appends and bookkeeping from a bounded queue that
  ``publish`` fills under the hub lock without blocking, and pipelines them;
  while Redis is unreachable it keeps them, and after ``unavailable_after``
  drops the lines with ``! cluster unavailable`` to their senders;
* the **reader** blocks in ``XREAD`` over the room streams and this node's
  inbox and hands events to the hub in sequence order, telling members of a
  gap, an epoch change or a sequence that went backwards;
* the **keeper** renews this node's lease every ``heartbeat`` and reaps nodes
  whose lease ran out (their members are announced as gone, their names
  freed); a node that finds its own lease gone fences itself.

Reader threads of clients talk to Redis only at login (``claim``).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any, Optional

import redis

from chatsvc import __version__, events, logsetup
from chatsvc.config import ClusterConfig
from chatsvc.errors import StartupError
from chatsvc.events import Error, RoomEvent
from chatsvc.hub import Hub, Member
from chatsvc.wakeup import block_process_signals

# Appends a batch of lines.  KEYS: the epoch, then per line its stream, sequence
# and dedupe key.  ARGV: MAXLEN, a fresh epoch (used if there is none), then per
# line its data, origin node, excluded member and message id.  Returns each
# line's number.
APPEND = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch)
end
local out = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local j = 4 * i
  local dedupe = KEYS[4 + 3 * i]
  local seen = redis.call('GET', dedupe)
  if seen then
    out[#out + 1] = tonumber(seen)
  else
    local seq = redis.call('INCR', KEYS[3 + 3 * i])
    redis.call('XADD', KEYS[2 + 3 * i], 'MAXLEN', '~', ARGV[1], seq .. '-0',
               'e', epoch, 'o', ARGV[4 + j], 'x', ARGV[5 + j], 'd', ARGV[3 + j], 'm', ARGV[6 + j])
    redis.call('SET', dedupe, seq, 'EX', 600)
    out[#out + 1] = seq
  end
end
return out
"""

# KEYS: names, this node's members, this node's lease, name bans, address bans
# ARGV: casefolded name, claim token, "node|", member record, the client's address
# Returns {1}, {0} (taken), {-1} (our lease is gone), {-2, ms left} (name banned),
# {-3, ms left} (address banned).
CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local aban = redis.call('HGET', KEYS[5], ARGV[5])
if aban then
  if tonumber(aban) > now then return {-3, tonumber(aban) - now} end
  redis.call('HDEL', KEYS[5], ARGV[5])
end
local ban = redis.call('HGET', KEYS[4], ARGV[1])
if ban then
  if tonumber(ban) > now then return {-2, tonumber(ban) - now} end
  redis.call('HDEL', KEYS[4], ARGV[1])
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[3]) ~= ARGV[3] then return {0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return {1}
"""

# KEYS: name bans or address bans, where bans came from.  ARGV: casefolded name
# or address, seconds (0: lift the ban), "name:NAME" or "address:ADDR", this node.
# An expiry is Redis's clock in ms, so every node reads the same one.
BAN = """
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return redis.call('HSET', KEYS[1], ARGV[1], now + math.floor(tonumber(ARGV[2]) * 1000))
"""

# KEYS: a room's sequence.  ARGV: the highest number this node knows was used.
# After the store lost lines, their numbers are not given out again.
BUMP = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) end
return cur
"""

# KEYS: names, this node's members.  ARGV: casefolded name, claim token
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if rec and cjson.decode(rec)[1] == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: names, this node's members.  ARGV: casefolded name, claim token, record
ROOMS = """
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if rec and cjson.decode(rec)[1] == ARGV[2] then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return 1
"""

# KEYS: nodes, this node's lease.  ARGV: node, incarnation, lease in ms.  Renew the
# lease, or take it again after Redis itself was away -- unless we were reaped.
RENEW = """
local info = redis.call('HGET', KEYS[1], ARGV[1])
if not info or not string.find(info, ARGV[2], 1, true) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: nodes, names, the dead node's members, its lease.  ARGV: the dead node
REAP = """
if redis.call('EXISTS', KEYS[4]) == 1 then return false end
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if redis.call('HGET', KEYS[2], all[i]) == rec[1] then redis.call('HDEL', KEYS[2], all[i]) end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], ARGV[1])
return all
"""

BLOCK_MS = 1000
REMEMBER = 1000  # delivered entries remembered per room, to recognise lost ones
BATCH = 256
APPEND_CHUNK = 64  # lines per script call (one call per line: 12.1k lines/s; this: 14.3k)
RETRY_MIN, RETRY_MAX = 0.05, 1.0
LOGIN_TIMEOUT = 5.0  # a login waits at most this long for Redis


class Append:
    """One line for a room stream, as the publisher holds it until Redis has it."""

    __slots__ = ("data", "exclude", "msgid", "origin", "room", "sender", "since")

    def __init__(
        self,
        room: str,
        data: str,
        exclude: str,
        msgid: str,
        sender: Optional[Member],
        origin: str,
    ) -> None:
        self.origin = origin
        self.room = room
        self.data = data
        self.exclude = exclude
        self.msgid = msgid
        self.sender = sender
        self.since = time.monotonic()


class Keys:
    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.epoch = prefix + "epoch"
        self.names = prefix + "names"
        self.nodes = prefix + "nodes"
        self.bans = prefix + "bans"  # casefolded name -> expiry (ms, Redis's clock)
        self.address_bans = prefix + "abans"  # address -> expiry (ms, Redis's clock)
        self.ban_origin = prefix + "bansrc"  # "name:NAME" or "address:ADDR" -> node

    def ban_hash(self, kind: str) -> str:
        return self.bans if kind == "name" else self.address_bans

    def stream(self, room: str) -> str:
        return f"{self.p}s:{room}"

    def seq(self, room: str) -> str:
        return f"{self.p}q:{room}"

    def dedupe(self, msgid: str) -> str:
        return f"{self.p}d:{msgid}"

    def members(self, node: str) -> str:
        return f"{self.p}m:{node}"

    def lease(self, node: str) -> str:
        return f"{self.p}l:{node}"

    def inbox(self, node: str) -> str:
        return f"{self.p}i:{node}"


class ClusterBackend:
    """The Redis backend behind ``Hub.backend`` (see the module docstring)."""

    spans_nodes = True

    def __init__(self, hub: Hub, ccfg: ClusterConfig, node_id: str, address: str) -> None:
        self.hub = hub
        self.cfg = ccfg
        self.node = node_id
        self.node_id = node_id
        self.address = address
        self.keys = Keys(ccfg.key_prefix)
        self.incarnation = secrets.token_hex(4)
        self._counter = 0  # message ids: node, incarnation, counter
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=ccfg.publish_queue)
        self._control: queue.SimpleQueue[tuple[str, list[str], list[str]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.epoch: Optional[str] = None
        self.down_since: Optional[float] = None  # the publisher cannot reach Redis
        self.last_seq: dict[str, int] = {}
        # What the reader delivered lately, per room: (number, message id), to
        # recognise a store that lost lines even when new ones took their numbers.
        self._delivered: dict[str, collections.deque[tuple[int, str]]] = {}
        self._acked: dict[str, int] = {}  # room -> highest number Redis acknowledged
        self._lost_upto: dict[str, int] = {}  # room -> numbers known lost (no gap notice)
        self._verify = False  # set by the publisher: a number came back twice
        self._inbox_last = "0-0"
        self._password = read_password(ccfg.password_file)
        self._conn = self._connect()  # for claims (client threads, one at a time)
        self._claim_lock = threading.Lock()
        self._scripts = {
            name: self._conn.register_script(text)
            for name, text in (
                ("append", APPEND),
                ("claim", CLAIM),
                ("release", RELEASE),
                ("rooms", ROOMS),
                ("reap", REAP),
                ("renew", RENEW),
                ("bump", BUMP),
            )
        }
        self._reset_lock = threading.Lock()  # one reaction to a reset store at a time
        self._reload_seq = False  # set by the keeper: the reader re-reads the sequences
        self._suspects: dict[str, int] = {}  # node -> rounds seen without a lease

    # --- start and stop -----------------------------------------------------------

    def _connect(self, timeout: Optional[float] = None, single: bool = False) -> redis.Redis:
        """A client; ``single``: one connection, held (no pool round per command)."""
        return redis.Redis.from_url(
            self.cfg.backend,
            password=self._password,
            socket_timeout=timeout or max(BLOCK_MS / 1000 + 2, self.cfg.lease),
            socket_connect_timeout=2.0,
            decode_responses=True,
            health_check_interval=0,
            single_connection_client=single,
        )

    def start(self) -> None:
        """Register this node and start its threads; StartupError if Redis is not there."""
        try:
            self._register()
            self._load_remote()
            self._load_address_bans()
        except redis.RedisError as exc:
            hint = ""
            if self._password is None and ("auth" in str(exc).lower() or "HELLO" in str(exc)):
                hint = " (no password was given: [cluster] password_file, or the systemd"
                hint += f" credential {CREDENTIAL})"
            raise StartupError(f"cannot reach the cluster backend: {exc}{hint}") from None
        for target, name in (
            (self._publisher, "chatsvc-cluster-publisher"),
            (self._reader, "chatsvc-cluster-reader"),
            (self._keeper, "chatsvc-cluster-keeper"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        logsetup.lifecycle.info(
            "cluster_joined",
            node=self.node,
            incarnation=self.incarnation,
            epoch=self.epoch,
            backend=_safe_url(self.cfg.backend),
        )

    def stop(self, timeout: float = 3.0) -> None:
        """Deliver what is queued (bounded), free this node's names, leave the cluster."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline and self.down_since is None:
            self._stop.wait(0.01)
        self._stop.set()
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        try:
            k = self.keys
            with self._conn.pipeline(transaction=True) as p:
                p.delete(k.lease(self.node))
                p.execute()
            self._scripts["reap"](
                keys=[k.nodes, k.names, k.members(self.node), k.lease(self.node)], args=[self.node]
            )
            self._conn.delete(k.inbox(self.node))
        except redis.RedisError:
            pass  # the others reap us when the lease runs out
        logsetup.lifecycle.info("cluster_left", node=self.node)

    def _register(self) -> None:
        k = self.keys
        r = self._conn
        self.epoch = self._epoch(r)
        info = json.dumps(
            {
                "address": self.address,
                "version": __version__,
                "incarnation": self.incarnation,
                "pid": os.getpid(),
                "host": socket.gethostname(),
            }
        )
        with r.pipeline(transaction=True) as p:
            p.set(k.lease(self.node), self.incarnation, px=int(self.cfg.lease * 1000))
            p.hset(k.nodes, self.node, info)
            p.delete(k.members(self.node), k.inbox(self.node))
            for room in self.hub.rooms:
                p.get(k.seq(room))
            replies = p.execute()
        for room, seq in zip(self.hub.rooms, replies[3:]):
            self.last_seq[room] = int(seq or 0)
        self._inbox_last = "0-0"

    def _epoch(self, r: redis.Redis) -> str:
        fresh = secrets.token_hex(8)
        r.set(self.keys.epoch, fresh, nx=True)
        return str(r.get(self.keys.epoch) or fresh)

    def _load_remote(self) -> None:
        """Mirror the members of the other nodes, for /who and /rooms."""
        k = self.keys
        nodes = [str(n) for n in self._conn.hkeys(k.nodes) if n != self.node]
        members: dict[str, tuple[str, str, list[str]]] = {}
        for node in nodes:
            for key, rec in self._conn.hgetall(k.members(node)).items():
                _, name, rooms = _record(str(rec))
                members[str(key)] = (name, node, rooms)
        self.hub.set_remote(members)

    def _load_address_bans(self) -> None:
        """The cluster's address bans, so that they are refused at accept here too.

        At start, and again when the node rejoins after it was reaped (its inbox
        was emptied).  Other bans and lifts arrive through the inbox; a client
        whose address was banned while this node could not hear of it is
        refused at login anyway, where the claim checks the shared list.
        """
        shared = self.bans()
        if shared is None:
            return
        addresses = {b["what"]: b["expires_in"] for b in shared if b["kind"] == "address"}
        with self.hub.lock:
            stale = [a for a in self.hub.address_bans if a not in addresses]
        for address in stale:  # lifted while we could not hear of it
            self.hub.unban(address=address, forward=False)
        for address, left in addresses.items():
            self.hub.ban_address(address, left, "", forward=False)

    # --- called by the hub (lock held: never block) ---------------------------------------

    def publish(
        self, room: str, event: RoomEvent, exclude: Optional[Member], origin: str = ""
    ) -> bool:
        self._counter += 1
        chat = isinstance(event, events.Chat)
        item = Append(
            room,
            json.dumps(events.to_wire(event)),
            (exclude.key or "") if exclude is not None else "",
            f"{self.node}:{self.incarnation}:{self._counter}",
            self.hub.by_name.get(event.sender.casefold()) if chat else None,  # type: ignore[union-attr]
            origin or self.node,
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return self.available or not chat

    @property
    def available(self) -> bool:
        down = self.down_since
        return down is None or time.monotonic() - down < self.cfg.unavailable_after

    def claim(self, m: Member, key: str) -> Optional[Error]:
        """Claim ``key`` cluster-wide (a client's reader thread, at login)."""
        if not self.available:
            return events.error("cluster_unavailable")
        token = f"{self.node}|{self.incarnation}:{secrets.token_hex(4)}"
        k = self.keys
        record = json.dumps([token, key, []])
        try:
            with self._claim_lock:
                got = self._scripts["claim"](
                    keys=[
                        k.names,
                        k.members(self.node),
                        k.lease(self.node),
                        k.bans,
                        k.address_bans,
                    ],
                    args=[key, token, self.node + "|", record, m.addr],
                )
        except redis.RedisError:
            return events.error("cluster_unavailable")
        if got[0] == -1:  # between losing our lease and taking it again
            return events.error("cluster_unavailable")
        if got[0] == -3:
            return events.error("refused", reason="banned")
        if got[0] == -2:
            return events.error("name_banned", name=key, seconds=int(got[1]) / 1000)
        if not got[0]:
            return events.error("name_taken", name=key)
        m.claim = token
        return None

    def release(self, m: Member) -> None:
        if m.key is not None and m.claim:
            self._control.put(("release", [m.key, m.claim], []))
            m.claim = ""

    def release_name(self, key: str, claim: str) -> None:
        if claim:
            self._control.put(("release", [key, claim], []))

    def rooms_changed(self, m: Member) -> None:
        if m.key is not None and m.claim:
            record = json.dumps([m.claim, m.name, list(m.rooms)])
            self._control.put(("rooms", [m.key, m.claim, record], []))

    def send_private(self, node: str, event: events.Private) -> bool:
        self._control.put(("inbox", [node, "d", json.dumps(events.to_wire(event))], []))
        return self.available

    def kick_remote(
        self, node: str, name: str, reason: str, ban_seconds: float, ban_address: bool = False
    ) -> None:
        kick = json.dumps([name, reason, ban_seconds, ban_address])
        self._control.put(("inbox", [node, "kick", kick], []))

    def ban_name(self, key: str, seconds: float) -> None:
        self._control.put(("ban", ["name", key, str(seconds), ""], []))

    def ban_address(self, address: str, seconds: float, reason: str) -> None:
        self._control.put(("ban", ["address", address, str(seconds), reason], []))

    def unban(self, kind: str, what: str) -> None:
        self._control.put(("ban", [kind, what, "0", ""], []))

    # Bans are written by the publisher, in order with the rest of this node's
    # writes, so a lift never overtakes the ban it lifts.  The two reads below run
    # in an admin thread on a connection of their own.

    def ban_known(self, kind: str, what: str) -> bool:
        k = self.keys
        try:
            r = self._connect()
            try:
                with r.pipeline(transaction=False) as p:
                    p.time()
                    p.hget(k.ban_hash(kind), what)
                    (sec, usec), expiry = p.execute()
            finally:
                r.close()
        except redis.RedisError:
            return False
        return expiry is not None and int(expiry) > int(sec) * 1000 + int(usec) // 1000

    def bans(self) -> Optional[list[dict[str, Any]]]:
        k = self.keys
        try:
            r = self._connect()
            try:
                with r.pipeline(transaction=False) as p:
                    p.time()
                    p.hgetall(k.bans)
                    p.hgetall(k.address_bans)
                    p.hgetall(k.ban_origin)
                    (sec, usec), names, addrs, origin = p.execute()
            finally:
                r.close()
        except redis.RedisError as exc:
            logsetup.log.warning("cluster_bans_unreadable", error=str(exc))
            return None
        now = int(sec) * 1000 + int(usec) // 1000
        out = []
        for kind, table in (("name", names), ("address", addrs)):
            for what, expiry in table.items():
                try:
                    left = int(expiry) - now
                except ValueError:
                    continue
                if left > 0:
                    node = origin.get(f"{kind}:{what}")
                    out.append(
                        {
                            "kind": kind,
                            "what": what,
                            "expires_in": round(left / 1000, 1),
                            "node": node,
                        }
                    )
        return out

    def nodes(self) -> list[dict[str, Any]]:
        """Every node: id, address, version, lease left, members (an admin thread)."""
        k = self.keys
        r = self._connect()
        try:
            info = {str(n): str(v) for n, v in r.hgetall(k.nodes).items()}
            with r.pipeline(transaction=False) as p:
                for node in info:
                    p.pttl(k.lease(node))
                    p.hlen(k.members(node))
                got = p.execute()
        finally:
            r.close()
        out = []
        for i, (node, raw) in enumerate(info.items()):
            try:
                meta = json.loads(raw)
            except ValueError:
                meta = {}
            ttl = int(got[2 * i])
            out.append(
                {
                    "id": node,
                    "self": node == self.node,
                    "address": meta.get("address"),
                    "version": meta.get("version"),
                    "incarnation": meta.get("incarnation"),
                    "lease_left": round(ttl / 1000, 3) if ttl >= 0 else None,
                    "members": int(got[2 * i + 1]),
                }
            )
        return out

    # --- the publisher thread -----------------------------------------------------------

    def _publisher(self) -> None:
        block_process_signals()
        # A short timeout: a line must not wait on a dead connection longer than
        # it may wait at all (appends are idempotent: a timed-out batch is retried).
        timeout = min(2.0, max(0.2, self.cfg.unavailable_after / 2))
        r: Optional[redis.Redis] = None  # one held connection (see _reader), made when needed
        # Scripts go by EVALSHA.  (redis-py's Script objects in a pipeline ask
        # SCRIPT EXISTS before every batch: one more round trip per line batch.)
        # They are loaded again after any error: a restarted Redis has none.
        shas: Optional[tuple[str, str, str, str]] = None
        batch: list[Append] = []
        controls: list[tuple[str, list[str], list[str]]] = []
        delay = RETRY_MIN
        while not self._stop.is_set() or batch or not self._queue.empty():
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.05))
                except queue.Empty:
                    pass
                while len(batch) < BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            while True:
                try:
                    controls.append(self._control.get_nowait())
                except queue.Empty:
                    break
            if not batch and not controls:
                if self.down_since is not None:  # nothing to send: is Redis back?
                    try:
                        r = r or self._connect(timeout=timeout, single=True)
                        r.ping()
                    except redis.RedisError:
                        self._stop.wait(delay)
                        delay = min(RETRY_MAX, delay * 2)
                        continue
                    self._reachable()
                continue
            try:
                r = r or self._connect(timeout=timeout, single=True)
                if shas is None:
                    shas = tuple(r.script_load(t) for t in (APPEND, RELEASE, ROOMS, BAN))  # type: ignore[assignment]
                assert shas is not None
                self._flush(r, shas, batch, controls)
            except redis.RedisError as exc:
                shas = None
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    logsetup.log.warning("cluster_unreachable", error=str(exc))
                self._drop_old(batch)
                if self._stop.is_set():
                    return
                self._stop.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            self._reachable()
            delay = RETRY_MIN
            batch, controls = [], []

    def _reachable(self) -> None:
        if self.down_since is not None:
            logsetup.log.info(
                "cluster_reachable", after=round(time.monotonic() - self.down_since, 3)
            )
            self.down_since = None

    def _flush(
        self,
        r: redis.Redis,
        shas: tuple[str, str, str, str],
        batch: list[Append],
        controls: list[tuple[str, list[str], list[str]]],
    ) -> None:
        k = self.keys
        append, release, rooms, ban = shas
        epoch = secrets.token_hex(8)
        history = str(self.cfg.history)
        if len(batch) <= APPEND_CHUNK and not controls:
            # The usual case at chat rates: one script call, without a pipeline's
            # own cost (its object, command stack and reply callbacks).
            keys, args = [k.epoch], [history, epoch]
            for a in batch:
                keys += [k.stream(a.room), k.seq(a.room), k.dedupe(a.msgid)]
                args += [a.data, a.origin, a.exclude, a.msgid]
            self._acknowledged(batch, [r.evalsha(append, len(keys), *keys, *args)])
            return
        others: list[str] = []
        if any(op == "ban" for op, _, _ in controls):
            others = [str(n) for n in r.hkeys(k.nodes) if n != self.node]
        with r.pipeline(transaction=False) as p:
            for start in range(0, len(batch), APPEND_CHUNK):
                keys, args = [k.epoch], [history, epoch]
                for a in batch[start : start + APPEND_CHUNK]:
                    keys += [k.stream(a.room), k.seq(a.room), k.dedupe(a.msgid)]
                    args += [a.data, a.origin, a.exclude, a.msgid]
                p.evalsha(append, len(keys), *keys, *args)
            for op, args, _ in controls:
                if op == "release":
                    p.evalsha(release, 2, k.names, k.members(self.node), *args)
                elif op == "rooms":
                    p.evalsha(rooms, 2, k.names, k.members(self.node), *args)
                elif op == "inbox":
                    entry = {args[1]: args[2]}
                    p.xadd(k.inbox(args[0]), entry, maxlen=1000, approximate=True)  # type: ignore[arg-type]
                elif op == "ban":
                    kind, what, seconds, reason = args
                    origin = f"{kind}:{what}"
                    p.evalsha(
                        ban, 2, k.ban_hash(kind), k.ban_origin, what, seconds, origin, self.node
                    )
                    # Every other node is told at once: an address ban closes its
                    # connections there, a lift drops its own copy of the ban.
                    notice = json.dumps([kind, what, float(seconds), reason])
                    if kind == "address" or float(seconds) <= 0:
                        for node in others:
                            p.xadd(k.inbox(node), {"ban": notice}, maxlen=1000, approximate=True)
            replies = p.execute()
        self._acknowledged(batch, replies)

    def _acknowledged(self, batch: list[Append], replies: list[Any]) -> None:
        """Note the numbers Redis gave; one given a second time means lost lines."""
        numbers = [n for reply in replies[: -(-len(batch) // APPEND_CHUNK)] for n in reply]
        for a, n in zip(batch, numbers):
            seq = int(n)
            if seq <= self._acked.get(a.room, 0) and not self._verify:
                logsetup.log.warning("cluster_number_reused", room=a.room, seq=seq)
                self._verify = True  # the reader checks what it delivered
            self._acked[a.room] = max(seq, self._acked.get(a.room, 0))

    def _drop_old(self, batch: list[Append]) -> None:
        """Lines that waited ``unavailable_after`` are dropped; their senders are told."""
        limit = time.monotonic() - self.cfg.unavailable_after
        old = [a for a in batch if a.since < limit]
        if not old:
            return
        batch[:] = [a for a in batch if a.since >= limit]
        for a in old:
            if a.sender is not None:
                self.hub.tell(a.sender, events.error("cluster_unavailable"))
        logsetup.log.warning("cluster_lines_dropped", count=len(old))

    # --- the reader thread --------------------------------------------------------------

    def _reader(self) -> None:
        block_process_signals()
        r: Optional[redis.Redis] = None
        delay = RETRY_MIN
        while not self._stop.is_set():
            try:
                if r is None:
                    # One held connection: a pooled client checks the idle socket
                    # (a poll) and takes the pool's lock on every XREAD.
                    r = self._connect(single=True)
                    self._resync(r)
                if self._reload_seq:
                    self._reload_seq = False
                    self._load_seq(r)
                if self._verify:  # the publisher saw a number given twice
                    self._verify = False
                    for room in list(self.last_seq):
                        self._verify_room(r, room)
                streams = {
                    self.keys.stream(room): f"{seq}-0" for room, seq in self.last_seq.items()
                }
                streams[self.keys.inbox(self.node)] = self._inbox_last
                got: Any = r.xread(streams, count=500, block=BLOCK_MS)  # type: ignore[arg-type]
            except redis.RedisError as exc:
                logsetup.log.warning("cluster_read_failed", error=str(exc))
                r = None
                self._stop.wait(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = RETRY_MIN
            for stream, entries in got or []:
                if stream == self.keys.inbox(self.node):
                    self._inbox(entries)
                else:
                    self._room_entries(stream[len(self.keys.p) + 2 :], entries)

    def _load_seq(self, r: redis.Redis) -> None:
        with r.pipeline(transaction=False) as p:
            for room in self.hub.rooms:
                p.get(self.keys.seq(room))
            seqs = p.execute()
        self.last_seq = {room: int(seq or 0) for room, seq in zip(self.hub.rooms, seqs)}

    def _check_reset(self, r: redis.Redis) -> bool:
        """An emptied store (a new epoch): re-register, claim names again; True if so."""
        if r.get(self.keys.epoch) == self.epoch:
            return False
        with self._reset_lock:
            if r.get(self.keys.epoch) == self.epoch:
                return False  # the other thread has just handled it
            self._epoch_changed("the cluster's store was reset")
            self._delivered, self._acked = {}, {}  # numbers start again
            self._register()
            self._reload_seq = True
            self._reclaim()
        return True

    def _resync(self, r: redis.Redis) -> None:
        """After (re)connecting: an emptied store, or one that lost lines, is said."""
        self._verify = False
        if self._check_reset(r):
            self._load_seq(r)
            self._reload_seq = False
            return
        for room in list(self.last_seq):
            self._verify_room(r, room)

    def _verify_room(self, r: redis.Redis, room: str) -> None:
        """Whether the store still has what this node delivered and was acknowledged.

        A Redis that acknowledged writes before they reached its disk
        (``appendfsync everysec`` or ``no``) and then crashed comes back with a
        room's sequence lower than what was used: its last lines are gone, and
        new lines may already have taken their numbers.  Either shows here: the
        sequence is below what we delivered or were acknowledged, or an entry
        we delivered is missing or another line.  Then the members are told,
        we continue after the last entry that is still the same, and the
        sequence is raised past every number we know was used, so no number is
        given to a second line from now on.
        """
        last = self.last_seq.get(room, 0)
        known = max(last, self._acked.get(room, 0))
        delivered = self._delivered.get(room) or collections.deque()
        stream = self.keys.stream(room)
        with r.pipeline(transaction=False) as p:
            p.get(self.keys.seq(room))
            p.xrange(stream, count=1)
            if delivered:
                p.xrange(stream, f"{delivered[0][0]}-0", f"{last}-0")
            got = p.execute()
        now, first = int(got[0] or 0), got[1]
        oldest = int(first[0][0].split("-", 1)[0]) if first else now + 1  # trimmed below
        store = (
            {int(i.split("-", 1)[0]): f.get("m") or f.get("d", "") for i, f in got[2:][0]}
            if delivered
            else {}
        )
        same = last
        for seq, mark in delivered:
            if seq >= oldest and store.get(seq) != mark:
                same = seq - 1
                break
        if now >= known and same == last:
            return
        same = min(same, now)
        while delivered and delivered[-1][0] > same:
            delivered.pop()
        self.last_seq[room] = same
        self._lost_upto[room] = int(
            self._scripts["bump"](keys=[self.keys.seq(room)], args=[known], client=r)
        )
        logsetup.log.warning(
            "cluster_lines_lost",
            room=room,
            delivered=last,
            acknowledged=known,
            store=now,
            kept=same,
        )
        self.hub.announce(
            events.Announcement(
                "the cluster's store lost recent lines; lines sent meanwhile may be lost", room
            ),
            room,
            local=True,
        )

    def _epoch_changed(self, why: str) -> None:
        logsetup.log.warning("cluster_epoch_changed", why=why)
        for room in self.hub.rooms:
            self.hub.announce(
                events.Announcement(f"{why}; lines sent meanwhile may be lost", room),
                room,
                local=True,
            )

    def _reclaim(self) -> None:
        """Claim our members' names again (the store was reset)."""
        with self.hub.lock:
            members = [m for m in self.hub.members if m.key is not None and m.close_reason is None]
        for m in members:
            assert m.key is not None
            if self.claim(m, m.key) is not None:
                self.hub.close(m, "fenced", events.error("fenced"))
            else:
                self.rooms_changed(m)

    def _room_entries(self, room: str, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        if room not in self.hub.rooms:
            return
        for entry_id, fields in entries:
            seq = int(entry_id.split("-", 1)[0])
            last = self.last_seq.get(room, 0)
            if fields.get("e") != self.epoch:
                self.epoch = fields.get("e")
                self._epoch_changed("the cluster's store was reset")
            elif seq > last + 1 and last and seq - 1 > self._lost_upto.get(room, 0):
                missed = seq - 1 - max(last, self._lost_upto.get(room, 0))
                self.hub.announce(
                    events.Announcement(f"{missed} lines in {room} were missed", room),
                    room,
                    local=True,
                )
                logsetup.log.warning("cluster_gap", room=room, missed=missed)
            self.last_seq[room] = seq
            delivered = self._delivered.get(room)
            if delivered is None:
                delivered = self._delivered[room] = collections.deque(maxlen=REMEMBER)
            delivered.append((seq, fields.get("m") or fields.get("d", "")))
            try:
                event = events.from_wire(json.loads(fields["d"]))
            except (KeyError, ValueError) as exc:
                logsetup.log.error("cluster_bad_entry", room=room, id=entry_id, error=str(exc))
                continue
            origin = fields.get("o", "")
            self.hub.deliver_remote(
                room,
                event,  # type: ignore[arg-type]
                fields.get("x") or None,
                origin if origin != self.node else "",
            )

    def _inbox(self, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        for entry_id, fields in entries:
            self._inbox_last = entry_id
            if "ban" in fields:
                try:
                    kind, what, seconds, reason = json.loads(fields["ban"])
                    self._apply_ban(str(kind), str(what), float(seconds), str(reason))
                except (ValueError, TypeError) as exc:
                    logsetup.log.error("cluster_bad_entry", room=None, id=entry_id, error=str(exc))
                continue
            if "kick" in fields:
                try:
                    name, reason, ban, *more = json.loads(fields["kick"])
                    by_address = (
                        bool(more[0]) if more else False
                    )  # (absent before bans were shared)
                    self.hub.kick(str(name), str(reason), float(ban), by_address, forward=False)
                except (ValueError, TypeError) as exc:
                    logsetup.log.error("cluster_bad_entry", room=None, id=entry_id, error=str(exc))
                continue
            try:
                event = events.from_wire(json.loads(fields["d"]))
            except (KeyError, ValueError) as exc:
                logsetup.log.error("cluster_bad_entry", room=None, id=entry_id, error=str(exc))
                continue
            if isinstance(event, events.Private):
                self.hub.deliver_private(event)

    def _apply_ban(self, kind: str, what: str, seconds: float, reason: str) -> None:
        """Another node's ban or lift, here too (the reader thread)."""
        if seconds <= 0:
            if kind == "name":
                self.hub.unban(name=what, forward=False)
            else:
                self.hub.unban(address=what, forward=False)
            logsetup.log.info("cluster_unban", kind=kind, what=what)
        elif kind == "address":
            closed = self.hub.ban_address(what, seconds, reason, forward=False)
            logsetup.log.info("cluster_address_ban", address=what, seconds=seconds, closed=closed)

    # --- the keeper thread: lease and reaper -----------------------------------------

    def _keeper(self) -> None:
        block_process_signals()
        r: Optional[redis.Redis] = None
        while not self._stop.wait(self.cfg.heartbeat):
            try:
                if r is None:
                    r = self._connect()
                self._renew(r)
                self._reap(r)
            except redis.RedisError as exc:
                logsetup.log.warning("cluster_lease_failed", error=str(exc))
                r = None

    def _renew(self, r: redis.Redis) -> None:
        k = self.keys
        if self._check_reset(r):
            return
        ms = int(self.cfg.lease * 1000)
        renew = self._scripts["renew"]
        if renew(
            keys=[k.nodes, k.lease(self.node)], args=[self.node, self.incarnation, ms], client=r
        ):
            self._reachable()  # Redis answers: logins need not wait for the publisher's probe
            return
        # We were reaped (paused or cut off past the lease): our members were
        # announced as gone and their names freed.  Come back under a new
        # incarnation first (logins work again at once), then close the members
        # of the old one.
        old = self.incarnation
        self.incarnation = secrets.token_hex(4)
        self._register()  # (a new, empty inbox: ban notices sent meanwhile are read again)
        self._load_address_bans()
        self._reachable()
        self._fence(old)
        logsetup.lifecycle.info("cluster_rejoined", node=self.node, incarnation=self.incarnation)

    def _fence(self, incarnation: str) -> None:
        """Close the members whose names the reaped ``incarnation`` held."""
        mark = f"{self.node}|{incarnation}:"
        with self.hub.lock:
            members = [
                m for m in self.hub.members if m.close_reason is None and m.claim.startswith(mark)
            ]
            for m in members:
                m.claim = ""
        for m in members:
            self.hub.close(m, "fenced", events.error("fenced"))
        logsetup.log.warning("cluster_fenced", node=self.node, closed=len(members))

    def _reap(self, r: redis.Redis) -> None:
        k = self.keys
        nodes = [str(n) for n in r.hkeys(k.nodes) if n != self.node]
        if not nodes:
            return
        with r.pipeline(transaction=False) as p:
            for n in nodes:
                p.exists(k.lease(n))
            alive = p.execute()
        suspects: dict[str, int] = {}
        for node, up in zip(nodes, alive):
            if up:
                continue
            # Dead only when seen without a lease in two rounds in a row: after
            # Redis itself was paused every lease is gone at once, and each node
            # takes its own again within a heartbeat.
            suspects[node] = self._suspects.get(node, 0) + 1
            if suspects[node] < 2:
                continue
            gone = self._scripts["reap"](
                keys=[k.nodes, k.names, k.members(node), k.lease(node)], args=[node], client=r
            )
            if not gone:
                continue
            members = [(gone[i], _record(gone[i + 1])) for i in range(0, len(gone), 2)]
            logsetup.log.warning("cluster_node_reaped", node=node, members=len(members))
            with self.hub.lock:
                for key, (_, name, rooms) in members:
                    # The rooms from the record, and from what the streams told us
                    # (a record written just before the node died may lag).
                    seen = {r: n[key] for r, n in self.hub.remote_rooms.items() if key in n}
                    for room in dict.fromkeys([*rooms, *seen]):
                        if room in self.hub.rooms:
                            shown = seen.get(room, name)
                            self.publish(room, events.Left(room, shown, "error"), None, node)
        self._suspects = suspects


CREDENTIAL = "redis-password"


def read_password(path: str, environ: Optional[dict[str, str]] = None) -> Optional[str]:
    """The Redis password: from ``path``, else the systemd credential, else none.

    A password never sits in the config, the unit or the logs: the operator keeps
    it in a root-only file that systemd hands over (``LoadCredential=``).
    """
    env = os.environ if environ is None else environ
    if not path and env.get("CREDENTIALS_DIRECTORY"):
        candidate = os.path.join(env["CREDENTIALS_DIRECTORY"], CREDENTIAL)
        path = candidate if os.path.exists(candidate) else ""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise StartupError(
            f"cannot read the cluster password file {path}: {exc.strerror}"
        ) from None


def _record(rec: str) -> tuple[str, str, list[str]]:
    """A member record: (claim token, display name, rooms)."""
    try:
        token, name, rooms = json.loads(rec)
        return str(token), str(name), [str(x) for x in rooms]
    except (ValueError, TypeError):
        return "", "?", []


def _safe_url(url: str) -> str:
    """The backend URL without a password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
