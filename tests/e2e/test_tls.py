"""TLS listeners end to end: the real ``chatsvc`` in a subprocess, real TLS clients
(Python's ssl, ``openssl s_client``, the console client in a pty), certificates
made with the ``openssl`` command."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pexpect
import pytest

from chatsvc import config
from chatsvc.server import ChatServer
from tests.e2e.conftest import TEST_DEFAULTS, _sections
from tests.e2e.helpers import (
    RawClient,
    ServerProcess,
    abort,
    blocked_signals,
    logged_in,
    wait_until,
    write_config,
)
from tests.e2e.tlsutil import (
    OPENSSL,
    Pki,
    TlsClient,
    client_context,
    der_fingerprint,
    make_pki,
    tls_logged_in,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsServer:
    """A ``chatsvc`` subprocess with its listeners' ports (from ``server_started``)."""

    def __init__(self, proc: ServerProcess, started: dict[str, Any], config: Path) -> None:
        self.proc = proc
        self.config = config
        self.host = str(started["host"])
        self.port = int(started["port"])  # the line protocol: plain, or TLS when plain is off
        self.tls_port = int(started["tls_port"]) if started.get("tls_port") else 0
        self.irc_tls_port = int(started["irc_tls_port"]) if started.get("irc_tls_port") else 0
        self.started = started

    def tls(self, name: str, ctx: Optional[ssl.SSLContext] = None) -> TlsClient:
        return tls_logged_in(self.host, self.tls_port, name, ctx)

    def plain(self, name: str) -> RawClient:
        return logged_in(self.host, self.port, name)


StartTls = Callable[..., TlsServer]


class OutputReader:
    """Collects a subprocess's stdout in a thread, for waiting on it with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.data = b""
        self._out = proc.stdout
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        assert self._out is not None
        while True:
            chunk = self._out.read1(4096)
            if not chunk:
                return
            self.data += chunk


@pytest.fixture
def tls_server(tmp_path: Path, short_tmp: Path, pki: Pki) -> Iterator[StartTls]:
    """Start ``chatsvc`` with a [tls] section (the CA-signed ``server`` certificate)."""
    procs: list[ServerProcess] = []

    def start(
        tls: Optional[dict[str, Any]] = None,
        irc: Optional[dict[str, Any]] = None,
        server: Optional[dict[str, Any]] = None,
        auth: Optional[dict[str, Any]] = None,
        **flat: Any,
    ) -> TlsServer:
        settings = {**TEST_DEFAULTS, "level": "info", "socket": str(short_tmp / "admin.sock")}
        sections = _sections({**settings, **flat})
        sections["tls"] = {
            "port": 0,
            "cert": pki.path("server.pem"),
            "key": pki.path("server-key.pem"),
            **(tls or {}),
        }
        if irc:
            sections["irc"] = irc
        if auth:
            sections["auth"] = auth
        if server:
            sections["server"].update(server)
        path = write_config(tmp_path / "chatsvc.toml", sections)
        proc = ServerProcess(["--config", str(path)])
        procs.append(proc)
        started = proc.wait_event("server_started", 10)
        return TlsServer(proc, started, path)

    yield start
    for p in procs:
        p.kill()


def who(c: RawClient) -> list[str]:
    """The names in ``c``'s room, from ``/who`` (other lines before the answer are skipped)."""
    c.send("/who")
    first = c.expect(re.compile(r"^\* in \S+ \(\d+\): "))
    return [n.strip() for n in first.split(": ", 1)[1].split(",")]


def chatting(a: RawClient, b: RawClient, text: str) -> None:
    """``a`` says ``text`` and ``b`` (in the same room) sees it."""
    a.send(text)
    b.expect(f": {text}")


# --- chat over TLS ---------------------------------------------------------------------


def test_tls_and_plain_clients_chat_in_one_room(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server()
    ctx = client_context(pki.ca)  # verifies the chain and the name (127.0.0.1 is in the SAN)
    with srv.tls("alice", ctx) as alice, srv.plain("bob") as bob:
        assert alice.peer_fingerprint == pki.fingerprint("server.pem")
        alice.expect("bob joined lobby")
        chatting(alice, bob, "hello over tls")
        chatting(bob, alice, "hello in plain text")
        big = "x" * 1500  # several lines at once: more than one TLS record
        for i in range(40):
            bob.send(f"{i} {big}")
        for i in range(40):
            alice.expect(f"bob: {i} {big}")
    event = srv.proc.wait_event("client_connected")
    assert event["tls"] is True
    assert srv.started["tls_fingerprint"] == pki.fingerprint("server.pem")


def test_admin_users_shows_which_users_came_over_tls(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server()
    with srv.tls("alice") as alice, srv.plain("bob"):
        alice.send("/who")
        alice.expect("bob")
        admin_sock = srv.config.read_text().split('socket = "')[1].split('"')[0]
        out = subprocess.run(
            [sys.executable, "-m", "chatsvc.admin_cli", "--socket", admin_sock, "--json", "users"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert '"tls": true' in out.stdout and '"tls": false' in out.stdout


def test_openssl_s_client_is_a_client_like_any_other(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server()
    with srv.plain("bob") as bob:
        proc = subprocess.Popen(
            [
                OPENSSL or "openssl",
                "s_client",
                "-quiet",
                "-connect",
                f"127.0.0.1:{srv.tls_port}",
                "-CAfile",
                pki.ca,
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"carol\nhi from s_client\n")
            proc.stdin.flush()
            bob.expect("carol: hi from s_client")
            bob.send("hi carol")
            bob.send("/who")  # answered after "hi carol" was queued for carol
            bob.expect("carol")
            proc.stdin.write(b"/quit\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert b"* hello carol, you are in lobby" in out, err
        assert b"bob: hi carol" in out
        assert b"* bye" in out or b"goodbye" in out.lower(), out


def outside_address() -> Optional[str]:
    """This host's own non-loopback IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_passwords_from_other_hosts_need_tls(
    tls_server: StartTls, pki: Pki, tmp_path: Path
) -> None:
    """Accounts: a connection from another address may send a password only over
    TLS (Member.secure); the same login over plain TCP is refused before the prompt."""
    here = outside_address()
    if here is None:
        pytest.skip("no non-loopback IPv4 address on this host")
    srv = tls_server(
        host="0.0.0.0", auth={"mode": "registered", "store": str(tmp_path / "accounts.db")}
    )
    admin_sock = srv.config.read_text().split('socket = "')[1].split('"')[0]
    added = subprocess.run(
        [sys.executable, "-m", "chatsvc.admin_cli", "--socket", admin_sock, "account", "add",
         "alice", "--password-stdin"],
        input="s3cret-passw0rd\n", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    with RawClient(here, srv.port) as plain:
        plain.expect("please enter your name")
        plain.send("alice")
        assert plain.expect("!") == "! a password needs a TLS connection"
    with TlsClient(here, srv.tls_port) as secure:
        secure.expect("please enter your name")
        secure.send("alice")
        secure.expect("* password for alice:")
        secure.send("s3cret-passw0rd")
        assert secure.expect(re.compile(r"^(\* hello |! )")) == "* hello alice, you are in lobby"


def test_plain_listener_off_serves_tls_only(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server(server={"plain": False})
    assert srv.started["plain"] is False
    assert srv.port == srv.tls_port
    with srv.tls("alice") as alice:
        alice.send("/rooms")
        alice.expect("lobby")


def test_an_activated_socket_serves_tls_when_plain_is_off(pki: Pki) -> None:
    """Socket activation (a listener handed over) of a TLS-only server: it speaks TLS."""
    given = socket.create_server(("127.0.0.1", 0))
    port = given.getsockname()[1]
    cfg = config.from_mapping(
        {
            "server": {"port": 0, "plain": False},
            "tls": {"port": 0, "cert": pki.path("server.pem"), "key": pki.path("server-key.pem")},
            "logging": {"level": "warning", "format": "json"},
        },
        "test",
    )
    server = ChatServer(cfg, given)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.started.wait(5)
        assert server.tls_address == ("127.0.0.1", port) and server.address == server.tls_address
        with tls_logged_in("127.0.0.1", port, "alice", client_context(pki.ca)) as alice:
            alice.send("/rooms")
            alice.expect("lobby")
    finally:
        server.request_stop()
        thread.join(10)
    assert not thread.is_alive()


def test_irc_over_tls(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server(irc={"enabled": True, "port": 0, "tls_port": 0, "plain": False})
    assert srv.irc_tls_port and srv.started["irc_port"] is None
    with srv.plain("bob") as bob:
        c = TlsClient(srv.host, srv.irc_tls_port, client_context(pki.ca))
        with c:
            c.send("NICK alice")
            c.send("USER alice 0 * :Alice")
            c.expect(" 001 alice ")
            c.send("JOIN #lobby")
            c.expect(" 366 alice #lobby ")
            c.send("PRIVMSG #lobby :hi from irc over tls")
            bob.expect("alice: hi from irc over tls")
            bob.send("hi alice")
            c.expect("PRIVMSG #lobby :hi alice")


# --- certificates: start, reload ---------------------------------------------------------


def test_a_bad_certificate_at_start_is_one_line_and_exit_2(tmp_path: Path, pki: Pki) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cases = {
        str(bad): ("tls.cert", "no PEM block"),
        str(tmp_path / "missing.pem"): ("tls.cert", "no such file"),
    }
    for cert, (key, why) in cases.items():
        path = write_config(
            tmp_path / "c.toml",
            {"server": {"port": 0}, "tls": {"cert": cert, "key": pki.path("server-key.pem")}},
        )
        result = subprocess.run(
            [sys.executable, "-m", "chatsvc", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert cert in result.stderr and key in result.stderr and why in result.stderr
    path = write_config(  # the key of another certificate
        tmp_path / "c.toml",
        {
            "server": {"port": 0},
            "tls": {"cert": pki.path("server.pem"), "key": pki.path("self-key.pem")},
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "chatsvc", "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "does not match" in result.stderr and "self-key.pem" in result.stderr


def test_reload_switches_the_certificate_for_new_connections(
    tls_server: StartTls, pki: Pki, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.path("server.pem"), live / "cert.pem")
    shutil.copy(pki.path("server-key.pem"), live / "key.pem")
    srv = tls_server(tls={"cert": str(live / "cert.pem"), "key": str(live / "key.pem")})
    with srv.tls("alice") as alice, srv.plain("bob") as bob:
        assert alice.peer_fingerprint == pki.fingerprint("server.pem")
        # A renewal writes new files under the same names, then reloads (SIGHUP).
        shutil.copy(pki.path("server2.pem"), live / "cert.pem")
        shutil.copy(pki.path("server2-key.pem"), live / "key.pem")
        os.kill(srv.proc.proc.pid, signal.SIGHUP)
        reloaded = srv.proc.wait_event("tls_reloaded")
        assert reloaded["fingerprint"] == pki.fingerprint("server2.pem")
        with srv.tls("carol") as carol:
            assert carol.peer_fingerprint == pki.fingerprint("server2.pem")
        chatting(alice, bob, "still here after the reload")  # keeps its own session
        chatting(bob, alice, "and both ways")
        admin_sock = srv.config.read_text().split('socket = "')[1].split('"')[0]
        shown = subprocess.run(
            [sys.executable, "-m", "chatsvc.admin_cli", "--socket", admin_sock, "reload"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert shown.returncode == 0, shown.stderr
        assert f"TLS certificate loaded: {pki.fingerprint('server2.pem')}" in shown.stdout

        # A broken file changes nothing, is logged and reported by chatsvc-admin.
        (live / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        result = subprocess.run(
            [sys.executable, "-m", "chatsvc.admin_cli", "--socket", admin_sock, "reload"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode != 0
        assert "nothing changed" in result.stderr and str(live / "cert.pem") in result.stderr
        failed = srv.proc.wait_event("tls_reload_failed")
        assert failed["file"] == str(live / "cert.pem")
        with srv.tls("dave") as dave:
            assert dave.peer_fingerprint == pki.fingerprint("server2.pem")
        chatting(alice, bob, "and after a failed one")


def test_client_certificates_required_with_client_ca(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server(tls={"client_ca": pki.ca})
    with srv.plain("bob") as bob:
        anonymous = client_context(pki.ca)
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            # TLS 1.3: the refusal may only show at the first read
            c = TlsClient(srv.host, srv.tls_port, anonymous)
            with c:
                c.login("nocert")
        event = srv.proc.wait_event("tls_handshake_failed")
        assert "certificate" in event["reason"]
        ctx = client_context(pki.ca)
        ctx.load_cert_chain(pki.path("client.pem"), pki.path("client-key.pem"))
        with srv.tls("alice", ctx) as alice:
            chatting(alice, bob, "with a client certificate")


# --- the console client -------------------------------------------------------------------


def spawn_client(srv: TlsServer, *args: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update({"TERM": "xterm", "NO_COLOR": "1", "LANG": "C.UTF-8"})
    return pexpect.spawn(
        sys.executable,
        ["-m", "chatsvc.client", "--host", srv.host, "--port", str(srv.tls_port), *args],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=10,
        dimensions=(24, 100),
    )


def finished(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


def test_console_client_with_cafile_chats(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server()
    with srv.plain("bob") as bob:
        child = spawn_client(srv, "--cafile", pki.ca, "--name", "alice")
        try:
            child.expect_exact("* hello alice, you are in lobby")
            child.expect_exact("lobby> ")
            child.send("hi bob\r")
            bob.expect("alice: hi bob")
            bob.send("hi alice, over tls")
            child.expect_exact("bob: hi alice, over tls")
            child.send("/quit\r")
            assert finished(child) == 0
        finally:
            child.terminate(force=True)


def test_console_client_pins_a_self_signed_certificate(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server(tls={"cert": pki.path("self.pem"), "key": pki.path("self-key.pem")})
    pin = pki.fingerprint("self.pem").replace(":", "").lower().replace("sha256", "SHA256:")
    child = spawn_client(srv, "--fingerprint", pin, "--name", "alice")
    try:
        child.expect_exact("* hello alice, you are in lobby")
        child.expect_exact("lobby> ")
        child.send("/quit\r")
        assert finished(child) == 0
    finally:
        child.terminate(force=True)


def test_console_client_verification_failure_says_what_and_how_to_pin(
    tls_server: StartTls, pki: Pki
) -> None:
    srv = tls_server(tls={"cert": pki.path("self.pem"), "key": pki.path("self-key.pem")})
    fp = pki.fingerprint("self.pem")
    child = spawn_client(srv, "--tls", "--name", "alice")  # the system CAs do not know it
    try:
        child.expect("chatsvc-client: TLS verification of 127.0.0.1:\\d+ failed: [^\r\n]+")
        line = str(child.after)
        assert "certificate" in line and f"--fingerprint {fp}" in line, line
        assert finished(child) == 3
    finally:
        child.terminate(force=True)
    # a wrong pin names both fingerprints; a host name mismatch says so
    wrong = "SHA256:" + "00" * 32
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatsvc.client",
            "--port",
            str(srv.tls_port),
            "--fingerprint",
            wrong,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert fp in result.stderr and "not the pinned" in result.stderr


def test_console_client_rejects_an_expired_certificate(tls_server: StartTls, pki: Pki) -> None:
    if not Path(pki.path("expired.pem")).exists():
        pytest.skip("this openssl cannot make an expired certificate (-days -1)")
    srv = tls_server(tls={"cert": pki.path("expired.pem"), "key": pki.path("server-key.pem")})
    result = subprocess.run(
        [sys.executable, "-m", "chatsvc.client", "--port", str(srv.tls_port), "--cafile", pki.ca],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1
    assert "certificate has expired" in result.stderr
    assert pki.fingerprint("expired.pem") in result.stderr


def test_console_client_tls_to_a_plain_port_says_so(tls_server: StartTls) -> None:
    srv = tls_server()
    result = subprocess.run(
        [sys.executable, "-m", "chatsvc.client", "--port", str(srv.port), "--tls"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert f"TLS handshake with 127.0.0.1:{srv.port} failed" in result.stderr
    assert "a chatsvc TLS port?" in result.stderr


def test_console_client_rejects_a_certificate_for_another_host(
    tls_server: StartTls, pki: Pki
) -> None:
    srv = tls_server(tls={"cert": pki.path("wronghost.pem"), "key": pki.path("wronghost-key.pem")})
    result = subprocess.run(
        [sys.executable, "-m", "chatsvc.client", "--port", str(srv.tls_port), "--cafile", pki.ca],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    assert result.returncode == 3, result.stderr
    assert "TLS verification of" in result.stderr and "127.0.0.1" in result.stderr
    assert pki.fingerprint("wronghost.pem") in result.stderr


def test_console_client_reconnects_over_tls_and_verifies_again(
    tls_server: StartTls, pki: Pki
) -> None:
    first = tls_server(server={"plain": False})
    port = first.tls_port
    child = spawn_client(first, "--cafile", pki.ca, "--name", "alice", "--reconnect")
    try:
        child.expect_exact("* hello alice, you are in lobby")
        child.expect_exact("lobby> ")
        first.proc.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait_exit() == 0
        child.expect_exact("reconnecting")
        second = tls_server(server={"plain": False}, tls={"port": port})
        child.expect_exact(f"* reconnected to 127.0.0.1:{port}")
        child.expect_exact("* hello alice, you are in lobby")
        with second.tls("bob") as bob:
            bob.send("welcome back")
            child.expect_exact("[lobby] bob: welcome back")
        child.send("bye\r")
        assert finished(child) == 0
    finally:
        child.terminate(force=True)


def test_console_client_bad_tls_options_are_usage_errors(tmp_path: Path) -> None:
    for args, why in (
        (["--fingerprint", "SHA256:abc"], "64 hex digits"),
        (["--cafile", str(tmp_path / "none.pem")], "cannot use it"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "chatsvc.client", *args],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            cwd=str(ROOT),
        )
        assert result.returncode == 2 and why in result.stderr, result.stderr


# --- hostile TLS clients, while others keep chatting ---------------------------------------


def test_silent_client_times_out_and_blocks_nobody(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server(tls={"handshake_timeout": 1.0})
    silent = socket.create_connection((srv.host, srv.tls_port), timeout=10)
    started = time.monotonic()
    with srv.tls("alice") as alice, srv.plain("bob") as bob:
        chatting(alice, bob, "accept is not blocked")
        silent.settimeout(10)
        assert silent.recv(100) == b""  # closed by the server
        assert 0.8 < time.monotonic() - started < 5
        event = srv.proc.wait_event("tls_handshake_failed")
        assert event["reason"] == "handshake timeout"
        chatting(bob, alice, "still chatting")
    silent.close()


def test_login_timeout_also_ends_a_stalled_handshake(tls_server: StartTls) -> None:
    srv = tls_server(tls={"handshake_timeout": 60.0}, login_timeout=1.0)
    silent = socket.create_connection((srv.host, srv.tls_port), timeout=10)
    silent.sendall(b"\x16\x03\x01")  # a record header begun, never finished
    started = time.monotonic()
    with srv.plain("bob") as bob, srv.tls("alice") as alice:
        try:
            assert silent.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5
        chatting(alice, bob, "the reaper closed it")
    event = srv.proc.wait_event("tls_handshake_failed")
    assert event["reason"]
    silent.close()


def test_handshaking_connections_count_against_max_clients(tls_server: StartTls) -> None:
    srv = tls_server(max_clients=3, tls={"handshake_timeout": 60.0})
    with srv.plain("bob") as bob:
        silent = [socket.create_connection((srv.host, srv.tls_port), timeout=10) for _ in range(2)]
        for _ in range(3):  # bob's and the two that never start their handshake
            srv.proc.wait_event("client_connected")
        with RawClient(srv.host, srv.port) as late:
            assert "server full" in (late.read_line() or "")
        refused = socket.create_connection((srv.host, srv.tls_port), timeout=10)
        try:
            assert refused.recv(100) == b""  # just the close: no text for a TLS client
        except ConnectionResetError:
            pass
        refused.close()
        rejected = srv.proc.wait_event("client_rejected")
        assert rejected["reason"] == "server_full"
        for s in silent:
            s.close()
        bob.send("/who")
        bob.expect("bob")


def test_garbage_instead_of_a_client_hello(tls_server: StartTls) -> None:
    srv = tls_server()
    with srv.tls("alice") as alice, srv.plain("bob") as bob:
        junk = socket.create_connection((srv.host, srv.tls_port), timeout=10)
        junk.sendall(b"alice\nhello, is this the chat?\n" + os.urandom(2000))
        reply = b""
        try:
            while True:
                data = junk.recv(4096)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
        junk.close()
        assert b"welcome" not in reply  # no plaintext, at most an alert
        event = srv.proc.wait_event("tls_handshake_failed")
        assert event["reason"]
        chatting(alice, bob, "after the garbage")


def test_old_protocol_versions_are_refused(tls_server: StartTls) -> None:
    srv = tls_server()
    with srv.tls("alice") as alice, srv.plain("bob") as bob:
        for version_name in ("TLSv1", "TLSv1_1"):
            with warnings.catch_warnings():  # old on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                version = getattr(ssl.TLSVersion, version_name)
                ctx = client_context()
                ctx.minimum_version = ssl.TLSVersion.TLSv1  # a client that only speaks it
                ctx.maximum_version = version
            ctx.set_ciphers("ALL:@SECLEVEL=0")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                TlsClient(srv.host, srv.tls_port, ctx).close()
            event = srv.proc.wait_event("tls_handshake_failed")
            assert "protocol" in event["reason"] or "version" in event["reason"], event
        chatting(alice, bob, "old versions refused")


def test_renegotiation_is_refused_and_harms_nobody(tls_server: StartTls, pki: Pki) -> None:
    srv = tls_server()
    with srv.tls("alice") as alice, srv.plain("bob") as bob:
        proc = subprocess.Popen(
            [
                OPENSSL or "openssl",
                "s_client",
                "-tls1_2",
                "-connect",
                f"127.0.0.1:{srv.tls_port}",
                "-CAfile",
                pki.ca,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"mallory\n")
            proc.stdin.flush()
            bob.expect("mallory joined lobby")
            proc.stdin.write(b"R\n")  # s_client: renegotiate
            proc.stdin.flush()
            chatting(alice, bob, "during the renegotiation attempt")
            # Refused.  Whether s_client then gives up the session depends on what
            # it read first (the server's alert, or chat data where it wanted a
            # handshake message: then it may stay): end of input makes it leave.
            out, _ = proc.communicate(timeout=10)
            # (bob's "mallory left lobby" may already have gone by while chatting()
            # read up to its line: ask the room instead)
            wait_until(lambda: "mallory" not in who(bob), interval=0.25, what="mallory gone")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        text = out.decode("utf-8", "replace")
        assert "RENEGOTIATING" in text
        # No second handshake: the certificate was verified once (two lines, CA and
        # leaf).  The client saw the server's no_renegotiation alert (sent by the
        # writer for the reader that read the request), or chat data where it
        # wanted a handshake message.
        assert text.count("verify return:1") == 2, text
        assert "no renegotiation" in text or "unexpected record" in text, text
        chatting(bob, alice, "still fine")
        assert all(e.get("event") != "session_error" for e in srv.proc.events)


def test_tls13_key_update_requested_by_the_client(tls_server: StartTls, pki: Pki) -> None:
    """s_client's ``K`` sends a KeyUpdate asking the server to update too: the
    server's reply is made by its reader and must go out, in order, before any
    record under the new key (the writer sends both)."""
    srv = tls_server()
    with srv.plain("bob") as bob:
        proc = subprocess.Popen(
            [
                OPENSSL or "openssl",
                "s_client",
                "-tls1_3",
                "-connect",
                f"127.0.0.1:{srv.tls_port}",
                "-CAfile",
                pki.ca,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        seen = OutputReader(proc)
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"mallory\n")
            proc.stdin.flush()
            bob.expect("mallory joined lobby")
            proc.stdin.write(b"K\n")  # s_client: key update, update requested
            proc.stdin.flush()
            # s_client drops whatever else came with its command in one read: say it
            # again until it arrives (bounded).
            deadline = time.monotonic() + 10
            while True:
                proc.stdin.write(b"after the key update\n")
                proc.stdin.flush()
                try:
                    bob.expect("mallory: after the key update", timeout=0.5)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "no line after the key update"
            bob.send("and back to mallory")
            wait_until(lambda: b"bob: and back to mallory" in seen.data, what="the reply")
            proc.stdin.close()
            proc.wait(10)
            out = seen.data
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        text = out.decode("utf-8", "replace")
        assert "KEYUPDATE" in text
        # decrypted after the key update (a record out of order would end the session)
        assert "[lobby] bob: and back to mallory" in text, text
        assert all(e.get("event") != "session_error" for e in srv.proc.events)


# Each holds a reader thread in its handshake, and a descriptor here and in the
# server: a thousand where the descriptor limit allows, else as many as fit.
HALF_OPEN = min(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2 - 100)


def server_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("Threads:"))


def test_tls_sessions_hand_over_threads_without_leaks(tls_server: StartTls) -> None:
    """After its handshake a TLS session goes on in a fresh thread (docs/tls.md,
    "Costs"): every session still has one thread that blocks the process's
    signals, none is left behind, and a stop still waits for them all."""
    srv = tls_server()
    pid = srv.proc.proc.pid
    base = server_threads(pid)
    clients = [srv.tls(f"t{i}") for i in range(20)]
    with srv.plain("bob") as bob:
        wait_until(lambda: server_threads(pid) == base + 21, what="one thread per session")
        for tid, blocked in blocked_signals(pid).items():
            if tid != pid:
                assert {signal.SIGTERM, signal.SIGHUP, signal.SIGINT} <= blocked, tid
        for i, c in enumerate(clients):
            chatting(c, bob, f"from t{i}")
        for c in clients[:15]:
            c.close()
        wait_until(lambda: server_threads(pid) == base + 6, what="threads of closed sessions gone")
        srv.proc.proc.send_signal(signal.SIGTERM)
        bob.expect_eof(10)
    for c in clients[15:]:
        c.expect_eof(10)
        c.close()
    assert srv.proc.wait_exit(15) == 0


@pytest.mark.timeout(120)
def test_a_thousand_half_open_handshakes(tls_server: StartTls) -> None:
    srv = tls_server()
    # The first bytes of a TLS record header and nothing more: each one waits in its
    # handshake, in its own thread, until the handshake timeout or the close.
    half = []
    try:
        for _ in range(HALF_OPEN):
            s = socket.create_connection((srv.host, srv.tls_port), timeout=10)
            s.sendall(b"\x16\x03\x01\x02")
            half.append(s)
        t0 = time.monotonic()
        with srv.tls("alice") as alice, srv.plain("bob") as bob:
            chatting(alice, bob, f"with {HALF_OPEN} half-open handshakes around")
            assert time.monotonic() - t0 < 5
    finally:
        for s in half:
            s.close()
    with srv.tls("carol") as carol, srv.plain("dave") as dave:
        chatting(carol, dave, "after they left")


def test_slow_tls_reader_is_cut_at_send_queue_bytes(tls_server: StartTls) -> None:
    srv = tls_server(send_queue_bytes=65536)
    slow = TlsClient(srv.host, srv.tls_port)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert slow.login("slow").startswith("* hello")
    with srv.plain("bob") as bob, srv.tls("alice") as alice:
        line = "y" * 1000
        for i in range(1000):  # about a megabyte that slow never reads
            bob.send(f"{i} {line}")
            if i % 20 == 19:  # the readers keep up
                alice.expect(f"bob: {i} y")
                bob.expect(f"bob: {i} y")
        event = srv.proc.wait_event("client_disconnected")
        while event.get("name") != "slow":
            event = srv.proc.wait_event("client_disconnected")
        assert event["reason"] == "send_queue_exceeded"
        chatting(alice, bob, "after the cut")
        assert any("slow left lobby" in seen for seen in bob.seen)
    slow.close()


def test_abrupt_disconnect_mid_record(tls_server: StartTls) -> None:
    srv = tls_server()
    with srv.tls("alice") as alice, srv.plain("bob") as bob:
        # A client that logs in through an in-memory TLS session, then sends half
        # a record and resets the connection.
        sock = socket.create_connection((srv.host, srv.tls_port), timeout=10)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_context().wrap_bio(inc, out, server_hostname="localhost")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                inc.write(sock.recv(65536))
        sock.sendall(out.read())
        obj.write(b"eve\n")
        sock.sendall(out.read())
        bob.expect("eve joined lobby")
        obj.write(b"this line never arrives whole\n")
        record = out.read()
        sock.sendall(record[: len(record) // 2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        abort(sock)
        bob.expect("eve left lobby")
        chatting(alice, bob, "after the reset")
        assert not any("never arrives" in line for line in bob.seen)


# --- an external scanner ---------------------------------------------------------------------

WEAK = re.compile(r"\b(NULL|EXP|EXPORT|RC4|DES|3DES|ADH|AECDH|anon|MD5)\b", re.I)


@pytest.mark.timeout(180)
def test_sslscan_finds_no_old_protocol_or_weak_cipher(tls_server: StartTls, pki: Pki) -> None:
    sslscan = shutil.which("sslscan")
    if sslscan is None:
        pytest.skip("sslscan is not installed (Debian package sslscan; .ci/run installs it)")
    srv = tls_server(handshake_timeout=5.0)
    result = subprocess.run(
        [sslscan, "--no-colour", "--no-heartbleed", f"127.0.0.1:{srv.tls_port}"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    for old in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
        assert re.search(rf"^{re.escape(old)}\s+disabled", out, re.M), out
    for new in ("TLSv1.2", "TLSv1.3"):
        assert re.search(rf"^{re.escape(new)}\s+enabled", out, re.M), out
    ciphers = [line for line in out.splitlines() if line.startswith(("Preferred", "Accepted"))]
    assert ciphers, out
    for line in ciphers:
        assert not WEAK.search(line), line
        assert "TLSv1.2" in line or "TLSv1.3" in line, line
    assert re.search(r"Compression disabled|does not support compression", out), out
    assert "renegotiation" in out.lower()
    assert not re.search(r"^Insecure session renegotiation supported", out, re.M), out
    assert "Subject:  localhost" in out
    assert der_fingerprint(ssl.PEM_cert_to_DER_cert(Path(pki.path("server.pem")).read_text()))
    with srv.tls("alice") as alice, srv.plain("bob") as bob:  # the scan harmed nobody
        chatting(alice, bob, "after the scan")
