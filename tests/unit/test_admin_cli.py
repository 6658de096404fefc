"""chatsvc-admin: parsing, output, socket lookup and exit codes, against a fake admin server.

The fake server is a real Unix socket speaking protocol 1 with canned replies,
built from the same definition as the real server (chatsvc.adminproto); the
real server is exercised in tests/e2e/test_admin_e2e.py.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Union

import pytest

from chatsvc import admin_cli as cli
from chatsvc import adminpath, adminproto, config
from chatsvc.adminpath import ensure_private_dir, resolve_socket
from chatsvc.adminproto import Code, failure
from chatsvc.adminproto import success as ok
from chatsvc.errors import StartupError
from tests.runas import run_main_as_nobody

GREETING = adminproto.greeting("0.1.0")
SILENT = object()  # the fake server reads the request and never answers
Reply = Union[dict[str, Any], bytes, None, object]
Greeting = Union[dict[str, Any], bytes, None]

RESULTS: dict[str, dict[str, Any]] = {
    "rooms": {
        "rooms": [
            {"name": "lobby", "count": 2, "users": ["alice", "bob"]},
            {"name": "support", "count": 10, "users": [f"u{i}" for i in range(10)]},
            {"name": "work", "count": 0, "users": []},
        ]
    },
    "users": {
        "users": [
            {
                "name": "alice",
                "room": "lobby",
                "addr": "127.0.0.1:50412",
                "connected_at": 1_700_000_000.0,
                "idle": 12.3,
                "queued_bytes": 0,
                "messages": 42,
                "throttled": False,
            },
            {
                "name": "bob",
                "room": "work",
                "addr": "10.0.0.7:61000",
                "connected_at": 1_700_000_000.0 - 3 * 86400,
                "idle": 3700,
                "queued_bytes": 3072,
                "messages": 7,
                "throttled": True,
            },
        ]
    },
    "stats": {
        "version": "0.1.0",
        "uptime": 7620.4,
        "clients": 12,
        "logged_in": 10,
        "rooms": {"lobby": 4, "work": 6},
        "connections": 130,
        "logins": 120,
        "messages_in": 5000,
        "bytes_in": 2048,
        "bytes_out": 5 * 1024 * 1024,
        "kicks": 1,
        "drops": {"bye": 100, "idle": 3},
        "refused": {},
    },
    "kick": {
        "name": "bob",
        "kicked": True,
        "reason": "spamming",
        "banned": 600,
        "address": None,
        "also_closed": 0,
    },
    "ban": {"address": "10.0.0.7", "seconds": 600, "reason": "spam", "closed": 2},
    "unban": {"name": "bob", "address": None, "unbanned": True},
    "bans": {
        "bans": [
            {"kind": "name", "what": "bob", "expires_in": 599.5},
            {"kind": "address", "what": "10.0.0.7", "expires_in": 7200.0},
        ]
    },
    "broadcast": {"delivered_to": 3, "room": "lobby"},
    "reload": {
        "check": False,
        "source": "/etc/chatsvc/chatsvc.toml",
        "applied": [["limits.flood_rate", 5.0, 10.0]],
        "restart_required": [["server.port", 6321, 6400]],
    },
    "shutdown": {"shutting_down": True, "in": 30},
}

NOW = 1_700_000_000.0 + 60


def canned(req: dict[str, Any]) -> Reply:
    return ok(RESULTS[req["cmd"]])


class FakeAdminServer:
    """A Unix socket that greets and answers each request line with ``respond(request)``.

    ``respond`` returns a reply object, raw bytes, None (close the connection) or
    SILENT (never answer).  ``greeting`` may be an object, raw bytes, None, or a
    function of the connection's number (1, 2, ...) returning one of those.  With
    ``accepting=False`` nothing is accepted until ``resume()``: the listen queue fills.
    """

    def __init__(
        self,
        path: Path,
        respond: Callable[[dict[str, Any]], Reply] = canned,
        greeting: Union[Greeting, Callable[[int], Greeting]] = GREETING,
        accepting: bool = True,
        backlog: int = 8,
    ) -> None:
        self.path = str(path)
        self.respond = respond
        self.greeting = greeting
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._stop = threading.Event()
        self._accepting = threading.Event()
        if accepting:
            self._accepting.set()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(backlog)
        self.sock.settimeout(0.05)  # how soon the accept loop notices stop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def resume(self) -> None:
        self._accepting.set()

    def stop(self) -> None:
        self._stop.set()
        self._accepting.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        self._accepting.wait()
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    self._serve(conn)
                except OSError:
                    pass

    def _serve(self, conn: socket.socket) -> None:
        greeting = self.greeting(self.connections) if callable(self.greeting) else self.greeting
        if isinstance(greeting, dict):
            conn.sendall(adminproto.encode(greeting))
            if greeting.get("ok") is False:
                return  # refused instead of greeted, as the server does
        elif isinstance(greeting, bytes):
            conn.sendall(greeting)
        buf = b""
        while not self._stop.is_set():
            while b"\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            line, _, buf = buf.partition(b"\n")
            req = adminproto.decode(line)
            self.requests.append(req)
            reply = self.respond(req)
            if reply is None:
                return
            if reply is SILENT:
                while conn.recv(65536):  # until the client gives up and closes
                    pass
                return
            assert isinstance(reply, (bytes, dict))
            conn.sendall(reply if isinstance(reply, bytes) else adminproto.encode(reply))


@pytest.fixture
def fake(short_tmp: Path) -> Iterator[Callable[..., FakeAdminServer]]:
    servers: list[FakeAdminServer] = []

    def start(**kw: Any) -> FakeAdminServer:
        srv = FakeAdminServer(short_tmp / f"admin{len(servers)}.sock", **kw)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(autouse=True)
def no_outside_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's config and runtime dirs out of the lookup."""
    monkeypatch.delenv("CHATSVC_CONFIG", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent" / "chatsvc.toml")
    monkeypatch.setattr(adminpath, "PACKAGED_SOCKET", str(tmp_path / "absent" / "admin.sock"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --- parsing ------------------------------------------------------------------------------


def parse(*argv: str) -> dict[str, Any]:
    args = cli.build_parser().parse_args(argv)
    return {"cmd": args.command, **cli.request_args(args)}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["rooms"], {"cmd": "rooms"}),
        (["users"], {"cmd": "users"}),
        (["stats"], {"cmd": "stats"}),
        (["kick", "bob"], {"cmd": "kick", "name": "bob"}),
        (
            ["kick", "bob", "--reason", "spam", "--ban", "600"],
            {"cmd": "kick", "name": "bob", "reason": "spam", "ban": 600},
        ),
        (["kick", "bob", "--ban", "1.5"], {"cmd": "kick", "name": "bob", "ban": 1.5}),
        (
            ["kick", "bob", "--ban", "60", "--ban-address"],
            {"cmd": "kick", "name": "bob", "ban": 60, "ban_address": True},
        ),
        (
            ["ban", "--address", "10.0.0.7", "--for", "600", "--reason", "spam"],
            {"cmd": "ban", "address": "10.0.0.7", "seconds": 600, "reason": "spam"},
        ),
        (["unban", "bob"], {"cmd": "unban", "name": "bob"}),
        (["unban", "--address", "::1"], {"cmd": "unban", "address": "::1"}),
        (["bans"], {"cmd": "bans"}),
        (["broadcast", "back", "in", "5"], {"cmd": "broadcast", "text": "back in 5"}),
        (
            ["broadcast", "hello all", "--room", "work"],
            {"cmd": "broadcast", "text": "hello all", "room": "work"},
        ),
        (["reload"], {"cmd": "reload", "check": False}),
        (["reload", "--check"], {"cmd": "reload", "check": True}),
        (["shutdown"], {"cmd": "shutdown"}),
        (
            ["shutdown", "--in", "30", "--reason", "upgrade"],
            {"cmd": "shutdown", "in": 30, "reason": "upgrade"},
        ),
        (["shutdown", "--in", "0.5"], {"cmd": "shutdown", "in": 0.5}),
    ],
)
def test_request_for_command_line(argv: list[str], expected: dict[str, Any]) -> None:
    assert parse(*argv) == expected
    assert isinstance(parse(*argv).get("ban", 0), type(expected.get("ban", 0)))


def test_global_options() -> None:
    args = cli.build_parser().parse_args(
        ["--socket", "/x.sock", "--json", "--timeout", "2", "rooms"]
    )
    assert (args.socket, args.json, args.timeout) == ("/x.sock", True, 2.0)
    assert cli.build_parser().parse_args(["rooms"]).timeout == cli.DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["kick"],
        ["kick", "bob", "--ban", "-1"],
        ["kick", "bob", "--ban", "0"],
        ["kick", "bob", "--ban", "soon"],
        ["broadcast"],
        ["ban", "--for", "60"],
        ["ban", "--address", "10.0.0.7"],
        ["ban", "--address", "10.0.0.7", "--for", "0"],
        ["shutdown", "--in", "-5"],
        ["shutdown", "--in", "inf"],
        ["--timeout", "0", "rooms"],
        ["--socket", "/a", "--config", "/b", "rooms"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, out, err = run(capsys, *argv)
    assert rc == cli.EXIT_USAGE
    assert "usage: chatsvc-admin" in err
    assert out == ""


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    assert "Exit status" in out
    for cmd in adminproto.COMMANDS:
        assert cmd in out
    assert "6 busy" in out
    rc, out, _ = run(capsys, "--version")
    assert rc == 0
    assert out.startswith("chatsvc-admin ")


# --- human output -----------------------------------------------------------------------------


def test_table_aligns_columns_without_trailing_spaces() -> None:
    text = cli.table(["A", "NUM", "LAST"], [("x", 5, "end"), ("longer", 123, "")], right={"NUM"})
    assert text.split("\n") == [
        "A       NUM  LAST",
        "x         5  end",
        "longer  123",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (12.7, "12s"),
        (60, "1m00s"),
        (303, "5m03s"),
        (3600, "1h00m"),
        (7620, "2h07m"),
        (86400 * 3 + 3600 * 4, "3d04h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert cli.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 << 20, "5.0 MiB"),
        (3 << 40, "3072.0 GiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert cli.format_bytes(n) == text


def test_format_rooms() -> None:
    assert cli.format_rooms(RESULTS["rooms"]).split("\n") == [
        "ROOM     COUNT  USERS",
        "lobby        2  alice, bob",
        "support     10  " + ", ".join(f"u{i}" for i in range(10)),
        "work         0  -",
    ]


def test_format_users_shows_local_time_today_and_age_for_old_connections() -> None:
    lines = cli.format_users(RESULTS["users"], now=NOW).split("\n")
    clock = time.strftime("%H:%M:%S", time.localtime(1_700_000_000.0))
    assert lines[0].split() == [
        "NAME",
        "ROOM",
        "ADDR",
        "CONNECTED",
        "IDLE",
        "QUEUED",
        "MSGS",
        "THROTTLED",
    ]
    assert lines[1].split() == [
        "alice",
        "lobby",
        "127.0.0.1:50412",
        clock,
        "12s",
        "0",
        "B",
        "42",
        "no",
    ]
    assert lines[2].split() == [
        "bob",
        "work",
        "10.0.0.7:61000",
        "3d00h",
        "ago",
        "1h01m",
        "3.0",
        "KiB",
        "7",
        "yes",
    ]
    # columns line up: every row starts its ROOM column where the header does
    col = lines[0].index("ROOM")
    assert lines[1][col:].startswith("lobby") and lines[2][col:].startswith("work")


def test_format_users_empty() -> None:
    assert cli.format_users({"users": []}) == "no users logged in"


def test_format_stats_lists_counters_and_drops() -> None:
    lines = cli.format_stats({**RESULTS["stats"], "future_counter": 9}).split("\n")
    assert lines[0] == "version         0.1.0"
    assert "uptime          2h07m (7620.4 s)" in lines

    assert "rooms           lobby 4, work 6" in lines
    assert "bytes_out       5242880 (5.0 MiB)" in lines
    assert "drops           bye 100, idle 3" in lines
    assert "refused         none" in lines
    assert lines[-1] == "future_counter  9"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (42.9, "42s"), (60.0, "1m00s (60 s)"), (7620.4, "2h07m (7620.4 s)")],
)
def test_uptime_says_each_figure_once(seconds: float, shown: str) -> None:
    assert cli.format_stats({"uptime": seconds}) == f"uptime  {shown}"


def test_format_reload() -> None:
    assert cli.format_reload(RESULTS["reload"]).split("\n") == [
        "reloaded /etc/chatsvc/chatsvc.toml",
        "applied:",
        "  limits.flood_rate: 5.0 -> 10.0",
        "restart required (not applied):",
        "  server.port: 6321 -> 6400",
    ]
    checked = {"check": True, "source": "/c.toml", "applied": [["rooms.names", ["a"], ["a", "b"]]]}
    assert cli.format_reload(checked).split("\n") == [
        "checked /c.toml",
        "would apply:",
        '  rooms.names: ["a"] -> ["a", "b"]',
    ]
    split = {"check": True, "source": "/c.toml", "applied": [], "would_apply": [["a.b", 1, 2]]}
    assert cli.format_reload(split).split("\n") == [
        "checked /c.toml",
        "would apply:",
        "  a.b: 1 -> 2",
    ]
    nothing: dict[str, Any] = {
        "check": False,
        "source": None,
        "applied": [],
        "restart_required": [],
    }
    assert cli.format_reload(nothing) == "reloaded built-in defaults\nno changes"


def test_format_short_results() -> None:
    assert cli.format_kick(RESULTS["kick"]) == "kicked bob (spamming); banned for 10m00s"
    plain = {"name": "al", "kicked": True, "reason": "", "banned": 0, "address": None}
    assert cli.format_kick(plain) == "kicked al"
    both = {**RESULTS["kick"], "address": "10.0.0.7", "also_closed": 2}
    assert cli.format_kick(both) == (
        "kicked bob (spamming); banned for 10m00s; address 10.0.0.7 banned too, "
        "2 other connections closed"
    )
    offline = {**RESULTS["kick"], "kicked": False}
    assert cli.format_kick(offline) == "no user bob online; the name is banned for 10m00s"
    remote = {**RESULTS["kick"], "address_node": "b"}  # cluster mode: another node's member
    assert cli.format_kick(remote) == (
        "kicked bob (spamming); banned for 10m00s; its address banned too, by node b"
    )
    assert cli.kick_shortfall({"ban_address": True}, remote) is None
    assert cli.kick_shortfall({"ban_address": True}, RESULTS["kick"]) is not None
    clustered = [{**b, "node": "a"} for b in RESULTS["bans"]["bans"]]
    assert cli.format_bans({"bans": clustered}).split("\n")[0].split() == [
        "KIND",
        "WHAT",
        "TIME",
        "LEFT",
        "NODE",
    ]
    assert cli.format_ban(RESULTS["ban"]) == (
        "banned address 10.0.0.7 for 10m00s; 2 connections closed"
    )
    assert cli.format_unban(RESULTS["unban"]) == "lifted the ban on name bob"
    assert cli.format_unban({"name": None, "address": "::1"}) == "lifted the ban on address ::1"
    assert cli.format_bans(RESULTS["bans"]).split("\n") == [
        "KIND     WHAT      TIME LEFT",
        "name     bob           9m59s",
        "address  10.0.0.7      2h00m",
    ]
    assert cli.format_bans({"bans": []}) == "no bans"
    assert cli.format_broadcast(RESULTS["broadcast"]) == "delivered to 3 users in room lobby"
    assert cli.format_broadcast({"delivered_to": 1, "room": None}) == (
        "delivered to 1 user in all rooms"
    )
    assert cli.format_shutdown(RESULTS["shutdown"]) == "chatsvc shutting down in 30 s"
    assert cli.format_shutdown({"shutting_down": True, "in": 0}) == "chatsvc shutting down now"


# --- socket lookup ------------------------------------------------------------------------------


def test_resolve_config_socket_wins() -> None:
    env = {"RUNTIME_DIRECTORY": "/run/x", "XDG_RUNTIME_DIR": "/run/user/5"}
    for for_client in (True, False):
        assert resolve_socket("/srv/a.sock", for_client=for_client, environ=env, uid=5) == (
            "/srv/a.sock"
        )


def test_resolve_runtime_directory_next() -> None:
    env = {"RUNTIME_DIRECTORY": "/run/chatsvc:/run/other", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert resolve_socket("", for_client=False, environ=env) == "/run/chatsvc/admin.sock"
    assert resolve_socket("", for_client=True, environ=env) == "/run/chatsvc/admin.sock"


def test_resolve_packaged_socket_for_the_client_only(tmp_path: Path) -> None:
    packaged = tmp_path / "admin.sock"
    packaged.touch()
    env = {"XDG_RUNTIME_DIR": "/run/user/5"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adminpath, "PACKAGED_SOCKET", str(packaged))
        assert resolve_socket("", for_client=True, environ=env) == str(packaged)
        assert resolve_socket("", for_client=False, environ=env) == (
            "/run/user/5/chatsvc/admin.sock"
        )
        packaged.unlink()
        assert resolve_socket("", for_client=True, environ=env) == (
            "/run/user/5/chatsvc/admin.sock"
        )


def test_resolve_packaged_socket_behind_a_closed_directory_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An operator outside the group cannot stat it; connecting then says "permission denied".
    def denied(path: str) -> os.stat_result:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(adminpath, "PACKAGED_SOCKET", "/run/chatsvc/admin.sock")
    with monkeypatch.context() as mp:  # os.stat is everyone's: patched for this call only
        mp.setattr(os, "stat", denied)
        found = resolve_socket("", for_client=True, environ={}, uid=5)
    assert found == "/run/chatsvc/admin.sock"


def test_resolve_xdg_then_temp_dir() -> None:
    assert resolve_socket("", for_client=True, environ={"XDG_RUNTIME_DIR": "/run/user/7"}) == (
        "/run/user/7/chatsvc/admin.sock"
    )
    assert resolve_socket("", for_client=False, environ={}, uid=7) == "/tmp/chatsvc-7/admin.sock"
    # relative values are not trusted
    env = {"XDG_RUNTIME_DIR": "rel", "RUNTIME_DIRECTORY": "rel2"}
    assert resolve_socket("", for_client=True, environ=env, uid=7) == "/tmp/chatsvc-7/admin.sock"


def test_resolve_defaults_to_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert resolve_socket("", for_client=True) == f"/tmp/chatsvc-{os.getuid()}/admin.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/svc")
    assert resolve_socket("", for_client=True) == "/run/svc/admin.sock"


def test_ensure_private_dir_creates_0700(short_tmp: Path) -> None:
    target = short_tmp / "chatsvc-1"
    ensure_private_dir(str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    ensure_private_dir(str(target))  # existing and fine


def test_ensure_private_dir_refuses_what_others_could_control(short_tmp: Path) -> None:
    open_dir = short_tmp / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(StartupError, match="private"):
        ensure_private_dir(str(open_dir))
    link = short_tmp / "link"
    private = short_tmp / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    with pytest.raises(StartupError):
        ensure_private_dir(str(link))
    with pytest.raises(StartupError):
        ensure_private_dir(str(private), uid=os.getuid() + 1)
    with pytest.raises(StartupError, match="cannot create"):
        ensure_private_dir(str(short_tmp / "missing" / "deeper"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_socket_from_config_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[admin]\nsocket = "/srv/c.sock"\ngroup = "ops"\n')
    args = cli.build_parser().parse_args(["--config", str(cfg), "rooms"])
    assert cli.find_socket(args, environ={}) == ("/srv/c.sock", "ops")
    env = {"CHATSVC_CONFIG": str(cfg)}
    assert cli.find_socket(cli.build_parser().parse_args(["rooms"]), environ=env) == (
        "/srv/c.sock",
        "ops",
    )
    args = cli.build_parser().parse_args(["--socket", "/explicit.sock", "rooms"])
    assert cli.find_socket(args, environ=env) == ("/explicit.sock", "")


def test_socket_without_any_config_uses_the_lookup() -> None:
    args = cli.build_parser().parse_args(["rooms"])
    env = {"XDG_RUNTIME_DIR": "/run/user/9"}
    assert cli.find_socket(args, environ=env) == ("/run/user/9/chatsvc/admin.sock", "")


@pytest.mark.parametrize("how", ["--config", "CHATSVC_CONFIG"])
def test_bad_explicit_config_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    cfg = write(tmp_path / "bad.toml", "[admin]\nsocket = 5\n")
    if how == "--config":
        rc, out, err = run(capsys, "--config", str(cfg), "rooms")
    else:
        monkeypatch.setenv("CHATSVC_CONFIG", str(cfg))
        rc, out, err = run(capsys, "rooms")
    assert rc == cli.EXIT_USAGE
    assert err == f"chatsvc-admin: config error: {cfg}: admin.socket: expected a string, found 5\n"
    assert out == ""


def test_missing_explicit_config_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, _, err = run(capsys, "--config", str(tmp_path / "nope.toml"), "rooms")
    assert rc == cli.EXIT_USAGE
    assert "no such file" in err


def test_broken_system_config_warns_and_keeps_its_socket(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fake: Callable[..., FakeAdminServer],
) -> None:
    srv = fake()
    system = write(
        tmp_path / "system.toml",
        f'[admin]\nsocket = "{srv.path}"\n[rooms]\ndefault = "kitchen"\n',
    )
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    rc, out, err = run(capsys, "rooms")
    assert rc == 0
    assert out.startswith("ROOM")
    assert err.startswith("chatsvc-admin: warning: ignoring config: ")
    assert "rooms.default" in err


def test_unparsable_system_config_falls_back_to_the_lookup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = write(tmp_path / "system.toml", "this is [not toml\n")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    args = cli.build_parser().parse_args(["rooms"])
    assert cli.find_socket(args, environ={"RUNTIME_DIRECTORY": "/run/q"}) == (
        "/run/q/admin.sock",
        "",
    )


# --- every command, both output modes ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected", "expect"),
    [
        (["rooms"], {"cmd": "rooms"}, "lobby        2  alice, bob"),
        (["users"], {"cmd": "users"}, "127.0.0.1:50412"),
        (["stats"], {"cmd": "stats"}, "drops        bye 100, idle 3"),
        (
            ["kick", "bob", "--reason", "spamming", "--ban", "600"],
            {"cmd": "kick", "name": "bob", "reason": "spamming", "ban": 600},
            "kicked bob (spamming); banned for 10m00s",
        ),
        (
            ["broadcast", "hi", "there", "--room", "lobby"],
            {"cmd": "broadcast", "text": "hi there", "room": "lobby"},
            "delivered to 3 users in room lobby",
        ),
        (["reload"], {"cmd": "reload", "check": False}, "  server.port: 6321 -> 6400"),
        (
            ["ban", "--address", "10.0.0.7", "--for", "600", "--reason", "spam"],
            {"cmd": "ban", "address": "10.0.0.7", "seconds": 600, "reason": "spam"},
            "banned address 10.0.0.7 for 10m00s; 2 connections closed",
        ),
        (["unban", "bob"], {"cmd": "unban", "name": "bob"}, "lifted the ban on name bob"),
        (["bans"], {"cmd": "bans"}, "address  10.0.0.7      2h00m"),
        (
            ["shutdown", "--in", "30"],
            {"cmd": "shutdown", "in": 30},
            "chatsvc shutting down in 30 s",
        ),
    ],
)
def test_command_output(
    capsys: pytest.CaptureFixture[str],
    fake: Callable[..., FakeAdminServer],
    argv: list[str],
    expected: dict[str, Any],
    expect: str,
) -> None:
    srv = fake()
    rc, out, err = run(capsys, "--socket", srv.path, *argv)
    assert (rc, err) == (0, "")
    assert expect in out
    assert srv.requests == [expected]

    rc, out, err = run(capsys, "--socket", srv.path, "--json", *argv)
    assert (rc, err) == (0, "")
    assert json.loads(out) == RESULTS[expected["cmd"]]


def test_client_sends_several_requests_on_one_connection(
    fake: Callable[..., FakeAdminServer],
) -> None:
    srv = fake()
    with cli.AdminClient(srv.path, timeout=5) as client:
        assert client.greeting == GREETING
        assert client.request("stats")["result"]["clients"] == 12
        assert client.request("kick", name="bob")["ok"] is True
        assert client.request("shutdown", **{"in": 5})["result"]["shutting_down"] is True
    assert srv.connections == 1
    assert srv.requests == [
        {"cmd": "stats"},
        {"cmd": "kick", "name": "bob"},
        {"cmd": "shutdown", "in": 5},
    ]


def test_client_request_needs_a_connection() -> None:
    with pytest.raises(cli.ProtocolError):
        cli.AdminClient("/nonexistent").request("stats")


# --- failures reported by the server --------------------------------------------------------


def test_not_found_exits_1(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    reply = failure("not_found", "no such user: bob")
    srv = fake(respond=lambda req: reply)
    rc, out, err = run(capsys, "--socket", srv.path, "kick", "bob")
    assert rc == cli.EXIT_FAILED
    assert out == ""
    assert err == "chatsvc-admin: kick: no such user: bob [not_found]\n"
    rc, out, err = run(capsys, "--socket", srv.path, "--json", "kick", "bob")
    assert rc == cli.EXIT_FAILED
    assert json.loads(out) == reply
    assert "no such user" in err


def test_unknown_command_shows_the_hint(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    reply = failure("unknown_command", "unknown command 'stats'", hint="did you mean 'stat'?")
    srv = fake(respond=lambda req: reply)
    rc, _, err = run(capsys, "--socket", srv.path, "stats")
    assert rc == cli.EXIT_FAILED
    assert "unknown command 'stats' (did you mean 'stat'?) [unknown_command]" in err


def test_forbidden_instead_of_greeting_exits_4(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer], tmp_path: Path
) -> None:
    srv = fake(greeting=failure("forbidden", "uid 1000 may not administer chatsvc"))
    rc, out, err = run(capsys, "--socket", srv.path, "stats")
    assert rc == cli.EXIT_DENIED
    assert out == ""
    assert "uid 1000 may not administer chatsvc" in err
    assert "are you in the chatsvc admin group?" in err
    cfg = write(tmp_path / "c.toml", f'[admin]\nsocket = "{srv.path}"\ngroup = "ops"\n')
    rc, _, err = run(capsys, "--config", str(cfg), "stats")
    assert rc == cli.EXIT_DENIED
    assert "are you in the 'ops' group?" in err


def test_forbidden_reply_exits_4(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake(respond=lambda req: failure("forbidden", "no"))
    rc, _, _ = run(capsys, "--socket", srv.path, "shutdown")
    assert rc == cli.EXIT_DENIED


# --- not running, permission, protocol errors ---------------------------------------------


def test_missing_socket_exits_3(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = short_tmp / "admin.sock"
    rc, out, err = run(capsys, "--socket", str(path), "stats")
    assert rc == cli.EXIT_NOT_RUNNING
    assert out == ""
    assert err == f"chatsvc-admin: no admin socket at {path} — is chatsvc running?\n"
    rc, _, err = run(capsys, "--socket", str(short_tmp / "no-dir" / "admin.sock"), "stats")
    assert rc == cli.EXIT_NOT_RUNNING


def test_stale_socket_refused_exits_3(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    path = short_tmp / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nothing listens: what a crashed server leaves
    rc, _, err = run(capsys, "--socket", str(path), "stats")
    assert rc == cli.EXIT_NOT_RUNNING
    assert err == f"chatsvc-admin: refused connection at {path} — is chatsvc running?\n"


def test_socket_path_too_long_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "--socket", "/tmp/" + "x" * 120, "stats")
    assert rc == cli.EXIT_USAGE
    assert "too long" in err


def test_permission_denied_exits_4(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake()
    os.chmod(srv.path, 0o600)
    argv = ["--socket", srv.path, "stats"]
    if os.geteuid() == 0:  # root ignores file modes: try as nobody
        rc, err = run_main_as_nobody(argv)
    else:
        os.chmod(srv.path, 0o000)
        rc, _, err = run(capsys, *argv)
    assert rc == cli.EXIT_DENIED, err
    assert err == (
        f"chatsvc-admin: permission denied on {srv.path} — are you in the chatsvc admin group?\n"
    )
    assert srv.connections == 0


def test_connect_errors_map_to_exit_codes() -> None:
    cases = {
        errno.ENOENT: cli.EXIT_NOT_RUNNING,
        errno.ENOTDIR: cli.EXIT_NOT_RUNNING,
        errno.ECONNREFUSED: cli.EXIT_NOT_RUNNING,
        errno.EACCES: cli.EXIT_DENIED,
        errno.EPERM: cli.EXIT_DENIED,
        errno.EAGAIN: cli.EXIT_BUSY,
    }
    for code, exit_code in cases.items():
        err = cli.connect_error("/p", OSError(code, os.strerror(code)))
        assert err.exit_code == exit_code, errno.errorcode[code]
    assert cli.connect_error("/p", socket.timeout("timed out")).exit_code == cli.EXIT_NOT_RUNNING


def test_no_greeting_in_time_exits_3(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    # A listening socket nobody accepts on: the kernel completes the connect.
    path = short_tmp / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(path))
        hung.listen(1)
        rc, _, err = run(capsys, "--socket", str(path), "--timeout", "0.3", "stats")
    assert rc == cli.EXIT_NOT_RUNNING
    assert "no greeting" in err


@pytest.mark.parametrize(
    ("greeting", "respond", "what"),
    [
        (b"hello there\n", canned, "greeting is not valid JSON"),
        (b"[1, 2]\n", canned, "greeting is not a JSON object"),
        ({"protocol": 2, "server": "chatsvc"}, canned, "unexpected greeting"),
        ({"protocol": 1, "server": "other"}, canned, "unexpected greeting"),
        (GREETING, lambda req: None, "closed the connection before the reply"),
        (GREETING, lambda req: b"nope\n", "reply is not valid JSON"),
        (GREETING, lambda req: b"[" * 100_000 + b"\n", "reply is nested deeper than 32 levels"),
        (GREETING, lambda req: {"ok": False, "protocol": 1}, "unexpected reply"),
        (GREETING, lambda req: {"protocol": 1}, "unexpected reply"),
        (GREETING, lambda req: {"ok": True, "protocol": 1}, "unexpected reply"),
        (GREETING, lambda req: ok({"wrong": []}), "unexpected result for 'rooms'"),
    ],
)
def test_protocol_errors_exit_5(
    capsys: pytest.CaptureFixture[str],
    fake: Callable[..., FakeAdminServer],
    greeting: Union[dict[str, Any], bytes],
    respond: Callable[[dict[str, Any]], Reply],
    what: str,
) -> None:
    srv = fake(greeting=greeting, respond=respond)
    rc, out, err = run(capsys, "--socket", srv.path, "--timeout", "5", "rooms")
    assert rc == cli.EXIT_PROTOCOL, err
    assert what in err
    assert out == ""


def test_server_closing_before_greeting_exits_5(
    capsys: pytest.CaptureFixture[str], short_tmp: Path
) -> None:
    path = short_tmp / "closer.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(1)
        done = threading.Event()

        def accept_and_close() -> None:
            conn, _ = srv.accept()
            conn.close()
            done.set()

        t = threading.Thread(target=accept_and_close, daemon=True)
        t.start()
        rc, _, err = run(capsys, "--socket", str(path), "rooms")
        t.join(5)
    assert rc == cli.EXIT_PROTOCOL
    assert "closed the connection before the greeting" in err


def test_no_reply_in_time_exits_5(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake(respond=lambda req: SILENT)
    started = time.monotonic()
    rc, _, err = run(capsys, "--socket", srv.path, "--timeout", "0.3", "stats")
    assert rc == cli.EXIT_PROTOCOL
    assert "no reply to 'stats' within 0.3 s" in err
    assert time.monotonic() - started < 5


def test_oversized_reply_is_refused(
    fake: Callable[..., FakeAdminServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "MAX_REPLY_BYTES", 1000)
    srv = fake(respond=lambda req: b"x" * 5000)
    client = cli.AdminClient(srv.path, timeout=5)
    client.connect()
    try:
        with pytest.raises(cli.ProtocolError, match="longer than 1000 bytes"):
            client.request("stats")
    finally:
        client.close()


# --- operator texts are checked like users' lines, before connecting -------------------------


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (
            ["kick", "bob", "--reason", "bye\n[lobby] alice: I quit, bob was right"],
            "kick: --reason: must be one line",
        ),
        (["shutdown", "--reason", "now\r\n[lobby] root: ok"], "shutdown: --reason: must be one"),
        (["broadcast", "\x1b[2J\x1b[Hhacked"], "broadcast: TEXT: control characters"),
        (["broadcast", "abc\u202edcba"], "broadcast: TEXT: invisible or direction-changing"),
        (["broadcast", "x" * 401], "broadcast: TEXT: too long (401 characters, at most 400)"),
        (["kick", "bob", "--reason", "  "], "kick: --reason: must not be empty"),
        (["ban", "--address", "10.0.0.x", "--for", "5"], "ban: --address: must be an IP address"),
        (["kick", "bob", "--ban-address"], "kick: --ban-address: needs a 'ban'"),
        (["unban"], "unban: unban needs exactly one of 'name' and 'address'"),
        (["unban", "bob", "--address", "::1"], "unban: unban needs exactly one"),
        (["kick", "bo\x07b"], "kick: NAME: must be a name"),
    ],
)
def test_bad_operator_texts_are_usage_errors_and_nothing_is_sent(
    capsys: pytest.CaptureFixture[str],
    fake: Callable[..., FakeAdminServer],
    argv: list[str],
    expect: str,
) -> None:
    srv = fake()
    rc, out, err = run(capsys, "--socket", srv.path, *argv)
    assert rc == cli.EXIT_USAGE
    assert out == ""
    assert err.startswith(f"chatsvc-admin: {expect}"), err
    assert srv.connections == 0


# --- a busy server is retried, then reported as busy (exit 6), never as "not running" -------


def fill_listen_queue(path: str) -> list[socket.socket]:
    """Connect without being accepted until the kernel says the queue is full (EAGAIN)."""
    queued: list[socket.socket] = []
    for _ in range(1000):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return queued
        queued.append(sock)
    raise AssertionError("the listen queue never filled")


def test_full_connection_queue_is_busy_exit_6_not_3(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake(accepting=False, backlog=1)
    queued = fill_listen_queue(srv.path)
    try:
        started = time.monotonic()
        rc, out, err = run(capsys, "--socket", srv.path, "stats")
        elapsed = time.monotonic() - started
    finally:
        for sock in queued:
            sock.close()
    assert rc == cli.EXIT_BUSY, err
    assert out == ""
    assert "is running but its admin socket" in err and "try again" in err
    assert cli.BUSY_RETRY - 0.6 <= elapsed < cli.BUSY_RETRY + 3  # it did retry, boundedly


def test_full_connection_queue_is_retried_until_accepted(
    capsys: pytest.CaptureFixture[str],
    fake: Callable[..., FakeAdminServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = fake(accepting=False, backlog=1)
    queued = fill_listen_queue(srv.path)
    pauses: list[float] = []

    def unclog_then_wait(seconds: float) -> None:
        if not pauses:  # the first retry: the server catches up with its queue
            for sock in queued:
                sock.close()
            srv.resume()
        pauses.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(cli, "wait_before_retry", unclog_then_wait)
    rc, out, err = run(capsys, "--socket", srv.path, "stats")
    assert (rc, err) == (0, "")
    assert "clients" in out
    assert pauses[0] == cli.BUSY_FIRST_PAUSE
    assert srv.requests == [{"cmd": "stats"}]


def test_busy_refusal_is_retried(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    busy = failure(Code.BUSY, "every admin connection is busy")
    srv = fake(greeting=lambda n: busy if n <= 2 else GREETING)
    rc, out, err = run(capsys, "--socket", srv.path, "stats")
    assert (rc, err) == (0, "")
    assert "clients" in out
    assert srv.connections == 3


def test_busy_refusal_until_the_retries_end_exits_6(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake(greeting=failure(Code.BUSY, "every admin connection is busy"))
    started = time.monotonic()
    rc, out, err = run(capsys, "--socket", srv.path, "--timeout", "0.5", "stats")
    assert (rc, out) == (cli.EXIT_BUSY, "")
    assert err == (
        "chatsvc-admin: chatsvc is running but busy: every admin connection is busy [busy] "
        "— try again shortly\n"
    )
    assert srv.connections >= 2
    assert time.monotonic() - started < 3  # --timeout bounds the retrying too


# --- replies: an internal error, and what a kick did ---------------------------------------


def test_internal_error_reply_exits_1_with_its_text(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    text = "internal error in chatsvc while handling 'stats' (RuntimeError); see the log"
    srv = fake(respond=lambda req: failure(Code.INTERNAL, text))
    rc, out, err = run(capsys, "--socket", srv.path, "stats")
    assert (rc, out) == (cli.EXIT_FAILED, "")
    assert err == f"chatsvc-admin: stats: {text} [internal]\n"


OFFLINE_BAN = {
    "name": "bob",
    "kicked": False,
    "reason": "kicked by an operator",
    "banned": 600,
    "address": None,
    "also_closed": 0,
}


def test_kick_ban_of_a_name_nobody_holds_exits_0_and_says_so(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake(respond=lambda req: ok(OFFLINE_BAN))
    rc, out, err = run(capsys, "--socket", srv.path, "kick", "bob", "--ban", "600")
    assert (rc, err) == (0, "")
    assert out == "no user bob online; the name is banned for 10m00s\n"


def test_kick_address_ban_for_a_name_nobody_holds_exits_1(
    capsys: pytest.CaptureFixture[str], fake: Callable[..., FakeAdminServer]
) -> None:
    srv = fake(respond=lambda req: ok(OFFLINE_BAN))
    argv = ["--socket", srv.path, "kick", "bob", "--ban", "600", "--ban-address"]
    rc, out, err = run(capsys, *argv)
    assert rc == cli.EXIT_FAILED
    assert out == ""
    assert err == (
        "chatsvc-admin: kick: no user bob online, so the address was not banned (it is only "
        "known while the user is connected); the name is banned for 10m00s\n"
    )
    rc, out, _ = run(capsys, "--json", *argv)
    assert rc == cli.EXIT_FAILED
    assert json.loads(out) == OFFLINE_BAN


def test_the_hint_names_the_group_of_the_socket_directory(short_tmp: Path) -> None:
    # The config file naming the group may be unreadable to the user who needs
    # the hint; the directory's group is there for anyone to see.
    import grp

    group = next((g for g in ("nogroup", "nobody", "daemon") if _has_group(g)), None)
    if group is None or os.geteuid() != 0:
        pytest.skip("needs root and a spare group to chown to")
    os.chown(short_tmp, -1, grp.getgrnam(group).gr_gid)
    err = cli.connect_error(str(short_tmp / "admin.sock"), PermissionError(errno.EACCES, "x"))
    assert f"are you in the {group!r} group?" in str(err)


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
