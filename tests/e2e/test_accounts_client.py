"""The console client with accounts: a real pty for the hidden password, piped stdin,
and ``--password-file`` (the reconnect memory: tests/unit/test_client_unit.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Callable

import pexpect
import pytest

from tests.e2e.conftest import ServerHandle
from tests.e2e.helpers import wait_until
from tests.e2e.test_client import ROOT, client_env, run_client

SECRET = "Quokka-Lantern-93"
MakeServer = Callable[..., ServerHandle]


@pytest.fixture
def accounts_server(make_server: MakeServer, tmp_path: Path) -> ServerHandle:
    srv = make_server(**{"auth.mode": "registered", "auth.store": str(tmp_path / "acc.db")})
    assert srv.server.auth.add("alice", SECRET)
    return srv


def spawn(server: ServerHandle, *args: str) -> tuple[pexpect.spawn, io.StringIO]:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chatsvc.client", "--host", server.host, "--port", str(server.port), *args],
        cwd=str(ROOT),
        env=client_env(),
        encoding="utf-8",
        timeout=10,
        dimensions=(24, 80),
    )
    seen = io.StringIO()
    child.logfile_read = seen  # everything the terminal showed
    return child, seen


def test_the_password_is_typed_without_echo_and_kept_out_of_history(
    accounts_server: ServerHandle,
) -> None:
    child, seen = spawn(accounts_server)
    try:
        child.expect_exact("Enter your name: ")
        child.send("alice\r")
        child.expect_exact("Password for alice: ")
        child.send("wrong\r")
        child.expect_exact("! wrong name or password")
        child.expect_exact("Enter your name: ")
        child.send("alice\r")
        child.expect_exact("Password for alice: ")
        child.send(SECRET + "\r")
        child.expect_exact("* hello alice, you are in lobby")
        child.expect_exact("lobby> ")
        child.send("\x1b[A\x1b[A\r")  # Up twice, Enter: history holds no password
        child.send("/who\r")
        child.expect_exact("* in lobby (1): alice")
        child.send("bye\r")
        child.expect_exact("* goodbye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    shown = seen.getvalue()
    assert SECRET not in shown and "wrong" not in shown.replace("! wrong name", "")
    assert child.exitstatus == 0


def test_a_password_file_in_a_terminal_is_sent_without_asking(
    accounts_server: ServerHandle, tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    child, seen = spawn(accounts_server, "--name", "alice", "--password-file", str(pw))
    try:
        child.expect_exact("* hello alice, you are in lobby")
        child.expect_exact("lobby> ")
        child.send("bye\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "Password for" not in seen.getvalue() and SECRET not in seen.getvalue()


def test_scripted_mode_password_file_or_the_line_after_the_name(
    accounts_server: ServerHandle, tmp_path: Path
) -> None:
    port = str(accounts_server.port)
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    done = run_client("--port", port, "--password-file", str(pw), stdin="alice\nhi\n")
    assert done.returncode == 0, done.stderr
    assert "[lobby] alice: hi" in done.stdout and SECRET not in done.stdout + done.stderr
    piped = run_client("--port", port, stdin=f"alice\n{SECRET}\nhello\n")
    assert piped.returncode == 0, piped.stderr
    assert "[lobby] alice: hello" in piped.stdout and SECRET not in piped.stdout
    wrong = run_client("--port", port, stdin="alice\nnope\nhello\n")
    assert wrong.returncode == 6
    assert wrong.stderr == "chatsvc-client: name rejected: wrong name or password\n"
    missing = run_client("--port", port, "--password-file", str(tmp_path / "none"), stdin="")
    assert missing.returncode == 2 and "cannot read the password file" in missing.stderr


def test_ctrl_c_at_the_password_prompt_gives_the_terminal_back_with_echo(
    accounts_server: ServerHandle,
) -> None:
    child, _ = spawn(accounts_server, "--name", "alice")
    try:
        child.expect_exact("Password for alice: ")
        assert wait_echo(child, False)  # echo off while the password is typed
        child.sendintr()
        child.expect(pexpect.EOF)
        assert wait_echo(child, True)  # and on again after Ctrl-C
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def wait_echo(child: pexpect.spawn, on: bool) -> bool:
    """Whether the pty's ECHO flag becomes ``on`` (the client sets it just after a write)."""
    return bool(wait_until(lambda: child.getecho() is on, timeout=5, what=f"echo {on}"))
