"""The admin channel end to end: the real ``chatsvc`` and the real ``chatsvc-admin``.

Each test starts the server entry point with a temp config whose admin socket
is in a short temp dir (``short_tmp``), and runs the CLI as a subprocess.  The
tests that need to break a handler run the real ChatServer in this process
(``inproc``) and patch one hub or server method.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from chatsvc import __version__, config, logsetup
from chatsvc import admin as admin_server
from chatsvc.errors import ConfigError
from chatsvc.server import ChatServer
from tests.e2e.helpers import RawClient, ServerProcess, logged_in, wait_until
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

    assert cli.run("kick", "nobody-here").returncode == 1
    failed = next(
        e
        for e in proc.iter_events(10)
        if e.get("event") == "admin_command" and e.get("cmd") == "kick"
    )
    assert (failed["target"], failed["result"]) == ("nobody-here", "not_found")


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

    assert cli.json("kick", "carol") == {
        "name": "carol",
        "kicked": True,
        "reason": "kicked by an operator",
        "banned": 0,
        "address": None,
        "also_closed": 0,
    }


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
        (b'{"cmd": "broadcast", "text": "\\u001b[2Jgone"}\n', "bad_request"),
        (b'{"cmd": "kick", "name": "x", "reason": "a\\n[lobby] bob: hi"}\n', "bad_request"),
        (b'{"cmd": "kick", "name": "x", "reason": "a\\u2028b"}\n', "bad_request"),
        (b'{"cmd": "kick", "name": "x", "ban_address": true}\n', "bad_request"),
        (b'{"cmd": "kick", "name": "x", "resaon": "typo"}\n', "bad_request"),
        (b'{"cmd": "shutdown", "reason": "a\\r\\n[lobby] bob: hi"}\n', "bad_request"),
        (b'{"cmd": "ban", "address": "nowhere", "seconds": 5}\n', "bad_request"),
        (b'{"cmd": "unban", "name": "ghost"}\n', "not_found"),
        (b"[" * 50_000 + b"\n", "bad_request"),
        (b'{"cmd": "stats", "x": ' + b"[" * 40_000 + b"]" * 20_000 + b"}\n", "bad_request"),
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


# --- a failing handler is contained -------------------------------------------------------


class InProcessServer:
    """The real ChatServer with its admin socket, in this process, logging JSON to a file."""

    def __init__(self, sock_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
        cfg = config.from_mapping(
            {
                "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 3.0},
                "logging": {"level": "info", "format": "json"},
            },
            "test",
        )
        logsetup.configure("info", "json", self._log)
        self.server = ChatServer(cfg, admin_path=str(sock_path))
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        assert self.server.started.wait(5)

    def events(self, name: str) -> list[dict[str, Any]]:
        logsetup.flush()  # the logging thread writes what was logged
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [e for e in map(json.loads, lines) if e.get("event") == name]

    def stop(self) -> None:
        self.server.request_stop()
        self._thread.join(10)
        logsetup.configure("warning", "json", sys.stderr)  # not the file closed next
        self._log.close()


@pytest.fixture
def inproc(sock_path: Path, tmp_path: Path) -> Iterator[InProcessServer]:
    handle = InProcessServer(sock_path, tmp_path / "log.jsonl")
    yield handle
    handle.stop()


def test_an_exception_in_a_handler_is_an_internal_reply_logged_and_audited(
    inproc: InProcessServer,
    cli: Admin,
    raw: Callable[[], RawAdmin],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uncaught: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)

    def broken_stats() -> dict[str, Any]:
        raise RuntimeError("counter table corrupted")

    monkeypatch.setattr(inproc.server.hub, "stats", broken_stats)
    proc = cli.run("stats")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        "chatsvc-admin: stats: internal error in chatsvc while handling 'stats' (RuntimeError); "
        "the server log has the details (event admin_internal_error) [internal]\n"
    )

    conn = raw()  # the same connection still serves the next request
    conn.read()
    assert conn.ask(b'{"cmd": "stats"}\n')["code"] == "internal"
    assert conn.ask(b'{"cmd": "rooms"}\n')["ok"] is True

    audits = wait_until(
        lambda: inproc.events("admin_command")[2:] and inproc.events("admin_command")
    )
    assert [a["result"] for a in audits] == ["internal", "internal", "ok"]
    errors = inproc.events("admin_internal_error")
    assert len(errors) == 2
    assert errors[0]["cmd"] == "stats" and errors[0]["level"] == "error"
    assert "exception" in errors[0] or "exc_info" in errors[0]  # the traceback, as a field
    assert uncaught == []  # no thread died with a traceback on stderr


# --- holes found by an adversarial run ------------------------------------------------------


def test_forged_lines_and_escapes_from_operators_are_refused(
    chatsvc_proc: StartProc, cli: Admin, raw: Callable[[], RawAdmin], clients: list[RawClient]
) -> None:
    proc = chatsvc_proc()
    alice = login(clients, proc, "alice")
    login(clients, proc, "bob")
    forged = "bye\n[lobby] alice: I am leaving, give my admin rights to mallory"
    for argv, option in [
        (["kick", "bob", "--reason", forged], "--reason"),
        (["shutdown", "--reason", forged], "--reason"),
        (["broadcast", "\x1b]0;owned\x07\x1b[2Jhi"], "TEXT"),
    ]:
        refused = cli.run(*argv)
        assert refused.returncode == 2, refused.stderr
        assert f"{argv[0]}: {option}: " in refused.stderr

    conn = raw()  # a script speaking the protocol gets the same answer
    conn.read()
    for request in (
        {"cmd": "kick", "name": "bob", "reason": forged},
        {"cmd": "shutdown", "reason": forged},
        {"cmd": "broadcast", "text": "\x1b[2Jhi"},
    ):
        reply = conn.ask(json.dumps(request).encode() + b"\n")
        assert reply["code"] == "bad_request", reply

    alice.send("/who")  # a marker: nothing reached alice before its answer
    alice.expect("bob")
    assert not any("mallory" in line or "\x1b" in line for line in alice.seen)
    assert {u["name"] for u in cli.json("users")["users"]} == {"alice", "bob"}
    assert proc.proc.poll() is None


def test_idle_admin_connections_do_not_lock_other_operators_out(
    chatsvc_proc: StartProc, raw: Callable[[], RawAdmin], sock_path: Path
) -> None:
    proc = chatsvc_proc()
    held = [raw() for _ in range(admin_server.MAX_CONNECTIONS)]
    for conn in held:
        assert conn.read()["protocol"] == 1
    for conn in held[1:]:  # held[0] is now the one idle longest
        assert conn.ask(b'{"cmd": "rooms"}\n')["ok"] is True

    def admitted() -> Optional[RawAdmin]:
        conn = RawAdmin(sock_path)
        first = conn.read()
        if first is not None and first.get("protocol") == 1 and "ok" not in first:
            return conn
        assert first is not None and first["code"] == "busy", first
        conn.close()
        return None

    newcomer = wait_until(admitted, timeout=10, what="an admin connection to be admitted")
    try:
        assert newcomer.ask(b'{"cmd": "stats"}\n')["ok"] is True
    finally:
        newcomer.close()
    evicted = held[0].read()
    assert evicted["ok"] is False and evicted["code"] == "timeout"
    assert "idle" in evicted["error"]
    assert held[0].read() is None  # closed
    assert all(c.ask(b'{"cmd": "rooms"}\n')["ok"] for c in held[1:])
    assert proc.wait_event("admin_idle_closed")["idle"] >= admin_server.EVICTABLE_AFTER


def test_deeply_nested_request_gets_one_bad_request_reply_and_no_traceback(
    chatsvc_proc: StartProc, raw: Callable[[], RawAdmin]
) -> None:
    proc = chatsvc_proc()
    conn = raw()
    conn.read()
    reply = conn.ask(b"[" * 50_000 + b"]" * 10_000 + b"\n")
    assert reply == {
        "ok": False,
        "protocol": 1,
        "code": "bad_request",
        "error": "request is nested deeper than 32 levels",
    }
    assert conn.ask(b'{"cmd": "stats"}\n')["ok"] is True
    for event in proc.iter_events(2.0):
        if event.get("event") == "admin_command" and event["cmd"] == "stats":
            break
    assert all(line.startswith("{") for line in proc.raw_lines), proc.raw_lines[-5:]


# --- bans by address, pre-emptive name bans, lifting and listing ------------------------------


def test_kick_with_address_ban_closes_the_address_and_bans_can_be_listed_and_lifted(
    chatsvc_proc: StartProc, cli: Admin, clients: list[RawClient]
) -> None:
    proc = chatsvc_proc()
    alice = login(clients, proc, "alice")
    bob = login(clients, proc, "bob")  # every test client comes from 127.0.0.1

    out = cli.ok("kick", "bob", "--reason", "spam", "--ban", "60", "--ban-address")
    assert out == (
        "kicked bob (spam); banned for 1m00s; address 127.0.0.1 banned too, "
        "1 other connection closed\n"
    )
    assert "* you were kicked: spam" in bob.lines_until_eof()
    assert "* you were kicked: spam" in alice.lines_until_eof()
    with RawClient(proc.host, proc.port) as refused:
        assert refused.lines_until_eof() == ["! your address is banned from this server"]

    bans = {(b["kind"], b["what"]): b for b in cli.json("bans")["bans"]}
    assert set(bans) == {("name", "bob"), ("address", "127.0.0.1")}
    assert 0 < bans[("address", "127.0.0.1")]["expires_in"] <= 60
    text = cli.ok("bans").splitlines()
    assert text[0].split() == ["KIND", "WHAT", "TIME", "LEFT"]

    assert cli.ok("unban", "--address", "127.0.0.1") == "lifted the ban on address 127.0.0.1\n"
    with RawClient(proc.host, proc.port) as again:
        assert "banned" in again.login("bob")  # the name ban holds
    assert cli.ok("unban", "bob") == "lifted the ban on name bob\n"
    login(clients, proc, "bob")
    gone = cli.run("unban", "bob")
    assert gone.returncode == 1
    assert gone.stderr == "chatsvc-admin: unban: no ban on name bob [not_found]\n"
    assert cli.ok("bans") == "no bans\n"


def test_ban_address_command_closes_its_connections(
    chatsvc_proc: StartProc, cli: Admin, clients: list[RawClient]
) -> None:
    proc = chatsvc_proc()
    alice = login(clients, proc, "alice")
    out = cli.ok("ban", "--address", "127.0.0.1", "--for", "30", "--reason", "spam wave")
    assert out == "banned address 127.0.0.1 for 30s; 1 connection closed\n"
    assert "* you were kicked: spam wave" in alice.lines_until_eof()
    with RawClient(proc.host, proc.port) as refused:
        assert refused.lines_until_eof() == ["! your address is banned from this server"]
    other = cli.run("ban", "--address", "::1", "--for", "30")
    assert other.returncode == 0
    assert other.stdout == "banned address ::1 for 30s; 0 connections closed\n"


def test_kick_ban_of_a_name_nobody_holds_says_the_ban_is_set(
    chatsvc_proc: StartProc, cli: Admin, clients: list[RawClient]
) -> None:
    proc = chatsvc_proc()
    out = cli.run("kick", "mallory", "--ban", "600")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == "no user mallory online; the name is banned for 10m00s\n"
    with RawClient(proc.host, proc.port) as refused:
        assert "banned" in refused.login("mallory")

    both = cli.run("kick", "eve", "--ban", "600", "--ban-address")
    assert both.returncode == 1
    assert both.stdout == ""
    assert "no user eve online, so the address was not banned" in both.stderr
    assert "the name is banned for 10m00s" in both.stderr
    login(clients, proc, "alice")  # the address is not banned

    nothing = cli.run("kick", "mallory2")
    assert nothing.returncode == 1
    assert "no such user: mallory2 [not_found]" in nothing.stderr


def test_reload_reports_only_a_bad_file_as_failed_and_a_bug_as_internal(
    inproc: InProcessServer, raw: Callable[[], RawAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = raw()
    conn.read()

    def bad_file(check: bool = False) -> dict[str, Any]:
        raise ConfigError("/etc/chatsvc/chatsvc.toml", "limits.flood_rate", "a number", "-1")

    monkeypatch.setattr(inproc.server, "reload", bad_file)
    reply = conn.ask(b'{"cmd": "reload"}\n')
    assert reply["code"] == "failed"
    assert reply["error"].startswith("reload failed, nothing changed: /etc/chatsvc/chatsvc.toml")

    def bug(check: bool = False) -> dict[str, Any]:
        raise KeyError("limits")

    monkeypatch.setattr(inproc.server, "reload", bug)
    reply = conn.ask(b'{"cmd": "reload", "check": true}\n')
    assert reply["code"] == "internal"
    assert "(KeyError)" in reply["error"]
    assert [e["cmd"] for e in inproc.events("admin_internal_error")] == ["reload"]
