"""``chatsvc-admin``: the command-line client of the admin channel.

Socket lookup and exit codes: docs/admin.md; the protocol and the exit-code
facts: :mod:`chatsvc.adminproto`.  :class:`AdminClient` speaks the protocol; the
``format_*`` functions turn a reply's ``result`` into the human output;
:func:`main` ties them to the command line.  A request is checked as the
server will check it before connecting (a bad argument is a usage error).

Config: ``--config PATH`` or ``$CHATSVC_CONFIG`` must load, else exit 2.  The
system config ``/etc/chatsvc/chatsvc.toml`` is only a default: if it cannot be
read or does not validate (say, while being edited before ``reload --check``),
a warning is printed and its ``[admin] socket`` is still used when the file
parses as TOML; otherwise the remaining lookup steps apply.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import grp
import json
import os
import socket
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from chatsvc import __version__, config
from chatsvc.adminpath import resolve_socket
from chatsvc.adminproto import (
    EXIT_BUSY,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_USAGE,
    MAX_REPLY_BYTES,
    PROTOCOL_VERSION,
    BadArgument,
    Code,
    RequestFailed,
    build_request,
    decode,
    encode,
    exit_status,
    is_greeting,
    reply_problem,
)
from chatsvc.errors import ChatsvcError, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the oldest supported Python
    import tomli as tomllib

DEFAULT_TIMEOUT = 10.0
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL
# A full connection queue (EAGAIN) or a "busy" refusal is retried this long at
# most, with backoff, before exit 6: under load the server is slow, not gone.
BUSY_RETRY = 2.0
BUSY_FIRST_PAUSE = 0.05
BUSY_MAX_PAUSE = 0.5


class AdminCliError(ChatsvcError):
    """A failure to report on one line; ``exit_code`` is the documented exit status."""

    exit_code = EXIT_PROTOCOL


class CommandFailed(AdminCliError):
    exit_code = EXIT_FAILED


class UsageError(AdminCliError):
    exit_code = EXIT_USAGE


class NotRunning(AdminCliError):
    exit_code = EXIT_NOT_RUNNING


class PermissionDenied(AdminCliError):
    exit_code = EXIT_DENIED


class ProtocolError(AdminCliError):
    exit_code = EXIT_PROTOCOL


class Busy(AdminCliError):
    exit_code = EXIT_BUSY


def group_hint(group: str) -> str:
    return f"are you in the {group!r} group?" if group else "are you in the chatsvc admin group?"


def _owning_group(path: str) -> str:
    """The group of the socket's directory (or the socket): who may come in.

    Anyone may stat them, while the config file that names the group may be
    unreadable to the very user who needs the hint.
    """
    for p in (os.path.dirname(path) or ".", path):
        try:
            gid = os.stat(p).st_gid
            if gid != 0:  # root's group says nothing about who administers chatsvc
                return grp.getgrgid(gid).gr_name
        except (OSError, KeyError):
            continue
    return ""


def connect_error(path: str, exc: OSError, group: str = "") -> AdminCliError:
    """A readable error for a failed connect, supervisorctl style."""
    if exc.errno == errno.EAGAIN:  # a non-blocking connect to a full queue
        return Busy(
            f"chatsvc is running but its admin socket {path} is not taking connections "
            "(queue full) — try again shortly"
        )
    if isinstance(exc, socket.timeout):
        return NotRunning(f"no answer at {path} — is chatsvc running?")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotRunning(f"no admin socket at {path} — is chatsvc running?")
    if exc.errno == errno.ECONNREFUSED:
        return NotRunning(f"refused connection at {path} — is chatsvc running?")
    if exc.errno in (errno.EACCES, errno.EPERM):
        group = group or _owning_group(path)
        return PermissionDenied(f"permission denied on {path} — {group_hint(group)}")
    return NotRunning(f"cannot connect to {path}: {exc.strerror or exc}")


class AdminClient:
    """One connection to the admin socket.

    ``with AdminClient(path) as client: reply = client.request("kick", name="bob")``;
    entering connects and reads the greeting, retrying for up to ``BUSY_RETRY``
    seconds while the server is busy.  ``request`` returns the whole reply (check
    ``reply["ok"]``) and raises :class:`AdminCliError` when there is none.
    """

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT, group: str = "") -> None:
        self.path = path
        self.timeout = timeout
        self.group = group  # only for the "permission denied" hint
        self.greeting: dict[str, Any] = {}
        self._sock: Optional[socket.socket] = None
        self._buf = b""

    def __enter__(self) -> AdminClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> dict[str, Any]:
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            raise UsageError(f"socket path too long for a Unix socket: {self.path}")
        deadline = time.monotonic() + min(BUSY_RETRY, self.timeout)
        pause = BUSY_FIRST_PAUSE
        while True:
            try:
                return self._connect_once()
            except Busy:
                self.close()
                if time.monotonic() + pause > deadline:
                    raise
            except BaseException:
                self.close()
                raise
            wait_before_retry(pause)
            pause = min(pause * 2, BUSY_MAX_PAUSE)

    def _connect_once(self) -> dict[str, Any]:
        self._buf = b""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise connect_error(self.path, exc, self.group) from None
        self._sock = sock
        try:
            greeting = self._read_message("greeting")
        except socket.timeout:
            raise NotRunning(
                f"no greeting from {self.path} within {self.timeout:g} s — is chatsvc hung?"
            ) from None
        except OSError as exc:
            raise ProtocolError(f"connection lost: {exc.strerror or exc}") from None
        if greeting.get("ok") is False:  # refused before the greeting: forbidden or busy
            raise reply_error(greeting, self.group)
        if not is_greeting(greeting):
            raise ProtocolError(
                f"unexpected greeting from {self.path}: {_short(greeting)} "
                f"(this chatsvc-admin speaks protocol {PROTOCOL_VERSION})"
            )
        self.greeting = greeting
        return greeting

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        if self._sock is None:
            raise ProtocolError("not connected")
        data = encode({"cmd": cmd, **args})
        try:
            self._sock.sendall(data)
            reply = self._read_message("reply")
        except socket.timeout:
            raise ProtocolError(f"no reply to {cmd!r} within {self.timeout:g} s") from None
        except OSError as exc:
            raise ProtocolError(f"connection lost: {exc.strerror or exc}") from None
        if reply_problem(reply):
            raise ProtocolError(f"unexpected reply to {cmd!r}: {_short(reply)}")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_message(self, what: str) -> dict[str, Any]:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_REPLY_BYTES:
                raise ProtocolError(f"{what} longer than {MAX_REPLY_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ProtocolError(f"the server closed the connection before the {what}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return decode(line)
        except ValueError as exc:
            raise ProtocolError(f"{what} is {exc}: {line[:200]!r}") from None


def wait_before_retry(seconds: float) -> None:
    """The pause between attempts while the server is busy (a function, for tests)."""
    time.sleep(seconds)


def reply_error(reply: Mapping[str, Any], group: str = "") -> AdminCliError:
    """The error for an ``ok: false`` reply, by ``adminproto.exit_status``."""
    code = str(reply.get("code", Code.FAILED))
    text = str(reply.get("error", "") or code)
    if reply.get("hint"):
        text += f" ({reply['hint']})"
    status = exit_status(code)
    if status == EXIT_DENIED:
        return PermissionDenied(f"the server refused this user: {text} — {group_hint(group)}")
    if status == EXIT_BUSY:
        return Busy(f"chatsvc is running but busy: {text} [{code}] — try again shortly")
    return CommandFailed(f"{text} [{code}]")


def _short(obj: object) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    return text if len(text) <= 200 else text[:200] + "..."


# --- human output -------------------------------------------------------------------


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], right: Collection[str] = ()
) -> str:
    """Columns aligned on their widest cell; the columns named in ``right`` flush right."""
    cells = [list(headers), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if h in right else c.ljust(w) for h, c, w in zip(headers, row, widths)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_connected(connected_at: float, now: float) -> str:
    """Local wall-clock time within the last day, else the age."""
    age = now - connected_at
    if age < 86400:
        return time.strftime("%H:%M:%S", time.localtime(connected_at))
    return f"{format_duration(age)} ago"


def format_rooms(result: Mapping[str, Any]) -> str:
    rows = [
        (r["name"], r["count"], ", ".join(r.get("users") or []) or "-") for r in result["rooms"]
    ]
    return table(["ROOM", "COUNT", "USERS"], rows, right={"COUNT"})


def format_users(result: Mapping[str, Any], now: Optional[float] = None) -> str:
    users = result["users"]
    if not users:
        return "no users logged in"
    at = time.time() if now is None else now
    cluster = any(u.get("node") for u in users)

    def local(u: Mapping[str, Any]) -> bool:  # other nodes' members carry fewer fields
        return u.get("connected_at") is not None

    rows = [
        (
            u["name"],
            u.get("room") or "-",
            *((u.get("node") or "-",) if cluster else ()),
            u.get("addr") or "-",
            format_connected(float(u["connected_at"]), at) if local(u) else "-",
            format_duration(float(u.get("idle") or 0)) if local(u) else "-",
            format_bytes(u.get("queued_bytes") or 0) if local(u) else "-",
            u.get("messages", 0) if local(u) else "-",
            _yes_no(u.get("throttled")) if local(u) else "-",
        )
        for u in users
    ]
    headers = ["NAME", "ROOM", *(["NODE"] if cluster else []), "ADDR", "CONNECTED", "IDLE"]
    headers += ["QUEUED", "MSGS", "THROTTLED"]
    return table(headers, rows, right={"IDLE", "QUEUED", "MSGS"})


def format_nodes(result: Mapping[str, Any]) -> str:
    nodes = result["nodes"]
    if not result.get("cluster") or not nodes:
        return "not in cluster mode (this server runs alone)"
    rows = [
        (
            n["id"] + (" *" if n.get("self") else ""),
            n.get("address") or "-",
            "expired" if n.get("lease_left") is None else f"{float(n['lease_left']):.1f} s",
            n.get("members", 0),
            n.get("version") or "-",
        )
        for n in nodes
    ]
    return table(["NODE", "ADDRESS", "LEASE LEFT", "MEMBERS", "VERSION"], rows, right={"MEMBERS"})


def _yes_no(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return "yes" if v else "no"
    return str(v)


def _uptime(seconds: float) -> str:
    """``2h07m (7620.4 s)``; under a minute the short form alone (``42s``), not the figure twice."""
    short = format_duration(seconds)
    return short if seconds < 60 else f"{short} ({seconds:g} s)"


def _counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


STAT_FORMATS: dict[str, Callable[[Any], str]] = {
    "version": str,
    "uptime": lambda v: _uptime(float(v)),
    "clients": str,
    "logged_in": str,
    "rooms": _counts,
    "connections": str,
    "logins": str,
    "messages_in": str,
    "bytes_in": lambda v: f"{v} ({format_bytes(v)})",
    "bytes_out": lambda v: f"{v} ({format_bytes(v)})",
    "kicks": str,
    "drops": _counts,
    "refused": _counts,
}


def format_stats(result: Mapping[str, Any]) -> str:
    """``key  value`` lines: the documented keys in order, then any others the server adds."""
    keys = [k for k in STAT_FORMATS if k in result] + [k for k in result if k not in STAT_FORMATS]
    width = max((len(k) for k in keys), default=0)
    lines = []
    for k in keys:
        v = result[k]
        fmt = STAT_FORMATS.get(k) or (_counts if isinstance(v, dict) else _plain)
        lines.append(f"{k.ljust(width)}  {fmt(v)}")
    return "\n".join(lines)


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def format_reload(result: Mapping[str, Any]) -> str:
    check = bool(result.get("check"))
    source = result.get("source") or "built-in defaults"
    # a check may list what it would apply under "would_apply"
    applied = result.get("applied") or (result.get("would_apply") if check else None) or []
    restart = result.get("restart_required") or []
    lines = [f"{'checked' if check else 'reloaded'} {source}"]
    if not applied and not restart:
        lines.append("no changes")
    if applied:
        lines.append("would apply:" if check else "applied:")
        lines += [f"  {k}: {_plain(old)} -> {_plain(new)}" for k, old, new in applied]
    if restart:
        lines.append("restart required (not applied):")
        lines += [f"  {k}: {_plain(old)} -> {_plain(new)}" for k, old, new in restart]
    if result.get("tls_certificate"):
        lines.append(
            f"TLS certificate {'read' if check else 'loaded'}: {result['tls_certificate']}"
        )
    return "\n".join(lines)


def format_kick(result: Mapping[str, Any]) -> str:
    name, banned = result["name"], float(result.get("banned") or 0)
    if not result["kicked"]:  # a name ban set for a name nobody holds now
        return f"no user {name} online; the name is banned for {format_duration(banned)}"
    text = f"kicked {name}"
    if result.get("reason"):
        text += f" ({result['reason']})"
    if banned:
        text += f"; banned for {format_duration(banned)}"
    if result.get("address"):
        n = int(result.get("also_closed") or 0)
        text += f"; address {result['address']} banned too"
        text += f", {_plural(n, 'other connection')} closed" if n else ""
    elif result.get("address_node"):
        text += f"; its address banned too, by node {result['address_node']}"
    return text


def kick_shortfall(request: Mapping[str, Any], result: Mapping[str, Any]) -> Optional[str]:
    """What a kick request asked for and did not get, or None (then exit 0)."""
    if request.get("ban_address") and not result.get("address") and not result.get("address_node"):
        return (
            f"no user {result['name']} online, so the address was not banned "
            "(it is only known while the user is connected); "
            f"the name is banned for {format_duration(float(result.get('banned') or 0))}"
        )
    return None


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_ban(result: Mapping[str, Any]) -> str:
    closed = int(result["closed"])
    return (
        f"banned address {result['address']} for {format_duration(float(result['seconds']))}"
        f"; {_plural(closed, 'connection')} closed"
    )


def format_unban(result: Mapping[str, Any]) -> str:
    if result.get("name") is not None:
        return f"lifted the ban on name {result['name']}"
    return f"lifted the ban on address {result['address']}"


def format_bans(result: Mapping[str, Any]) -> str:
    bans = result["bans"]
    if not bans:
        return "no bans"
    rows: list[tuple[str, ...]] = [
        (b["kind"], b["what"], format_duration(float(b["expires_in"]))) for b in bans
    ]
    if any("node" in b for b in bans):  # cluster mode: the node that set each ban
        rows = [(*row, b.get("node") or "?") for row, b in zip(rows, bans)]
        return table(["KIND", "WHAT", "TIME LEFT", "NODE"], rows, right={"TIME LEFT"})
    return table(["KIND", "WHAT", "TIME LEFT"], rows, right={"TIME LEFT"})


def format_broadcast(result: Mapping[str, Any]) -> str:
    n = int(result["delivered_to"])
    where = f"room {result['room']}" if result.get("room") else "all rooms"
    return f"delivered to {n} user{'' if n == 1 else 's'} in {where}"


def format_shutdown(result: Mapping[str, Any]) -> str:
    delay = float(result.get("in") or 0)
    return f"chatsvc shutting down in {delay:g} s" if delay else "chatsvc shutting down now"


def format_account(result: Mapping[str, Any]) -> str:
    if "accounts" in result:
        return format_accounts(result)
    name = result["name"]
    if result.get("added"):
        return f"added account {name}"
    if result.get("changed"):
        return f"changed the password of {name}"
    text = f"deleted account {name}"
    return text + ("; the user was disconnected" if result.get("disconnected") else "")


def format_accounts(result: Mapping[str, Any]) -> str:
    accounts = result["accounts"]
    head = f"mode: {result.get('mode', '?')}"
    if not accounts:
        return head + "\nno accounts"
    rows = [
        (
            a["name"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(float(a["created"]))),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(float(a["changed"]))),
        )
        for a in accounts
    ]
    return head + "\n" + table(["NAME", "CREATED", "PASSWORD CHANGED"], rows)


FORMATTERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "rooms": format_rooms,
    "users": format_users,
    "stats": format_stats,
    "reload": format_reload,
    "kick": format_kick,
    "ban": format_ban,
    "unban": format_unban,
    "bans": format_bans,
    "nodes": format_nodes,
    "broadcast": format_broadcast,
    "shutdown": format_shutdown,
    "account": format_account,
}


# --- the command line -----------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _number(v: float) -> float | int:
    return int(v) if v.is_integer() else v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatsvc-admin",
        description="Administer a running chatsvc through its admin socket.",
        epilog=(
            "Socket lookup: --socket, else [admin] socket in the config (--config, "
            "$CHATSVC_CONFIG, /etc/chatsvc/chatsvc.toml), else $RUNTIME_DIRECTORY/admin.sock, "
            "/run/chatsvc/admin.sock, $XDG_RUNTIME_DIR/chatsvc/admin.sock, "
            "/tmp/chatsvc-UID/admin.sock. Exit status: 0 ok, 1 command failed, 2 usage or "
            "config error, 3 not running, 4 permission denied, 5 protocol error, "
            "6 busy (running, but no admin connection to be had within 2 s)."
        ),
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the admin socket")
    where.add_argument("--config", metavar="PATH", help="read [admin] socket from this config")
    p.add_argument("--json", action="store_true", help="print the reply as JSON (for scripts)")
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the server (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--version", action="version", version=f"chatsvc-admin {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("rooms", help="rooms with their members")
    sub.add_parser("users", help="logged-in users")
    kick = sub.add_parser("kick", help="disconnect a user")
    kick.add_argument("name")
    kick.add_argument("--reason", metavar="TEXT", help="told to the user")
    kick.add_argument(
        "--ban",
        type=_positive_seconds,
        metavar="SECONDS",
        help="refuse the name for this long (set even if nobody holds the name now)",
    )
    kick.add_argument(
        "--ban-address",
        action="store_true",
        help="with --ban: refuse the user's address too, closing its other connections",
    )
    ban = sub.add_parser("ban", help="refuse an address, closing its connections")
    ban.add_argument("--address", required=True, metavar="ADDR", help="an IP address")
    ban.add_argument(
        "--for", dest="seconds", required=True, type=_positive_seconds, metavar="SECONDS"
    )
    ban.add_argument("--reason", metavar="TEXT", help="told to the clients closed")
    unban = sub.add_parser("unban", help="lift a name or address ban")
    unban.add_argument("name", nargs="?", help="the banned name")
    unban.add_argument("--address", metavar="ADDR", help="the banned address")
    sub.add_parser("bans", help="bans in force, with the time left")
    sub.add_parser("nodes", help="the cluster's nodes (cluster mode)")
    bc = sub.add_parser("broadcast", help="send a server notice")
    bc.add_argument("text", nargs="+", help="the notice (words are joined with spaces)")
    bc.add_argument("--room", help="only to this room (default: every room)")
    sub.add_parser("stats", help="counters")
    reload = sub.add_parser("reload", help="re-read the config file")
    reload.add_argument(
        "--check", action="store_true", help="only validate and show what would change"
    )
    stop = sub.add_parser("shutdown", help="stop the server (clients are told)")
    stop.add_argument(
        "--in",
        dest="delay",
        type=_seconds,
        metavar="SECONDS",
        help="announce now, stop after this many seconds",
    )
    stop.add_argument("--reason", metavar="TEXT", help="told to the clients")
    account = sub.add_parser("account", help="user accounts (add, passwd, del, list)")
    acts = account.add_subparsers(dest="account_cmd", metavar="ACTION", required=True)
    for action, text in (("add", "create an account"), ("passwd", "set a new password")):
        a = acts.add_parser(action, help=text)
        a.add_argument("name")
        a.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password as one line from stdin (for scripts); "
            "default: ask twice on the terminal without echo",
        )
    delete = acts.add_parser("del", help="delete an account (its user is disconnected)")
    delete.add_argument("name")
    acts.add_parser("list", help="the accounts")
    return p


def read_new_password(from_stdin: bool, stdin: Optional[Any] = None) -> str:
    """The new password: one line from stdin, or typed twice without echo."""
    stream = sys.stdin if stdin is None else stdin
    if from_stdin:
        line = stream.readline()
        if not line:
            raise UsageError("--password-stdin: no password on stdin")
        return str(line).rstrip("\r\n")
    if not stream.isatty():
        raise UsageError("stdin is not a terminal: give the password with --password-stdin")
    try:
        first = getpass.getpass("New password: ")
        again = getpass.getpass("Repeat it: ")
    except (EOFError, KeyboardInterrupt):
        raise UsageError("no password given") from None
    if first != again:
        raise UsageError("the passwords do not match; nothing was changed")
    return first


# The command-line option for each request argument, for usage errors.
OPTION_OF = {
    "reason": "--reason",
    "ban": "--ban",
    "ban_address": "--ban-address",
    "room": "--room",
    "in": "--in",
    "seconds": "--for",
    "address": "--address",
    "name": "NAME",
    "text": "TEXT",
    "password": "password",
}


def request_args(args: argparse.Namespace) -> dict[str, Any]:
    """The request's arguments for the parsed command line."""
    out: dict[str, Any] = {}
    if args.command == "kick":
        out["name"] = args.name
        if args.reason is not None:
            out["reason"] = args.reason
        if args.ban is not None:
            out["ban"] = _number(args.ban)
        if args.ban_address:
            out["ban_address"] = True
    elif args.command == "ban":
        out["address"] = args.address
        out["seconds"] = _number(args.seconds)
        if args.reason is not None:
            out["reason"] = args.reason
    elif args.command == "unban":
        if args.name is not None:
            out["name"] = args.name
        if args.address is not None:
            out["address"] = args.address
    elif args.command == "broadcast":
        out["text"] = " ".join(args.text)
        if args.room is not None:
            out["room"] = args.room
    elif args.command == "reload":
        out["check"] = args.check
    elif args.command == "account":
        out["action"] = args.account_cmd
        if args.account_cmd != "list":
            out["name"] = args.name
        if args.account_cmd in ("add", "passwd"):
            out["password"] = read_new_password(args.password_stdin)
    elif args.command == "shutdown":
        if args.delay is not None:
            out["in"] = _number(args.delay)
        if args.reason is not None:
            out["reason"] = args.reason
    return out


def checked_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request for the command line, checked as the server will; UsageError if bad."""
    try:
        return build_request(args.command, **request_args(args))
    except BadArgument as exc:
        raise UsageError(
            f"{args.command}: {OPTION_OF.get(exc.arg, exc.arg)}: {exc.problem}"
        ) from None
    except RequestFailed as exc:
        raise UsageError(f"{args.command}: {exc}") from None


def find_socket(
    args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None
) -> tuple[str, str]:
    """(socket path, admin group for hints) by the documented lookup; ConfigError if bad."""
    env = os.environ if environ is None else environ
    if args.socket:
        return args.socket, ""
    path = config.find_config_path(args.config, env)
    cfg_socket, group = "", ""
    if path is not None:
        try:
            cfg = config.load(path)
            cfg_socket, group = cfg.admin.socket, cfg.admin.group
        except ConfigError as exc:
            if args.config or env.get(config.ENV_CONFIG):
                raise
            cfg_socket = _raw_admin_socket(path)
            if exc.found != "permission denied":  # not in the group: the error hint says so
                warn(f"warning: ignoring config: {exc}")
    return resolve_socket(cfg_socket, for_client=True, environ=env), group


def _raw_admin_socket(path: str) -> str:
    """[admin] socket from a file that parses as TOML but does not validate, else ""."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError):
        return ""
    admin = data.get("admin")
    value = admin.get("socket") if isinstance(admin, dict) else None
    return value if isinstance(value, str) else ""


def warn(text: str) -> None:
    print(f"chatsvc-admin: {text}", file=sys.stderr)


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def human_output(command: str, result: Mapping[str, Any]) -> str:
    try:
        return FORMATTERS[command](result)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"unexpected result for {command!r}: {_short(result)}") from exc


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        request = checked_request(args)
        path, group = find_socket(args)
    except ConfigError as exc:
        warn(f"config error: {exc}")
        return EXIT_USAGE
    except UsageError as exc:
        warn(str(exc))
        return EXIT_USAGE
    try:
        with AdminClient(path, args.timeout, group) as client:
            reply = client.request(**request)
        if not reply["ok"]:
            if args.json:
                print_json(reply)
            raise reply_error(reply, group)
        result = reply["result"]
        shortfall = kick_shortfall(request, result) if args.command == "kick" else None
        if args.json:
            print_json(result)
        elif not shortfall:
            print(human_output(args.command, result))
        if shortfall:
            raise CommandFailed(shortfall)
    except AdminCliError as exc:
        warn(f"{args.command}: {exc}" if exc.exit_code == EXIT_FAILED else str(exc))
        return exc.exit_code
    except BrokenPipeError:  # `chatsvc-admin users | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
