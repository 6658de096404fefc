"""sd_notify, watchdog and socket activation against real sockets, no systemd needed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsvc import systemd

RECV_TIMEOUT = 5.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify_sock(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd, named by $NOTIFY_SOCKET."""
    path = short_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECV_TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket, n: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(n)]


def assert_nothing_sent(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_states_arrive_in_order(notify_sock: socket.socket) -> None:
    assert systemd.ready() is True
    assert systemd.status("serving 3 clients") is True
    assert systemd.watchdog_ping() is True
    assert systemd.stopping() is True
    assert systemd.notify("STATUS=custom") is True
    assert received(notify_sock, 5) == [
        "READY=1",
        "STATUS=serving 3 clients",
        "WATCHDOG=1",
        "STOPPING=1",
        "STATUS=custom",
    ]


def test_status_is_one_line(notify_sock: socket.socket) -> None:
    assert systemd.status("line one\nline two")
    assert received(notify_sock, 1) == ["STATUS=line one line two"]


def test_status_text_is_utf8(notify_sock: socket.socket) -> None:
    assert systemd.status("draining — 5 s left")
    assert received(notify_sock, 1) == ["STATUS=draining — 5 s left"]


def test_reloading_carries_the_monotonic_clock(notify_sock: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(notify_sock, 1)[0].split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"chatsvc-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert systemd.stopping()
        assert received(sock, 2) == ["READY=1", "STOPPING=1"]


def test_no_notify_socket_is_a_quiet_no_op(
    notify_sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.ready() is False
    assert systemd.notify("STATUS=x") is False
    assert systemd.reloading() is False
    assert_nothing_sent(notify_sock)


def test_explicit_environ_overrides_the_process_environment(
    notify_sock: socket.socket, short_dir: Path
) -> None:
    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(short_dir / "notify")})
    assert received(notify_sock, 1) == ["READY=1"]


def test_missing_socket_path_returns_false(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "gone"))
    assert systemd.ready() is False


@pytest.mark.parametrize(
    "value",
    [
        "",
        "relative/notify",
        "vsock:2:1234",
        "/" + "x" * 200,  # longer than sun_path
        "/tmp/with\0nul",
    ],
)
def test_unusable_addresses_return_false(value: str) -> None:
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": value}) is False


def test_send_error_returns_false(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stream socket at the path: the datagram send fails (EPROTOTYPE).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(short_dir / "stream"))
        stream.listen(1)
        monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "stream"))
        assert systemd.ready() is False


# --- watchdog ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "SELF"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OTHER"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"SELF": str(os.getpid()), "OTHER": str(os.getpid() + 1)}
    env = {k: pids.get(v, v) for k, v in env.items()}
    assert systemd.watchdog_interval(env) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 2.0


# --- socket activation: parsing -----------------------------------------------------------


def activation_env(fds: str, pid: str) -> dict[str, str]:
    return {"LISTEN_FDS": fds, "LISTEN_PID": pid, "LISTEN_FDNAMES": "chat", "OTHER": "kept"}


@pytest.mark.parametrize(
    ("fds", "pid"),
    [
        ("1", str(os.getpid() + 1)),  # meant for another process
        ("0", str(os.getpid())),
        ("-1", str(os.getpid())),
        ("many", str(os.getpid())),
        ("1", ""),
    ],
)
def test_listen_fds_ignores_what_is_not_ours_and_unsets_it(fds: str, pid: str) -> None:
    env = activation_env(fds, pid)
    assert systemd.listen_fds(env) == []
    assert env == {"OTHER": "kept"}


def test_listen_fds_without_activation() -> None:
    env = {"OTHER": "kept"}
    assert systemd.listen_fds(env) == []
    assert env == {"OTHER": "kept"}


# --- socket activation: real descriptors, in a child process ----------------------------
# Descriptors 3.. belong to pytest here, so the child arranges its own, as systemd would.

CHILD = textwrap.dedent(
    """
    import json, os, socket, sys
    from chatsvc import systemd
    from chatsvc.errors import StartupError

    mode = sys.argv[1]
    if mode == "sockets":
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sources = [tcp, unix]
    else:
        r, w = os.pipe()
        sources = [r]
    for n, src in enumerate(sources):
        fd = src if isinstance(src, int) else src.fileno()
        os.dup2(fd, 3 + n)  # inheritable, like systemd's
    os.environ.update(LISTEN_FDS=str(len(sources)), LISTEN_PID=str(os.getpid()))
    os.environ["LISTEN_FDNAMES"] = ":".join(["x"] * len(sources))
    out = {}
    try:
        socks = systemd.listen_fds()
    except StartupError as exc:
        out["error"] = str(exc)
        socks = []
    out["fds"] = [s.fileno() for s in socks]
    out["families"] = [s.family.name for s in socks]
    out["types"] = [s.type.name for s in socks]
    out["inheritable"] = [os.get_inheritable(s.fileno()) for s in socks]
    out["env"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    if socks:
        port = socks[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = socks[0].accept()
            out["accepted"] = conn.family.name
            conn.close()
    print(json.dumps(out))
    """
)


def run_child(mode: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_listen_fds_returns_the_passed_sockets() -> None:
    out = run_child("sockets")
    assert out["fds"] == [3, 4]
    assert out["families"] == ["AF_INET", "AF_UNIX"]
    assert out["types"] == ["SOCK_STREAM", "SOCK_DGRAM"]
    assert out["inheritable"] == [False, False]
    assert out["env"] == []
    assert out["accepted"] == "AF_INET"


def test_listen_fds_refuses_a_descriptor_that_is_not_a_socket() -> None:
    out = run_child("pipe")
    assert "descriptor 3" in str(out["error"])
    assert out["fds"] == []
    assert out["env"] == []
