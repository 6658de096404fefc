"""Accounts end to end: the real ``chatsvc``, raw sockets and the real ``chatsvc-admin``.

Each test writes its own config (``[auth]`` with a store in the test's temp
dir and small throttle delays) and starts the entry point in a subprocess.
Throttling is waited for by condition (the refusal, then its end), never by
sleeping.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.e2e.conftest import TEST_DEFAULTS, _sections
from tests.e2e.helpers import RawClient, ServerProcess, wait_until, write_config

PASSWORD = "correct horse battery"
PROMPT = re.compile(r"^(\* hello |! |\* password for )")


def admin_cli(
    sock: Path, *args: str, stdin: Optional[str] = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CHATSVC_CONFIG", "RUNTIME_DIRECTORY")}
    return subprocess.run(
        [sys.executable, "-m", "chatsvc.admin_cli", "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


class Server:
    """One ``chatsvc`` subprocess with accounts, and its admin CLI."""

    def __init__(self, proc: ServerProcess, sock: Path, store: Path) -> None:
        self.proc = proc
        self.sock = sock
        self.store = store

    def admin(self, *args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        return admin_cli(self.sock, *args, stdin=stdin)

    def add(self, name: str, password: str = PASSWORD) -> None:
        done = self.admin("account", "add", name, "--password-stdin", stdin=password + "\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"added account {name}\n"

    def client(self) -> RawClient:
        return RawClient(self.proc.host, self.proc.port)

    def stats(self) -> dict[str, Any]:
        done = self.admin("--json", "stats")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def log_text(self) -> str:
        list(self.proc.iter_events(0.3))
        return "\n".join(self.proc.raw_lines)


StartServer = Callable[..., Server]


@pytest.fixture
def start(tmp_path: Path, short_tmp: Path) -> Iterator[StartServer]:
    procs: list[ServerProcess] = []

    def run(
        mode: str = "registered", limits: Optional[dict[str, Any]] = None, **auth: Any
    ) -> Server:
        base = {**TEST_DEFAULTS, "level": "info", "socket": str(short_tmp / "a.sock")}
        sections = _sections({**base, **(limits or {})})
        store = tmp_path / "state" / "accounts.db"
        sections["auth"] = {
            "mode": mode,
            "store": "state/accounts.db",  # relative to the config file's directory
            "throttle_base": 0.3,
            "throttle_cap": 0.6,
            **auth,
        }
        path = write_config(tmp_path / "chatsvc.toml", sections)
        proc = ServerProcess(["--config", str(path)])
        procs.append(proc)
        proc.wait_started()
        return Server(proc, short_tmp / "a.sock", store)

    yield run
    for p in procs:
        p.kill()


def login(c: RawClient, name: str, password: Optional[str]) -> str:
    """Name, then the password if asked for one; the final answer."""
    c.expect("please enter your name")
    return relogin(c, name, password)


def relogin(c: RawClient, name: str, password: Optional[str]) -> str:
    c.send(name)
    reply = c.expect(PROMPT)
    if reply == f"* password for {name}:":
        assert password is not None, "asked for a password"
        c.send(password)
        reply = c.expect(re.compile(r"^(\* hello |! )"))
    return reply


def test_registered_mode_right_and_wrong_password(start: StartServer) -> None:
    srv = start("registered")
    srv.add("alice")
    with srv.client() as c:
        assert login(c, "alice", "wrong") == "! wrong name or password"
        # back at the name prompt: it was one name try
        assert relogin(c, "alice", PASSWORD) == "* hello alice, you are in lobby"
        c.send("hi")
        c.expect("[lobby] alice: hi")
    with srv.client() as c:  # a name without an account stays free, as before
        c.expect("please enter your name")
        c.send("bob")
        assert c.expect(PROMPT) == "* hello bob, you are in lobby"


def test_required_mode_unknown_name_is_asked_and_fails_the_same_way(start: StartServer) -> None:
    srv = start("required")
    srv.add("alice")
    with srv.client() as c:
        c.expect("please enter your name")
        c.send("stranger")
        assert c.expect(PROMPT) == "* password for stranger:"
        c.send("whatever")
        unknown = c.expect(re.compile(r"^(\* hello |! )"))
        assert relogin(c, "alice", "wrong") == unknown == "! wrong name or password"
        assert relogin(c, "Alice", PASSWORD) == "* hello Alice, you are in lobby"
    log = [json.loads(x) for x in srv.log_text().splitlines() if x.startswith("{")]
    reasons = [e.get("reason") for e in log if e.get("event") == "auth_failed"]
    assert reasons == ["unknown_name", "wrong_password"]


def test_open_mode_never_asks(start: StartServer) -> None:
    srv = start("open")
    srv.add("alice")  # accounts can be prepared before the mode is switched on
    with srv.client() as c:
        c.expect("please enter your name")
        c.send("alice")
        assert c.expect(PROMPT) == "* hello alice, you are in lobby"


def test_too_many_wrong_passwords_use_up_the_name_tries(start: StartServer) -> None:
    srv = start("required", free_failures=100)
    with srv.client() as c:
        c.expect("please enter your name")
        for _ in range(5):
            assert relogin(c, "ghost", "x") == "! wrong name or password"
        assert c.expect("too many rejected names")
        assert c.expect_eof() == []


def test_a_logged_in_account_cannot_log_in_twice(start: StartServer) -> None:
    srv = start("registered")
    srv.add("alice")
    with srv.client() as first, srv.client() as second:
        assert login(first, "alice", PASSWORD).startswith("* hello")
        second.expect("please enter your name")
        second.send("alice")  # taken is taken: no password asked
        assert second.expect(PROMPT) == "! name taken: alice"


def test_cli_changes_apply_at_once_and_delete_disconnects(start: StartServer) -> None:
    srv = start("registered")
    srv.add("carol")
    changed = srv.admin("account", "passwd", "carol", "--password-stdin", stdin="new pw\n")
    assert changed.returncode == 0 and changed.stdout == "changed the password of carol\n"
    with srv.client() as c:
        assert login(c, "carol", PASSWORD) == "! wrong name or password"
        assert relogin(c, "carol", "new pw").startswith("* hello carol")
        listed = srv.admin("account", "list")
        assert listed.returncode == 0 and "carol" in listed.stdout
        assert "mode: registered" in listed.stdout
        gone = srv.admin("account", "del", "carol")
        assert gone.returncode == 0, gone.stderr
        assert gone.stdout == "deleted account carol; the user was disconnected\n"
        c.expect("* you were kicked: account deleted")
        c.expect_eof()
    with srv.client() as c:  # the name is free again (registered mode)
        c.expect("please enter your name")
        c.send("carol")
        assert c.expect(PROMPT).startswith("* hello carol")


def test_cli_errors(start: StartServer) -> None:
    srv = start("registered")
    srv.add("dave")
    again = srv.admin("account", "add", "dave", "--password-stdin", stdin="x\n")
    assert again.returncode == 1
    assert again.stderr == "chatsvc-admin: account: account dave exists already [failed]\n"
    missing = srv.admin("account", "del", "zed")
    assert missing.returncode == 1 and "no account zed [not_found]" in missing.stderr
    reserved = srv.admin("account", "add", "nobody", "--password-stdin", stdin="x\n")
    assert reserved.returncode == 2 and "'nobody' is a reserved name" in reserved.stderr
    no_tty = srv.admin("account", "add", "eve")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    empty = srv.admin("account", "add", "eve", "--password-stdin", stdin="\n")
    assert empty.returncode == 2 and "password" in empty.stderr
    too_long = srv.admin("account", "add", "e" * 40, "--password-stdin", stdin="x\n")
    assert too_long.returncode == 1 and "name_max_length = 32" in too_long.stderr
    bad_name = srv.admin("account", "add", "e v e", "--password-stdin", stdin="x\n")
    assert bad_name.returncode == 2 and "NAME" in bad_name.stderr


def test_store_survives_a_restart(start: StartServer) -> None:
    srv = start("required")
    srv.add("frank")
    srv.proc.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait_exit() == 0
    assert srv.store.exists()
    again = start("required")
    with again.client() as c:
        assert login(c, "frank", PASSWORD).startswith("* hello frank")


def test_mode_change_applies_on_reload(start: StartServer, tmp_path: Path) -> None:
    srv = start("open")
    srv.add("gina")
    with srv.client() as c:
        c.expect("please enter your name")
        c.send("gina")
        assert c.expect(PROMPT).startswith("* hello gina")
        c.send("bye")
        c.expect_eof()
    path = tmp_path / "chatsvc.toml"
    path.write_text(path.read_text().replace('mode = "open"', 'mode = "registered"'))
    done = srv.admin("reload")
    assert done.returncode == 0 and "auth.mode: open -> registered" in done.stdout
    with srv.client() as c:
        c.expect("please enter your name")
        c.send("gina")
        assert c.expect(PROMPT) == "* password for gina:"


def throttled(reply: str) -> Optional[int]:
    m = re.fullmatch(r"! too many failed logins, try again in (\d+) s", reply)
    return int(m.group(1)) if m else None


def test_throttling_per_address_grows_and_ends(start: StartServer) -> None:
    # Delays long enough to observe on a loaded machine: 4 s, then 8 s.
    srv = start("required", free_failures=2, throttle_base=4, throttle_cap=16)
    srv.add("henry")
    with srv.client() as c:
        c.expect("please enter your name")
        for name in ("x1", "x2", "x3"):  # different names: the address is what counts
            assert relogin(c, name, "nope") == "! wrong name or password"
        # now blocked: even the right password is refused, without being checked
        refused = relogin(c, "henry", PASSWORD)
        assert throttled(refused) in (3, 4), refused
    stats = srv.stats()["auth"]
    assert stats["failures"] == 3 and stats["throttled_refusals"] == 1
    assert stats["throttled_addresses"] == 1

    def logs_in() -> bool:
        with srv.client() as c:
            reply = login(c, "henry", PASSWORD)
            assert reply.startswith("* hello") or throttled(reply), reply
            return reply.startswith("* hello")

    wait_until(logs_in, timeout=10, interval=0.1, what="the first delay to end")
    with srv.client() as c:  # one more failure: the next delay is twice as long
        assert login(c, "x4", "nope") == "! wrong name or password"
        refused = relogin(c, "henry", PASSWORD)
        assert throttled(refused) in (7, 8), refused
    log = srv.log_text()
    assert '"event": "auth_throttled"' in log and '"event": "auth_ok"' in log


def test_throttling_per_account_from_another_address(start: StartServer) -> None:
    srv = start("registered", free_failures=1, throttle_base=30, throttle_cap=30)
    srv.add("ivy")

    def client_from(source: str) -> RawClient:
        c = RawClient.__new__(RawClient)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((srv.proc.host, srv.proc.port))
        c.sock, c.timeout, c._buf, c.eof, c.seen = sock, 5.0, b"", False, []
        return c

    with client_from("127.0.0.2") as c:
        assert login(c, "ivy", "a") == "! wrong name or password"
        assert relogin(c, "ivy", "b") == "! wrong name or password"
    with client_from("127.0.0.3") as c:  # another address: the account is still blocked
        assert throttled(login(c, "ivy", PASSWORD)) is not None
        assert relogin(c, "jack", None).startswith("* hello jack")  # the address is not
    stats = srv.stats()["auth"]
    assert stats["throttled_accounts"] == 1
    assert stats["throttled_addresses"] == 1  # 127.0.0.2 only


def test_the_password_is_never_logged(start: StartServer) -> None:
    secret = "Zebra-Kumquat-4711"
    srv = start("registered")
    done = srv.admin("account", "add", "kim", "--password-stdin", stdin=secret + "\n")
    assert done.returncode == 0
    with srv.client() as c:
        assert login(c, "kim", secret + "x") == "! wrong name or password"
        assert relogin(c, "kim", secret).startswith("* hello kim")
        assert not any(secret in line for line in c.seen)  # never echoed
    srv.admin("account", "passwd", "kim", "--password-stdin", stdin=secret + "2\n")
    log = srv.log_text()
    assert secret not in log
    events = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    audit = [e for e in events if e.get("event") == "admin_command"]
    accounts = [e for e in audit if e["cmd"] == "account"]
    assert len(accounts) == 2 and all(e.get("target") == "kim" for e in accounts)
    assert any(e.get("event") == "account_password_changed" for e in events)
    assert any(e.get("event") == "account_added" and e.get("name") == "kim" for e in events)
    assert any(
        e.get("event") == "auth_failed" and e.get("reason") == "wrong_password" for e in events
    )


def _outward_address() -> Optional[str]:
    """A local non-loopback IPv4 address, if this host has one."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 9))  # no packet is sent for a UDP connect
        addr = str(s.getsockname()[0])
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_plain_text_password_from_another_host_is_refused(tmp_path: Path, short_tmp: Path) -> None:
    addr = _outward_address()
    if addr is None:
        pytest.skip("no non-loopback address on this host")
    sections = _sections({**TEST_DEFAULTS, "host": addr, "socket": str(short_tmp / "b.sock")})
    sections["auth"] = {"mode": "required", "store": str(tmp_path / "acc.db")}
    proc = ServerProcess(["--config", str(write_config(tmp_path / "c.toml", sections))])
    try:
        proc.wait_started()
        with RawClient(proc.host, proc.port) as c:  # from `addr`, not from loopback
            c.expect("please enter your name")
            c.send("alice")
            assert c.expect(PROMPT) == "! a password needs a TLS connection"
    finally:
        proc.kill()


def test_the_login_timeout_covers_the_password_step(start: StartServer) -> None:
    srv = start("required", limits={"login_timeout": 1})
    with srv.client() as c:
        c.expect("please enter your name")
        c.send("alice")
        assert c.expect(PROMPT) == "* password for alice:"
        c.expect("! no name given in time; closing", timeout=5)  # the reaper's tick
        c.expect_eof()


def test_stats_show_the_accounts_in_human_form(start: StartServer) -> None:
    srv = start("required")
    with srv.client() as c:
        assert login(c, "who", "x") == "! wrong name or password"
    done = srv.admin("stats")
    assert done.returncode == 0
    line = next(x for x in done.stdout.splitlines() if x.startswith("auth "))
    assert "mode required" in line and "failures 1" in line


def test_irc_cannot_take_a_name_that_needs_a_password(tmp_path: Path, short_tmp: Path) -> None:
    sections = _sections({**TEST_DEFAULTS, "socket": str(short_tmp / "i.sock")})
    sections["irc"] = {"enabled": True, "port": 0}
    sections["auth"] = {"mode": "registered", "store": str(tmp_path / "acc.db")}
    proc = ServerProcess(["--config", str(write_config(tmp_path / "i.toml", sections))])
    try:
        event = proc.wait_event("server_started", 10)
        added = admin_cli(
            short_tmp / "i.sock", "account", "add", "alice", "--password-stdin", stdin="pw\n"
        )
        assert added.returncode == 0, added.stderr
        with RawClient(str(event["host"]), int(event["irc_port"])) as c:
            c.send("NICK alice")
            c.send("USER a 0 * :A")
            assert " 464 " in c.expect(" 464 ")
            c.send("NICK free")  # a free name registers
            c.expect(" 001 free ")
            c.send("NICK alice")  # and cannot become the protected one
            assert "needs a password" in c.expect(" 432 ")
    finally:
        proc.kill()


def test_two_connections_racing_for_one_account_get_one_login(start: StartServer) -> None:
    srv = start("registered")
    srv.add("lena")
    with srv.client() as one, srv.client() as two:
        for c in (one, two):
            c.expect("please enter your name")
            c.send("lena")
            assert c.expect(PROMPT) == "* password for lena:"  # nobody holds it yet
        one.send(PASSWORD)
        two.send(PASSWORD)
        answers = sorted(c.expect(re.compile(r"^(\* hello |! )")) for c in (one, two))
    assert answers == ["! name taken: lena", "* hello lena, you are in lobby"]


def test_cli_asks_for_the_password_twice_without_echo_on_a_terminal(
    start: StartServer,
) -> None:
    import pexpect

    srv = start("registered")
    secret = "Tapir-Orchard-58"
    env = {k: v for k, v in os.environ.items() if k not in ("CHATSVC_CONFIG",)}
    argv = ["-m", "chatsvc.admin_cli", "--socket", str(srv.sock), "account", "add", "mona"]
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=20)
    child.logfile_read = shown = io.StringIO()
    try:
        child.expect_exact("New password: ")
        child.sendline(secret)
        child.expect_exact("Repeat it: ")
        child.sendline(secret)
        child.expect_exact("added account mona")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and secret not in shown.getvalue()
    mismatch = pexpect.spawn(
        sys.executable, [*argv[:-1], "nina"], env=env, encoding="utf-8", timeout=20
    )
    try:
        mismatch.expect_exact("New password: ")
        mismatch.sendline("one")
        mismatch.expect_exact("Repeat it: ")
        mismatch.sendline("two")
        mismatch.expect_exact("the passwords do not match; nothing was changed")
        mismatch.expect(pexpect.EOF)
    finally:
        mismatch.close(force=True)
    assert mismatch.exitstatus == 2
    with srv.client() as c:
        assert login(c, "mona", secret).startswith("* hello mona")
    with srv.client() as c:
        assert login(c, "nina", None).startswith("* hello nina")  # never created
