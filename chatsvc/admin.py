"""The admin control server: JSON lines over a local Unix socket (docs/admin.md).

Threads: ``AdminServer.run`` accepts on its own thread; each admin connection
gets a short-lived thread of its own (at most ``MAX_CONNECTIONS`` at once), so
a stuck admin client never blocks another.  Commands are ``admin_<cmd>``
methods; they call the hub (which takes ``Hub.lock`` itself) or the server's
``reload``/``request_stop``.  Nothing here holds a lock across socket I/O.
"""

from __future__ import annotations

import difflib
import grp
import json
import os
import pwd
import select
import socket
import stat
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from chatsvc import __version__, events, logsetup, protocol
from chatsvc.adminpath import ensure_private_dir
from chatsvc.errors import StartupError
from chatsvc.wakeup import WakePipe, block_process_signals

if TYPE_CHECKING:
    from chatsvc.server import ChatServer

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
# On stop, how long requests already being handled get to send their reply
# (the reply to `shutdown` itself is one of them).
REPLY_GRACE = 2.0


class AdminError(Exception):
    """A failed request: ``code`` and text go back to the client."""

    def __init__(self, code: str, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


Handler = Callable[["AdminServer", dict[str, Any]], tuple[dict[str, Any], Optional[str]]]


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


def _group_id(name: str) -> Optional[int]:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(f"admin group {name!r} does not exist") from None


class AdminServer:
    def __init__(self, server: ChatServer, path: str, private_dir: bool = False) -> None:
        self.server = server
        self.hub = server.hub
        self.path = path
        admin_cfg = server.cfg.admin
        self.gid = _group_id(admin_cfg.group)
        self._wake = WakePipe()
        self._stop = False
        # Guards _conns and _busy.  _conns holds every connection a thread
        # serves (at most MAX_CONNECTIONS); one leaves it before it is closed,
        # so stop() never shuts down a descriptor number reused since.
        self._conns_cv = threading.Condition(threading.Lock())
        self._conns: set[socket.socket] = set()
        self._busy = 0  # requests read and not yet answered
        self._thread: Optional[threading.Thread] = None
        self.sock = self._bind(admin_cfg.mode, private_dir)

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
                    f"{self.server.cfg.admin.group}: {exc.strerror}"
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
            for conn in self._conns:  # idle between requests: end their threads
                try:
                    conn.shutdown(socket.SHUT_RDWR)
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
                    conn, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    logsetup.log.error("admin_accept_failed", error=exc.strerror)
                    continue
                with self._conns_cv:
                    full = len(self._conns) >= MAX_CONNECTIONS
                    if not full:
                        self._conns.add(conn)
                if full:
                    self._send(conn, self._failure("failed", "too many admin connections"))
                    conn.close()
                    continue
                threading.Thread(
                    target=self._serve, args=(conn,), name="chatsvc-admin-conn", daemon=True
                ).start()

    # --- one admin connection -----------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            pid, uid, gid = struct.unpack(
                "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            )
            if not self._authorised(uid, gid):
                logsetup.log.warning("admin_denied", uid=uid, pid=pid)
                self._send(
                    conn, self._failure("forbidden", f"uid {uid} may not administer chatsvc")
                )
                return
            self._send(
                conn, {"protocol": PROTOCOL_VERSION, "server": "chatsvc", "version": __version__}
            )
            self._requests(conn, uid, pid)
        except OSError:
            pass  # the admin client went away
        finally:
            with self._conns_cv:
                self._conns.discard(conn)
            conn.close()

    def _authorised(self, uid: int, gid: int) -> bool:
        if uid in (0, os.getuid()) or uid in self.server.cfg.admin.uids:
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

    def _requests(self, conn: socket.socket, uid: int, pid: int) -> None:
        splitter = protocol.LineSplitter(MAX_REQUEST_BYTES)  # the chat framing, capped
        conn.settimeout(REQUEST_TIMEOUT)
        while True:
            try:
                data = conn.recv(65536)
            except socket.timeout:
                self._send(conn, self._failure("timeout", "no complete request in time"))
                return
            if not data:
                return
            for line in splitter.feed(data):
                if line is protocol.OVERLONG:
                    self._send(conn, self._failure("too_large", "request over 64 KiB"))
                    return
                assert isinstance(line, bytes)
                if line.strip():
                    self._answer(conn, line, uid, pid)

    def _answer(self, conn: socket.socket, line: bytes, uid: int, pid: int) -> None:
        with self._conns_cv:
            self._busy += 1
        try:
            self._send(conn, self._handle(line, uid, pid))
        finally:
            with self._conns_cv:
                self._busy -= 1
                if self._busy == 0:
                    self._conns_cv.notify_all()

    def _handle(self, line: bytes, uid: int, pid: int) -> dict[str, Any]:
        cmd = "?"
        target: Optional[str] = None
        try:
            try:
                request = json.loads(line)
            except ValueError:
                raise AdminError("bad_request", "request is not valid JSON") from None
            if not isinstance(request, dict):
                raise AdminError("bad_request", "request must be a JSON object")
            cmd = str(request.get("cmd", ""))
            handler = _HANDLERS.get(cmd)
            if handler is None:
                close = difflib.get_close_matches(cmd, list(_HANDLERS), n=1)
                raise AdminError(
                    "unknown_command",
                    f"unknown command {cmd!r}",
                    f"did you mean {close[0]!r}?" if close else "commands: " + ", ".join(_HANDLERS),
                )
            result, target = handler(self, request)
            reply = {"ok": True, "protocol": PROTOCOL_VERSION, "result": result}
            outcome = "ok"
        except AdminError as exc:
            reply = self._failure(exc.code, str(exc), exc.hint)
            outcome = exc.code
        logsetup.log.info(
            "admin_command", uid=uid, pid=pid, cmd=cmd[:64], target=target, result=outcome
        )
        return reply

    @staticmethod
    def _failure(code: str, message: str, hint: Optional[str] = None) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "ok": False,
            "protocol": PROTOCOL_VERSION,
            "code": code,
            "error": message,
        }
        if hint:
            reply["hint"] = hint
        return reply

    @staticmethod
    def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
        try:
            conn.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass

    # --- commands ----------------------------------------------------------------------

    def admin_rooms(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        rooms = self.hub.room_members()
        return {
            "rooms": [{"name": r, "count": len(us), "users": us} for r, us in rooms.items()]
        }, None

    def admin_users(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        return {"users": self.hub.users()}, None

    def admin_kick(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        name = _arg(req, "name", str)
        reason = _arg(req, "reason", str, "kicked by an operator") or "kicked by an operator"
        ban = _arg(req, "ban", (int, float), 0)
        if ban < 0:
            raise AdminError("bad_request", "ban must be a number of seconds >= 0")
        if not self.hub.kick(name, reason, float(ban)).kicked:
            raise AdminError("not_found", f"no such user: {name}")
        logsetup.log.info("client_kicked", name=name, reason=reason, ban=ban)
        return {"kicked": name, "reason": reason, "ban": ban}, name

    def admin_broadcast(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        text = _arg(req, "text", str)
        room = _arg(req, "room", str, None)
        if not text.strip() or "\n" in text or "\r" in text:
            raise AdminError("bad_request", "text must be one non-empty line")
        if room is not None and room not in self.hub.rooms:
            raise AdminError(
                "not_found", f"no such room: {room} (rooms: {', '.join(self.hub.rooms)})"
            )
        n = self.hub.announce(events.Announcement(text, room), room)
        return {"delivered_to": n, "room": room}, room

    def admin_stats(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        return {"version": __version__, **self.hub.stats()}, None

    def admin_reload(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        check = _arg(req, "check", bool, False)
        try:
            return self.server.reload(check=check), None
        except Exception as exc:  # a bad file: nothing was changed
            raise AdminError("failed", f"reload failed, nothing changed: {exc}") from None

    def admin_shutdown(self, req: dict[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
        delay = _arg(req, "in", (int, float), 0)
        reason = _arg(req, "reason", str, None)
        if delay < 0:
            raise AdminError("bad_request", "'in' must be a number of seconds >= 0")
        self.server.request_stop(reason, float(delay))
        return {"shutting_down": True, "in": delay}, None


_MISSING = object()


def _arg(req: dict[str, Any], key: str, kind: Any, default: Any = _MISSING) -> Any:
    value = req.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise AdminError("bad_request", f"missing argument {key!r}")
        return default
    if isinstance(value, bool) and kind is not bool:
        raise AdminError("bad_request", f"argument {key!r} has the wrong type")
    if not isinstance(value, kind):
        raise AdminError("bad_request", f"argument {key!r} has the wrong type")
    return value


_HANDLERS: dict[str, Handler] = {
    name[6:]: getattr(AdminServer, name) for name in dir(AdminServer) if name.startswith("admin_")
}
