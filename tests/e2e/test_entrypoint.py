"""The real ``chatsvc`` entry point in a subprocess: start, logs, signals, config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from chatsvc import __version__
from tests.e2e.helpers import RawClient, ServerProcess, logged_in

StartProc = Callable[..., ServerProcess]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CHATSVC_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "chatsvc", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_defaults_serve_on_6321_with_no_config(tmp_path: Path) -> None:
    if not port_is_free(6321):
        pytest.skip("port 6321 is in use on this machine")
    if Path("/etc/chatsvc/chatsvc.toml").exists():
        pytest.skip("a system config exists here; defaults would not apply")
    env = {k: v for k, v in os.environ.items() if k != "CHATSVC_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsvc"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().decode()
        assert "Server started on 127.0.0.1:6321" in first
        assert json.loads(first)["event"] == "server_started"
        with RawClient("127.0.0.1", 6321) as c:
            assert c.login("alice") == "* hello alice, you are in lobby"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s:
                s.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_tells_clients_and_exits_zero(chatsvc_proc: StartProc, sig: int) -> None:
    srv = chatsvc_proc()
    a = logged_in(srv.host, srv.port, "alice")
    b = logged_in(srv.host, srv.port, "bob")
    a.send("last words")
    b.expect("last words")
    srv.proc.send_signal(sig)
    for c in (a, b):
        assert c.expect_eof(timeout=10)[-1] == "* server shutting down"
        c.close()
    assert srv.wait_exit() == 0
    names = [e["event"] for e in srv.events]
    assert "server_stopping" in names and names[-1] == "server_stopped"
    assert not any("Traceback" in line for line in srv.raw_lines)


def test_log_events_are_json_lines_with_stable_names(chatsvc_proc: StartProc) -> None:
    srv = chatsvc_proc()
    a = logged_in(srv.host, srv.port, "alice")
    a.send("/join work")
    a.expect("now in work")
    a.send("bye")
    a.expect_eof()
    a.close()
    srv.wait_event("client_disconnected")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    seen = [e["event"] for e in srv.events]
    for name in (
        "server_started",
        "client_connected",
        "client_login",
        "room_joined",
        "room_left",
        "client_disconnected",
        "server_stopping",
        "server_stopped",
    ):
        assert name in seen, name
    for e in srv.events:
        assert e["timestamp"].endswith("Z") and e["level"] in ("debug", "info", "warning", "error")
    gone = next(e for e in srv.events if e["event"] == "client_disconnected")
    assert gone["reason"] == "bye" and gone["name"] == "alice"


def test_message_text_is_logged_only_when_enabled(chatsvc_proc: StartProc) -> None:
    quiet = chatsvc_proc(level="debug")
    with logged_in(quiet.host, quiet.port, "alice") as a:
        a.send("secret plans")
        a.expect("secret plans")
    event = quiet.wait_event("message")
    assert event["bytes"] == len("secret plans") and "text" not in event
    quiet.kill()
    loud = chatsvc_proc(log_messages=True)
    with logged_in(loud.host, loud.port, "bob") as b:
        b.send("public plans")
        b.expect("public plans")
    assert loud.wait_event("message")["text"] == "public plans"


def test_rejected_connection_is_logged(chatsvc_proc: StartProc) -> None:
    srv = chatsvc_proc(max_clients=1)
    with logged_in(srv.host, srv.port, "alice"), RawClient(srv.host, srv.port) as c:
        assert c.read_line() == "! server full, try again later"
        event = srv.wait_event("client_rejected")
        assert event["reason"] == "server_full"


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"chatsvc {__version__}"


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = 7000\n[rooms]\nnames = ["a", "b"]\ndefault = "b"\n')
    r = run_cli("--config", str(cfg), "--check-config")
    assert r.returncode == 0, r.stderr
    assert "port = 7000" in r.stdout and 'names = ["a", "b"]' in r.stdout
    assert "config OK" in r.stderr


def test_check_config_uses_env_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nport = 7001\n")
    r = run_cli("--check-config", env={"CHATSVC_CONFIG": str(cfg)})
    assert r.returncode == 0 and "port = 7001" in r.stdout


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ('[server]\nport = "x"\n', "server.port", "an integer from 0 to 65535"),
        ("[rooms]\nnames = []\n", "rooms.names", "a non-empty list"),
        ('[rooms]\nnames = ["a", "A"]\n', "rooms.names", "without duplicates"),
        ('[rooms]\nnames = ["a"]\ndefault = "b"\n', "rooms.default", "one of the rooms"),
        ("[server]\nprot = 1\n", "server.prot", "one of host, port"),
        ("[sever]\n", "sever", "one of the sections"),
        ("[server\n", "", "valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, body: str, key: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    for extra in ([], ["--check-config"]):
        r = run_cli("--config", str(cfg), *extra)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        line = r.stderr.strip()
        assert "\n" not in line
        assert str(cfg) in line and key in line and expected in line


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("--port", str(port))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_bad_port_on_command_line() -> None:
    r = run_cli("--port", "70000", "--check-config")
    assert r.returncode == 2 and "server.port" in r.stderr
