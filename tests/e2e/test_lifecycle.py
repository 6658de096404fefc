"""Stopping, reloading, systemd notification and daemon mode of the real entry point."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.e2e.helpers import (
    RawClient,
    ServerProcess,
    blocked_signals,
    logged_in,
    wait_until,
)

StartProc = Callable[..., ServerProcess]
ConfigFile = Callable[..., Path]


def admin_request(path: str, **request: Any) -> dict[str, Any]:
    """One request over the real admin socket, raw (the CLI has its own tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        f.write(json.dumps(request).encode() + b"\n")
        f.flush()
        reply: dict[str, Any] = json.loads(f.readline())
        return reply


@pytest.mark.timeout(120)
def test_sigterm_with_100_clients_delivers_everything_then_the_notice(
    chatsvc_proc: StartProc, short_tmp: Path
) -> None:
    srv = chatsvc_proc(shutdown_grace=10.0, level="warning")
    clients = [logged_in(srv.host, srv.port, f"u{i}") for i in range(100)]
    senders = clients[:5]
    per_sender = 40
    sent = threading.Event()

    def blast(c: RawClient, idx: int) -> None:
        for n in range(per_sender):
            c.send(f"msg {idx} {n}")

    threads = [threading.Thread(target=blast, args=(c, i)) for i, c in enumerate(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    sent.set()
    # Every sender's last line was accepted by the server (its echo came back) ...
    for i, c in enumerate(senders):
        c.expect(f"u{i}: msg {i} {per_sender - 1}", timeout=20)
    # ... then stop while the other 95 are still reading their backlog.
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    for c in clients:
        rest = c.lines_until_eof(timeout=20)
        assert rest and rest[-1] == "* server shutting down", rest[-3:]
        chat = [line for line in c.seen if line.startswith("[lobby] ")]
        assert len(chat) == len(senders) * per_sender
        for i in range(len(senders)):
            mine = [line for line in chat if line.startswith(f"[lobby] u{i}: ")]
            assert mine == [f"[lobby] u{i}: msg {i} {n}" for n in range(per_sender)]
        c.close()
    assert srv.wait_exit(timeout=15) == 0
    assert time.monotonic() - started < 10.0 + 5
    assert not (short_tmp / "admin.sock").exists()
    stopped = [e for e in srv.events if e["event"] == "server_stopped"]
    assert stopped and stopped[0]["clients_at_stop"] == 100


def test_admin_shutdown_counts_down_with_reason(chatsvc_proc: StartProc, short_tmp: Path) -> None:
    srv = chatsvc_proc()
    a = logged_in(srv.host, srv.port, "alice")
    sock = str(short_tmp / "admin.sock")
    reply = admin_request(sock, cmd="shutdown", reason="upgrade", **{"in": 1})
    assert reply["ok"] and reply["result"] == {"shutting_down": True, "in": 1}
    assert a.expect("shutting down in") == "* server shutting down in 1 s: upgrade"
    assert a.lines_until_eof(timeout=10)[-1] == "* server shutting down: upgrade"
    a.close()
    assert srv.wait_exit() == 0


def test_second_sigint_exits_at_once(chatsvc_proc: StartProc) -> None:
    srv = chatsvc_proc(shutdown_grace=60.0, send_queue_bytes=1 << 20)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((srv.host, srv.port))
    slow.settimeout(5)
    slow.sendall(b"sloth\n")
    seen = b""
    while b"hello sloth" not in seen:  # logged in; from now on it never reads
        seen += slow.recv(4096)
    talker = logged_in(srv.host, srv.port, "talker")
    payload = "x" * 1000
    for n in range(300):  # ~300 KB: far more than the sloth's socket buffers hold
        talker.send(f"{n} {payload}")
    talker.expect("talker: 299 ")
    srv.proc.send_signal(signal.SIGINT)
    srv.wait_event("server_stopping")
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(5) == 130
    slow.close()
    talker.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux procfs")
def test_only_the_main_thread_can_receive_stop_and_reload_signals(
    chatsvc_proc: StartProc, short_tmp: Path
) -> None:
    # Python runs handlers in the main thread only; a signal the kernel gave to a
    # reader thread once left a second SIGINT unseen until the drain's grace ended.
    srv = chatsvc_proc()
    a = logged_in(srv.host, srv.port, "alice")  # its reader and writer have started
    assert admin_request(str(short_tmp / "admin.sock"), cmd="stats")["ok"]
    blocked = blocked_signals(srv.proc.pid)
    main = blocked.pop(srv.proc.pid)
    assert len(blocked) >= 4  # two writers, the admin server, alice's reader
    wanted = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    assert not wanted & main
    for tid, mask in blocked.items():
        assert wanted <= mask, f"thread {tid} can receive them"
    a.close()


def test_sighup_reloads_runtime_settings_and_reports_the_rest(
    chatsvc_proc: StartProc, config_file: ConfigFile, short_tmp: Path
) -> None:
    srv = chatsvc_proc(flood_rate=1000.0, flood_burst=1000)
    sock = str(short_tmp / "admin.sock")
    config_file(flood_rate=2.0, flood_burst=3, level="debug", names=["lobby", "garden"], port=1)
    check = admin_request(sock, cmd="reload", check=True)["result"]
    assert check["applied"] == []
    assert ["limits.flood_rate", 1000.0, 2.0] in check["would_apply"]
    assert {k for k, _, _ in check["restart_required"]} == {"server.port", "rooms.names"}
    srv.proc.send_signal(signal.SIGHUP)
    event = srv.wait_event("config_reloaded")
    assert set(event["applied"]) == {"limits.flood_rate", "limits.flood_burst", "logging.level"}
    assert set(event["restart_required"]) == {"server.port", "rooms.names"}
    # the rooms did not change (never half-applied); the new flood limit did
    with logged_in(srv.host, srv.port, "alice") as a:
        a.send("/rooms")
        assert "garden" not in a.expect("rooms:")
        a.send_raw(b"one\ntwo\nthree\nfour\n" * 10)
        assert a.expect("! ").startswith("! slow down")


def test_reload_with_a_bad_file_changes_nothing(
    chatsvc_proc: StartProc, config_file: ConfigFile, short_tmp: Path
) -> None:
    srv = chatsvc_proc()
    path = config_file()
    path.write_text("[limits]\nflood_rate = -1\n")
    reply = admin_request(str(short_tmp / "admin.sock"), cmd="reload")
    assert not reply["ok"] and "limits.flood_rate" in reply["error"]
    srv.proc.send_signal(signal.SIGHUP)
    event = srv.wait_event("config_reload_failed")
    assert "limits.flood_rate" in event["error"]
    with logged_in(srv.host, srv.port, "alice") as a:
        a.send("still fine")
        a.expect("still fine")


def test_sd_notify_ready_status_stopping_in_order(config_file: ConfigFile, short_tmp: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(short_tmp / "notify")
    notify.bind(notify_path)
    notify.settimeout(10)
    proc = ServerProcess(
        ["--config", str(config_file())],
        env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"},
    )
    try:
        proc.wait_started()
        messages: list[str] = []

        def receive_until(prefix: str) -> None:
            deadline = time.monotonic() + 10
            while not any(m.startswith(prefix) for m in messages):
                assert time.monotonic() < deadline, messages
                messages.extend(notify.recv(4096).decode().splitlines())

        receive_until("READY=1")
        receive_until("STATUS=")
        receive_until("WATCHDOG=1")
        proc.proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert proc.wait_exit() == 0
        order = [m.split("=")[0] for m in messages]
        assert order.index("READY") < order.index("STATUS") < order.index("STOPPING")
        assert "clients" in next(m for m in messages if m.startswith("STATUS="))
    finally:
        proc.kill()
        notify.close()


def test_stale_admin_socket_is_replaced_and_live_one_refused(
    chatsvc_proc: StartProc, config_file: ConfigFile, short_tmp: Path
) -> None:
    path = short_tmp / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nothing answers
    srv = chatsvc_proc()
    assert admin_request(str(path), cmd="stats")["ok"]
    second = subprocess.run(
        [sys.executable, "-m", "chatsvc", "--config", str(config_file())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another chatsvc is running" in second.stderr and "Traceback" not in second.stderr
    assert admin_request(str(path), cmd="stats")["ok"]  # the first one is untouched
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 0


def _pid_in(path: Path) -> int:
    return int(path.read_text().strip())


def _locked(path: Path) -> bool:
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(60)
def test_daemon_mode_pidfile_lock_and_sigterm(config_file: ConfigFile, tmp_path: Path) -> None:
    cfg = config_file()
    pidfile = tmp_path / "chatsvc.pid"
    log = tmp_path / "chatsvc.log"
    args = [
        sys.executable,
        "-m",
        "chatsvc",
        "--config",
        str(cfg),
        "--daemon",
        "--pidfile",
        str(pidfile),
        "--log-file",
        str(log),
    ]
    first = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pidfile")
    pid = _pid_in(pidfile)
    try:
        assert _locked(pidfile)
        started = wait_until(
            lambda: next(
                (json.loads(x) for x in log.read_text().splitlines() if '"server_started"' in x),
                None,
            ),
            what="server_started in the log file",
        )
        assert started["pid"] == pid
        with logged_in("127.0.0.1", started["port"], "alice") as a:
            a.send("from the daemon")
            a.expect("from the daemon")
        second = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "already running" in second.stderr and str(pid) in second.stderr
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), timeout=15, what="daemon exit")
        assert not pidfile.exists()
        assert '"server_stopped"' in log.read_text()
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_daemon_replaces_stale_pidfile_and_reports_errors_before_detaching(
    config_file: ConfigFile, tmp_path: Path
) -> None:
    pidfile = tmp_path / "chatsvc.pid"
    pidfile.write_text("999999\n")  # no such process, nobody holds the lock
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "chatsvc",
                "--config",
                str(config_file(port=port)),
                "--daemon",
                "--pidfile",
                str(pidfile),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert bad.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in bad.stderr
    assert not pidfile.exists()  # released on the failed start
    pidfile.write_text("999999\n")
    log = tmp_path / "d.log"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatsvc",
            "--config",
            str(config_file()),
            "--daemon",
            "--pidfile",
            str(pidfile),
            "--log-file",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    wait_until(
        lambda: pidfile.exists() and pidfile.read_text().strip() not in ("", "999999"),
        what="the daemon's pid in the pidfile",
    )
    pid = _pid_in(pidfile)
    try:
        wait_until(lambda: "stale_pidfile_replaced" in log.read_text(), what="stale pidfile log")
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), timeout=15, what="daemon exit")


def test_daemon_needs_a_pidfile() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "chatsvc", "--daemon"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "--pidfile" in r.stderr


def test_a_reloaded_line_limit_applies_to_connected_clients_at_once(
    chatsvc_proc: StartProc, config_file: ConfigFile
) -> None:
    srv = chatsvc_proc(max_line_bytes=4096)
    with logged_in(srv.host, srv.port, "alice") as a:
        config_file(max_line_bytes=100)
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_event("config_reloaded")
        a.send("x" * 200)
        assert a.expect("! ") == "! line too long (max 100 bytes); discarded"


@pytest.mark.timeout(60)
def test_a_log_file_stays_json_across_a_reload_to_console_format(
    config_file: ConfigFile, tmp_path: Path
) -> None:
    cfg = config_file(format="json")
    log = tmp_path / "chatsvc.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsvc", "--config", str(cfg), "--log-file", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: log.exists() and '"server_started"' in log.read_text(), what="start")
        config_file(format="console")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: '"config_reloaded"' in log.read_text(), what="reload logged")
        port = next(
            json.loads(x)["port"] for x in log.read_text().splitlines() if "server_started" in x
        )
        with logged_in("127.0.0.1", port, "alice"):
            pass
        wait_until(lambda: '"client_disconnected"' in log.read_text(), what="later events")
        lines = log.read_text().splitlines()
        assert lines and all(json.loads(x) for x in lines)  # every line is one JSON object
    finally:
        proc.terminate()
        proc.wait(15)
