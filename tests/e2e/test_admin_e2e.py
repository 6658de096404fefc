"""The admin channel end to end: the real ``chatsvc`` and the real ``chatsvc-admin``.

Each test starts the server entry point with a temp config whose admin socket
is in a short temp dir (``short_tmp``), and runs the CLI as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from chatsvc import __version__
from tests.e2e.helpers import RawClient, ServerProcess, logged_in
from tests.runas import run_main_as_nobody

StartProc = Callable[..., ServerProcess]


def admin(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CHATSVC_CONFIG", "RUNTIME_DIRECTORY")}
    return subprocess.run(
        [sys.executable, "-m", "chatsvc.admin_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


class Admin:
    """``chatsvc-admin --socket PATH ...`` for one server."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return admin("--socket", str(self.path), *args)

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))


@pytest.fixture
def sock_path(short_tmp: Path) -> Path:
    return short_tmp / "admin.sock"  # where the e2e config_file puts it


@pytest.fixture
def cli(sock_path: Path) -> Admin:
    return Admin(sock_path)


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    made: list[RawClient] = []
    yield made
    for c in made:
        c.close()


def login(made: list[RawClient], proc: ServerProcess, name: str) -> RawClient:
    c = logged_in(proc.host, proc.port, name)
    made.append(c)
    return c


class RawAdmin:
    """The protocol spoken directly over the socket, every read bounded."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = b""

    def read(self) -> Any:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def ask(self, raw: bytes) -> Any:
        self.sock.sendall(raw)
        return self.read()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(sock_path: Path) -> Iterator[Callable[[], RawAdmin]]:
    conns: list[RawAdmin] = []

    def connect() -> RawAdmin:
        conn = RawAdmin(sock_path)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        conn.close()


# --- every command, both output modes --------------------------------------------------


def test_rooms_users_stats(chatsvc_proc: StartProc, cli: Admin, clients: list[RawClient]) -> None:
    proc = chatsvc_proc()
    login(clients, proc, "alice")
    bob = login(clients, proc, "bob")
    bob.send("/join work")
    bob.expect("you are now in work")
    bob.send("hello")
    bob.expect("[work] bob: hello")

    out = cli.ok("rooms").splitlines()
    assert out[0].split() == ["ROOM", "COUNT", "USERS"]
    assert re.fullmatch(r"lobby +1  alice", out[1])
    assert re.fullmatch(r"work +1  bob", out[2])
    assert re.fullmatch(r"support +0  -", out[3])
    rooms = {r["name"]: r for r in cli.json("rooms")["rooms"]}
    assert rooms["lobby"] == {"name": "lobby", "count": 1, "users": ["alice"]}
    assert rooms["work"]["users"] == ["bob"]

    out = cli.ok("users").splitlines()
    assert out[0].split() == [
        "NAME",
        "ROOM",
        "ADDR",
        "CONNECTED",
        "IDLE",
        "QUEUED",
        "MSGS",
        "THROTTLED",
    ]
    row = {line.split()[0]: line.split() for line in out[1:]}
    assert row["bob"][1] == "work"
    assert row["bob"][2].startswith("127.0.0.1:")
    assert re.fullmatch(r"\d\d:\d\d:\d\d", row["bob"][3])
    assert row["bob"][-2:] == ["1", "no"]
    users = {u["name"]: u for u in cli.json("users")["users"]}
    assert set(users) == {"alice", "bob"}
    assert users["bob"]["messages"] == 1
    assert users["alice"]["room"] == "lobby"

    text = cli.ok("stats")
    assert re.search(r"^version +" + re.escape(__version__) + "$", text, re.M)
    assert re.search(r"^logged_in +2$", text, re.M)
    assert re.search(r"^rooms +lobby 1, work 1, support 0, team 0$", text, re.M)
    assert re.search(r"^drops +none$", text, re.M)
    stats = cli.json("stats")
    assert stats["logged_in"] == 2
    assert stats["messages_in"] >= 1
    assert stats["version"] == __version__

    audit = proc.wait_event("admin_command")
    assert audit["uid"] == os.getuid()
    assert audit["cmd"] == "rooms"
    assert audit["result"] == "ok"


def test_broadcast(chatsvc_proc: StartProc, cli: Admin, clients: list[RawClient]) -> None:
    proc = chatsvc_proc()
    alice = login(clients, proc, "alice")
    bob = login(clients, proc, "bob")
    bob.send("/join work")
    bob.expect("you are now in work")

    assert cli.ok("broadcast", "maintenance", "at", "five") == "delivered to 2 users in all rooms\n"
    alice.expect("* maintenance at five")
    bob.expect("* maintenance at five")

    assert cli.json("broadcast", "work only", "--room", "work") == {
        "delivered_to": 1,
        "room": "work",
    }
    bob.expect("* work only")
    alice.send("/rooms")  # a marker: alice got nothing before its reply
    alice.expect("lobby")
    assert not any("work only" in line for line in alice.seen)

    bad = cli.run("broadcast", "hi", "--room", "kitchen")
    assert bad.returncode == 1
    assert "no such room" in bad.stderr
    assert "[not_found]" in bad.stderr


def test_kick_and_ban_seen_by_the_client(
    chatsvc_proc: StartProc, cli: Admin, clients: list[RawClient]
) -> None:
    proc = chatsvc_proc()
    alice = login(clients, proc, "alice")
    bob = login(clients, proc, "bob")

    out = cli.ok("kick", "bob", "--reason", "spamming", "--ban", "60")
    assert out == "kicked bob (spamming); banned for 1m00s\n"
    rest = bob.lines_until_eof()
    assert "* you were kicked: spamming" in rest
    alice.expect("bob was kicked (spamming)")

    with RawClient(proc.host, proc.port) as again:
        assert again.login("bob").startswith("! ")
        assert "banned" in again.seen[-1]
    # other names are not affected
    login(clients, proc, "carol")

    gone = cli.run("kick", "bob")
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert "no such user" in gone.stderr

    as_json = cli.run("--json", "kick", "nobody-here")
    assert as_json.returncode == 1
    reply = json.loads(as_json.stdout)
    assert reply["ok"] is False and reply["code"] == "not_found"

    assert cli.json("kick", "carol")["kicked"] == "carol"


def test_reload(
    chatsvc_proc: StartProc,
    config_file: Callable[..., Path],
    cli: Admin,
) -> None:
    proc = chatsvc_proc()
    assert cli.ok("reload", "--check").splitlines()[1:] == ["no changes"]
    unchanged = cli.json("reload")
    assert (unchanged["applied"], unchanged["restart_required"]) == ([], [])

    config_file(idle_timeout=1800.0, port=1)  # rewrites the running server's file
    checked = cli.ok("reload", "--check").splitlines()
    assert checked[0].startswith("checked ")
    assert "would apply:" in checked
    assert "  limits.idle_timeout: 3600.0 -> 1800.0" in checked
    assert "restart required (not applied):" in checked
    assert "  server.port: 0 -> 1" in checked

    result = cli.json("reload")
    assert result["check"] is False
    assert result["applied"] == [["limits.idle_timeout", 3600.0, 1800.0]]
    assert result["restart_required"] == [["server.port", 0, 1]]
    assert cli.ok("reload").splitlines()[1:] == [
        "restart required (not applied):",
        "  server.port: 0 -> 1",
    ]
    with RawClient(proc.host, proc.port) as c:  # still on its old port
        c.login("dave")

    Path(proc_config(proc)).write_text("[rooms]\ndefault = 'kitchen'\n")
    failed = cli.run("reload")
    assert failed.returncode == 1
    assert "rooms.default" in failed.stderr


def proc_config(proc: ServerProcess) -> str:
    args = proc.proc.args
    assert isinstance(args, list)
    return str(args[args.index("--config") + 1])


def test_shutdown_with_countdown(
    chatsvc_proc: StartProc, cli: Admin, sock_path: Path, clients: list[RawClient]
) -> None:
    proc = chatsvc_proc()
    alice = login(clients, proc, "alice")
    assert cli.ok("shutdown", "--in", "1", "--reason", "upgrade") == (
        "chatsvc shutting down in 1 s\n"
    )
    alice.expect("server shutting down in 1 s: upgrade")
    alice.expect_eof()
    alice.close()  # the server waits for clients to close their side, up to the grace
    assert proc.wait_exit() == 0
    assert not sock_path.exists()

    gone = cli.run("stats")
    assert gone.returncode == 3
    assert gone.stderr == (f"chatsvc-admin: no admin socket at {sock_path} — is chatsvc running?\n")


def test_shutdown_now_json(chatsvc_proc: StartProc, cli: Admin) -> None:
    proc = chatsvc_proc()
    assert cli.json("shutdown") == {"shutting_down": True, "in": 0}
    assert proc.wait_exit() == 0


# --- not running, stale socket, a second server ---------------------------------------------


def test_stale_socket_is_refused_then_replaced(
    chatsvc_proc: StartProc, cli: Admin, sock_path: Path
) -> None:
    proc = chatsvc_proc()
    proc.kill()  # SIGKILL: the socket file stays behind
    assert sock_path.exists()
    stale = cli.run("stats")
    assert stale.returncode == 3
    assert stale.stderr == (
        f"chatsvc-admin: refused connection at {sock_path} — is chatsvc running?\n"
    )

    chatsvc_proc()  # finds nothing answering, replaces the file
    assert cli.json("stats")["clients"] == 0


def test_a_second_server_on_a_live_socket_refuses_to_start(
    chatsvc_proc: StartProc, config_file: Callable[..., Path], cli: Admin
) -> None:
    chatsvc_proc()
    second = ServerProcess(["--config", str(config_file())])
    try:
        assert second.wait_exit() == 1
        assert any("admin socket" in line for line in second.raw_lines)
    finally:
        second.kill()
    assert cli.json("stats")["clients"] == 0  # the first one is untouched


# --- the raw protocol ------------------------------------------------------------------------


def test_greeting_and_several_requests(
    chatsvc_proc: StartProc, raw: Callable[[], RawAdmin]
) -> None:
    chatsvc_proc()
    conn = raw()
    assert conn.read() == {"protocol": 1, "server": "chatsvc", "version": __version__}
    first = conn.ask(b'{"cmd": "stats"}\n')
    assert first["ok"] is True and first["protocol"] == 1
    assert first["result"]["clients"] == 0
    second = conn.ask(b'{"cmd": "rooms"}\r\n')
    assert [r["name"] for r in second["result"]["rooms"]] == ["lobby", "work", "support", "team"]


@pytest.mark.parametrize(
    ("request_line", "code"),
    [
        (b"this is not json\n", "bad_request"),
        (b"[1, 2, 3]\n", "bad_request"),
        (b'"stats"\n', "bad_request"),
        (b"{}\n", "unknown_command"),
        (b'{"cmd": "kik", "name": "x"}\n', "unknown_command"),
        (b'{"cmd": "kick"}\n', "bad_request"),
        (b'{"cmd": "kick", "name": 5}\n', "bad_request"),
        (b'{"cmd": "kick", "name": "x", "ban": "long"}\n', "bad_request"),
        (b'{"cmd": "reload", "check": "yes"}\n', "bad_request"),
        (b'{"cmd": "shutdown", "in": -1}\n', "bad_request"),
        (b'{"cmd": "broadcast", "text": "two\\nlines"}\n', "bad_request"),
        (b'{"cmd": "kick", "name": "ghost"}\n', "not_found"),
    ],
)
def test_malformed_requests(
    chatsvc_proc: StartProc, raw: Callable[[], RawAdmin], request_line: bytes, code: str
) -> None:
    proc = chatsvc_proc()
    conn = raw()
    conn.read()
    reply = conn.ask(request_line)
    assert reply["ok"] is False
    assert reply["protocol"] == 1
    assert reply["code"] == code
    assert reply["error"]
    if request_line.startswith(b'{"cmd": "kik"'):
        assert reply["hint"] == "did you mean 'kick'?"
    # the connection is still usable, and the server is alive
    assert conn.ask(b'{"cmd": "stats"}\n')["ok"] is True
    assert proc.proc.poll() is None


def test_oversized_request_is_refused_and_closed(
    chatsvc_proc: StartProc, raw: Callable[[], RawAdmin]
) -> None:
    proc = chatsvc_proc()
    conn = raw()
    conn.read()
    big = b'{"cmd": "broadcast", "text": "' + b"x" * (70 * 1024) + b'"}\n'
    try:
        conn.sock.sendall(big)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending
    reply = conn.read()
    assert reply["ok"] is False and reply["code"] == "too_large"
    assert conn.read() is None  # closed
    assert proc.proc.poll() is None
    assert raw().read()["protocol"] == 1  # others still welcome


# --- who may use it -------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@needs_root
def test_other_users_are_kept_out_by_the_file_mode(
    chatsvc_proc: StartProc, sock_path: Path
) -> None:
    chatsvc_proc()
    rc, err = run_main_as_nobody(["--socket", str(sock_path), "stats"])
    assert rc == 4, err
    assert "permission denied" in err


@needs_root
def test_other_users_are_refused_by_peer_credentials(
    chatsvc_proc: StartProc, sock_path: Path, short_tmp: Path
) -> None:
    proc = chatsvc_proc()
    short_tmp.chmod(0o755)
    sock_path.chmod(0o666)  # past the file mode: the server's own check must hold
    rc, err = run_main_as_nobody(["--socket", str(sock_path), "stats"])
    assert rc == 4, err
    assert "refused this user" in err
    denied = proc.wait_event("admin_denied")
    assert denied["uid"] == 65534


@needs_root
def test_listed_uids_are_let_in(chatsvc_proc: StartProc, sock_path: Path, short_tmp: Path) -> None:
    chatsvc_proc(uids=[65534])
    short_tmp.chmod(0o755)
    sock_path.chmod(0o666)
    rc, err = run_main_as_nobody(["--socket", str(sock_path), "--json", "stats"])
    assert rc == 0, err


# --- the installed command --------------------------------------------------------------------


def test_console_script_finds_the_socket_through_the_config(
    chatsvc_proc: StartProc, config_file: Callable[..., Path]
) -> None:
    script = shutil.which("chatsvc-admin", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("chatsvc-admin is not installed next to this Python")
    chatsvc_proc()
    env = {k: v for k, v in os.environ.items() if k != "CHATSVC_CONFIG"}
    env["CHATSVC_CONFIG"] = str(config_file())
    proc = subprocess.run([script, "stats"], capture_output=True, text=True, timeout=20, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "clients" in proc.stdout
