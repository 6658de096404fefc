"""The admin control server: JSON lines over a local Unix socket (docs/admin.md).

The protocol itself (shapes, codes, checks) is :mod:`chatsvc.adminproto`; this
module serves it.  It needs an :class:`AdminHost` (the chat server, in
production), never the server class itself.

Threads: ``AdminServer.run`` accepts on its own thread; each admin connection
gets a short-lived thread of its own, so a stuck admin client never blocks
another.  ``_conns_cv`` guards the connection records (``_conns``, each one's
``idle_since``/``handling``/``evicted``) and ``_busy``; it is never held
across socket I/O except ``shutdown()``, which does not block.  At most
``MAX_CONNECTIONS`` connections are served; when a new one arrives at the limit,
the one idle longest (between requests) is closed to admit it, so an operator
holding idle connections cannot lock the others out.  Commands are
``admin_<cmd>`` methods; they call the hub (which takes its own lock) or the
host's ``reload``/``request_stop``.
"""

from __future__ import annotations

import os
import pwd
import select
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable, Optional, Protocol

from chatsvc import __version__, config, events, logsetup, protocol
from chatsvc.accounts import Authenticator, StoreError
from chatsvc.adminpath import ensure_private_dir
from chatsvc.adminproto import (
    DEFAULT_BAN_REASON,
    DEFAULT_KICK_REASON,
    MAX_REQUEST_BYTES,
    Code,
    RequestFailed,
    command_of,
    decode,
    encode,
    failure,
    greeting,
    parse_request,
    success,
)
from chatsvc.config import Config
from chatsvc.errors import ConfigError, StartupError
from chatsvc.hub import KickResult
from chatsvc.wakeup import WakePipe, block_process_signals

REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
# A connection idle at least this long may be closed to admit a new one; a
# client that has just been greeted and is writing its request is left alone.
EVICTABLE_AFTER = 0.5
# On stop, how long requests already being handled get to send their reply
# (the reply to `shutdown` itself is one of them).
REPLY_GRACE = 2.0


class AdminHub(Protocol):
    """The hub's views and actions the admin commands use."""

    def room_members(self) -> dict[str, list[str]]: ...

    def users(self) -> list[dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def kick(
        self, name: str, reason: str, ban_seconds: float = 0, ban_address: bool = False
    ) -> KickResult: ...

    def ban_address(self, address: str, seconds: float, reason: str) -> int: ...

    def unban(self, name: Optional[str] = None, address: Optional[str] = None) -> bool: ...

    def ban_list(self) -> list[dict[str, Any]]: ...

    def nodes(self) -> list[dict[str, Any]]: ...

    def announce(self, event: events.RoomEvent, room: Optional[str] = None) -> int: ...


class AdminHost(Protocol):
    """What the admin server needs from the process it administers."""

    @property
    def hub(self) -> AdminHub: ...

    def config(self) -> Config:
        """The live config (it changes on reload: read it each time)."""
        ...

    def reload(self, check: bool = False) -> dict[str, Any]:
        """Re-read the config file; ConfigError if it is bad (then nothing changed)."""
        ...

    def request_stop(self, reason: Optional[str] = None, delay: float = 0.0) -> None: ...


Result = tuple[dict[str, Any], Optional[str]]  # the reply's result, the audit's target
Handler = Callable[["AdminServer", dict[str, Any]], Result]


class _Conn:
    """One admin connection's record; its fields are guarded by ``_conns_cv``."""

    __slots__ = ("evicted", "handling", "idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = time.monotonic()
        self.handling = False
        self.evicted = False  # closed to admit another; its thread says so and ends


def _check_stale(path: str) -> None:
    """Remove a socket file nobody answers on; refuse if a live server holds it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"admin socket path {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: left by a server that died
        return
    except OSError as exc:
        raise StartupError(f"cannot check admin socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"another chatsvc is running: its admin socket {path} answers")


class AdminServer:
    def __init__(self, host: AdminHost, path: str, private_dir: bool = False) -> None:
        self.host = host
        self.hub = host.hub
        self.path = path
        # The group the socket file is given; [admin] group needs a restart to change.
        self.gid = config.admin_group_id(host.config())
        self._wake = WakePipe()
        self._stop = False
        self._conns_cv = threading.Condition(threading.Lock())
        # Every connection a thread serves; one leaves it before it is closed, so
        # no one shuts down a descriptor number reused since.
        self._conns: set[_Conn] = set()
        self._busy = 0  # requests read and not yet answered
        self._thread: Optional[threading.Thread] = None
        self.sock = self._bind(host.config().admin.mode, private_dir)

    def _bind(self, mode: int, private_dir: bool) -> socket.socket:
        parent = os.path.dirname(self.path)
        if private_dir:  # a fallback location others could have prepared for us
            ensure_private_dir(parent)
        elif parent and not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o700)
            except OSError as exc:
                raise StartupError(
                    f"cannot create admin socket directory {parent}: {exc.strerror}"
                ) from None
        _check_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot create admin socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, mode)
        if self.gid is not None:
            try:
                os.chown(self.path, -1, self.gid)
            except OSError as exc:
                sock.close()
                os.unlink(self.path)
                raise StartupError(
                    f"cannot give admin socket {self.path} to group "
                    f"{self.host.config().admin.group}: {exc.strerror}"
                ) from None
        self._inode = os.stat(self.path).st_ino
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="chatsvc-admin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, let replies being made go out, close the rest, remove the file.

        Without the wait, ``shutdown`` could stop the process before its own
        reply was sent (seen on a loaded machine).
        """
        self._stop = True
        self._wake.wake()
        if self._thread is not None:
            self._thread.join(5)
        with self._conns_cv:
            self._conns_cv.wait_for(lambda: self._busy == 0, REPLY_GRACE)
            for c in self._conns:  # idle between requests: end their threads
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._wake.close()

    def run(self) -> None:
        block_process_signals()  # connection threads started from here inherit the mask
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self._wake.read_fd, select.POLLIN)
        while not self._stop:
            for fd, _ in poller.poll():
                if fd == self._wake.read_fd:
                    self._wake.drain()
                    continue
                try:
                    sock, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    logsetup.log.error("admin_accept_failed", error=exc.strerror)
                    continue
                conn = _Conn(sock)
                with self._conns_cv:
                    admitted, evicted_idle = self._make_room()
                    if admitted:
                        self._conns.add(conn)
                if evicted_idle is not None:
                    logsetup.log.info("admin_idle_closed", idle=round(evicted_idle, 1))
                if not admitted:
                    self._send(sock, failure(Code.BUSY, "every admin connection is busy"))
                    sock.close()
                    continue
                threading.Thread(
                    target=self._serve, args=(conn,), name="chatsvc-admin-conn", daemon=True
                ).start()

    def _make_room(self) -> tuple[bool, Optional[float]]:
        """Whether a new connection fits, and how long the one closed for it was idle.

        At the limit, the connection idle longest (at least ``EVICTABLE_AFTER``) is
        closed; if every one is handling a request or has just connected, the new
        one does not fit.  Lock held.
        """
        open_conns = [c for c in self._conns if not c.evicted]
        if len(open_conns) < MAX_CONNECTIONS:
            return True, None
        now = time.monotonic()
        idle = [c for c in open_conns if not c.handling and now - c.idle_since >= EVICTABLE_AFTER]
        if not idle:
            return False, None
        victim = min(idle, key=lambda c: c.idle_since)
        victim.evicted = True
        try:  # its thread's recv returns; that thread replies and closes
            victim.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        return True, now - victim.idle_since

    # --- one admin connection -----------------------------------------------------------

    def _serve(self, conn: _Conn) -> None:
        try:
            conn.sock.setblocking(True)
            pid, uid, gid = struct.unpack(
                "3i",
                conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")),
            )
            if not self._authorised(uid, gid):
                logsetup.log.warning("admin_denied", uid=uid, pid=pid)
                self._send(
                    conn.sock, failure(Code.FORBIDDEN, f"uid {uid} may not administer chatsvc")
                )
                return
            self._send(conn.sock, greeting(__version__))
            self._requests(conn, uid, pid)
        except OSError:
            pass  # the admin client went away
        except Exception:  # a bug: keep it in the JSON log, not on stderr
            logsetup.log.exception("admin_internal_error", where="connection")
        finally:
            with self._conns_cv:
                self._conns.discard(conn)
            conn.sock.close()

    def _authorised(self, uid: int, gid: int) -> bool:
        if uid in (0, os.getuid()) or uid in self.host.config().admin.uids:
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return False
        return self.gid in os.getgrouplist(user.pw_name, user.pw_gid)

    def _requests(self, conn: _Conn, uid: int, pid: int) -> None:
        splitter = protocol.LineSplitter(MAX_REQUEST_BYTES)  # the chat framing, capped
        conn.sock.settimeout(REQUEST_TIMEOUT)
        while True:
            try:
                data = conn.sock.recv(65536)
            except socket.timeout:
                self._send(conn.sock, failure(Code.TIMEOUT, "no complete request in time"))
                return
            if not data:
                if conn.evicted:
                    self._send_evicted(conn)
                return
            for line in splitter.feed(data):
                if line is protocol.OVERLONG:
                    self._send(conn.sock, failure(Code.TOO_LARGE, "request over 64 KiB"))
                    return
                assert isinstance(line, bytes)
                if not line.strip():
                    continue
                if not self._begin(conn):
                    self._send_evicted(conn)
                    return
                try:
                    self._send(conn.sock, self._handle(line, uid, pid))
                finally:
                    self._end(conn)

    def _begin(self, conn: _Conn) -> bool:
        with self._conns_cv:
            if conn.evicted:
                return False
            conn.handling = True
            self._busy += 1
            return True

    def _end(self, conn: _Conn) -> None:
        with self._conns_cv:
            conn.handling = False
            conn.idle_since = time.monotonic()
            self._busy -= 1
            if self._busy == 0:
                self._conns_cv.notify_all()

    def _send_evicted(self, conn: _Conn) -> None:
        text = (
            f"connection closed: idle while all {MAX_CONNECTIONS} admin connections were "
            "open and another operator connected"
        )
        self._send(conn.sock, failure(Code.TIMEOUT, text))

    def _handle(self, line: bytes, uid: int, pid: int) -> dict[str, Any]:
        """The reply to one request line; every request is audited, whatever happens."""
        cmd = "?"
        target: Optional[str] = None
        try:
            try:
                message = decode(line)
            except ValueError as exc:
                raise RequestFailed(Code.BAD_REQUEST, f"request is {exc}") from None
            cmd = command_of(message)
            request = parse_request(message)
            # audited also when the command fails (a kick of an unknown user)
            target = next(
                (str(request.args[k]) for k in ("name", "room", "address") if k in request.args),
                None,
            )
            result, target = _HANDLERS[request.cmd](self, request.args)
            reply = success(result)
            outcome = "ok"
        except RequestFailed as exc:
            reply = exc.reply()
            outcome = exc.code
        except Exception as exc:
            logsetup.log.exception("admin_internal_error", cmd=cmd, uid=uid, pid=pid)
            reply = failure(
                Code.INTERNAL,
                f"internal error in chatsvc while handling {cmd!r} ({type(exc).__name__}); "
                "the server log has the details (event admin_internal_error)",
            )
            outcome = Code.INTERNAL
        logsetup.log.info("admin_command", uid=uid, pid=pid, cmd=cmd, target=target, result=outcome)
        return reply

    @staticmethod
    def _send(sock: socket.socket, message: dict[str, Any]) -> None:
        try:
            sock.sendall(encode(message))
        except OSError:
            pass

    # --- commands: args are checked by adminproto.parse_request ----------------------------

    def admin_rooms(self, args: dict[str, Any]) -> Result:
        rooms = self.hub.room_members()
        return {
            "rooms": [{"name": r, "count": len(us), "users": us} for r, us in rooms.items()]
        }, None

    def admin_users(self, args: dict[str, Any]) -> Result:
        return {"users": self.hub.users()}, None

    def admin_stats(self, args: dict[str, Any]) -> Result:
        auth = self._auth(required=False)
        extra = {"auth": auth.stats()} if auth is not None else {}
        return {"version": __version__, **self.hub.stats(), **extra}, None

    # --- accounts (docs/accounts.md): hashing runs here, in the admin thread -------------
    # A password is in ``args`` only: never in a log line, the audit or a reply.

    def _auth(self, required: bool = True) -> Optional[Authenticator]:
        auth: Optional[Authenticator] = getattr(self.host, "auth", None)
        if auth is None and required:
            raise RequestFailed(Code.FAILED, "this server has no account store")
        return auth

    def _accounts(self, action: Callable[[Authenticator], Any]) -> Any:
        auth = self._auth()
        assert auth is not None
        try:
            return action(auth)
        except StoreError as exc:
            raise RequestFailed(Code.FAILED, f"account store unavailable: {exc}") from None

    def admin_account(self, args: dict[str, Any]) -> Result:
        """``account`` with ``action`` add, passwd, del or list."""
        action: str = args["action"]
        if action == "list":
            auth = self._auth()
            assert auth is not None
            return {"mode": auth.mode, "accounts": self._accounts(lambda a: a.list())}, None
        name: str = args["name"]
        longest = self.host.config().limits.name_max_length
        if action == "add" and len(name) > longest:
            raise RequestFailed(
                Code.FAILED,
                f"{name!r} is longer than users may log in with "
                f"([limits] name_max_length = {longest})",
            )
        if action == "add":
            if not self._accounts(lambda a: a.add(name, args["password"])):
                raise RequestFailed(Code.FAILED, f"account {name} exists already")
            logsetup.log.info("account_added", name=name)
            return {"action": action, "name": name, "added": True}, name
        if action == "passwd":
            if not self._accounts(lambda a: a.passwd(name, args["password"])):
                raise RequestFailed(Code.NOT_FOUND, f"no account {name}")
            logsetup.log.info("account_password_changed", name=name)
            return {"action": action, "name": name, "changed": True}, name
        if not self._accounts(lambda a: a.delete(name)):
            raise RequestFailed(Code.NOT_FOUND, f"no account {name}")
        # Real services end the sessions of a deleted account: so do we (on any node).
        kicked = self.hub.kick(name, "account deleted").kicked
        logsetup.log.info("account_deleted", name=name, disconnected=kicked)
        return {"action": action, "name": name, "deleted": True, "disconnected": kicked}, name

    def admin_kick(self, args: dict[str, Any]) -> Result:
        name: str = args["name"]
        reason: str = args.get("reason", DEFAULT_KICK_REASON)
        ban = args.get("ban", 0)
        done = self.hub.kick(name, reason, float(ban), args.get("ban_address", False))
        if not done.kicked and not done.name_banned:
            raise RequestFailed(Code.NOT_FOUND, f"no such user: {name}")
        logsetup.log.info(
            "client_kicked" if done.kicked else "name_banned",
            name=name,
            reason=reason,
            ban=ban,
            address=done.address,
            also_closed=done.also_closed,
        )
        return {
            "name": name,
            "kicked": done.kicked,
            "reason": reason,
            "banned": ban if done.name_banned else 0,
            "address": done.address,
            # a member of another node: that node bans the address (cluster mode)
            **({"address_node": done.address_node} if done.address_node else {}),
            "also_closed": done.also_closed,
        }, name

    def admin_ban(self, args: dict[str, Any]) -> Result:
        address: str = args["address"]
        seconds = args["seconds"]
        reason: str = args.get("reason", DEFAULT_BAN_REASON)
        closed = self.hub.ban_address(address, float(seconds), reason)
        logsetup.log.info(
            "address_banned", address=address, seconds=seconds, reason=reason, closed=closed
        )
        return {"address": address, "seconds": seconds, "reason": reason, "closed": closed}, address

    def admin_unban(self, args: dict[str, Any]) -> Result:
        name: Optional[str] = args.get("name")
        address: Optional[str] = args.get("address")
        if not self.hub.unban(name=name, address=address):
            what = f"name {name}" if name is not None else f"address {address}"
            raise RequestFailed(Code.NOT_FOUND, f"no ban on {what}")
        return {"name": name, "address": address, "unbanned": True}, name or address

    def admin_bans(self, args: dict[str, Any]) -> Result:
        return {"bans": self.hub.ban_list()}, None

    def admin_nodes(self, args: dict[str, Any]) -> Result:
        nodes = self.hub.nodes()
        return {"cluster": bool(nodes), "nodes": nodes}, None

    def admin_broadcast(self, args: dict[str, Any]) -> Result:
        text: str = args["text"]
        room: Optional[str] = args.get("room")
        rooms = self.hub.room_members()
        if room is not None and room not in rooms:
            raise RequestFailed(Code.NOT_FOUND, f"no such room: {room} (rooms: {', '.join(rooms)})")
        n = self.hub.announce(events.Announcement(text, room), room)
        return {"delivered_to": n, "room": room}, room

    def admin_reload(self, args: dict[str, Any]) -> Result:
        try:
            return self.host.reload(check=args.get("check", False)), None
        except ConfigError as exc:  # a bad file: nothing was changed
            raise RequestFailed(Code.FAILED, f"reload failed, nothing changed: {exc}") from None

    def admin_shutdown(self, args: dict[str, Any]) -> Result:
        delay = args.get("in", 0)
        self.host.request_stop(args.get("reason"), float(delay))
        return {"shutting_down": True, "in": delay}, None


_HANDLERS: dict[str, Handler] = {
    name[6:]: getattr(AdminServer, name) for name in dir(AdminServer) if name.startswith("admin_")
}
