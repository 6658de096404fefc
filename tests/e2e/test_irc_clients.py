"""Real IRC clients (WeeChat, irssi) against the real ``chatsvc``, beside the console client.

The server is the ``chatsvc`` entry point in a subprocess with ``[irc] enabled``
on port 0. WeeChat runs headless (``weechat-headless``) in a home directory of
its own, driven through its FIFO pipe; its logger writes every buffer to a file
at once (``logger.file.flush_delay 0``), and those lines are what the tests
assert. The console client (``chatsvc-client``) runs in a real pty. irssi, where
installed, runs in a pty too, typed at like a user, its autolog the record.
Every wait polls with a deadline; the clients are killed in teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pexpect
import pytest

from tests.e2e.conftest import TEST_DEFAULTS, _sections
from tests.e2e.helpers import ServerProcess, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
WEECHAT = shutil.which("weechat-headless")
IRSSI = shutil.which("irssi")
TIMEOUT = 10.0
SERVER = "cs"  # WeeChat's name for the chatsvc server: buffers are irc.cs.*

pytestmark = pytest.mark.timeout(60)
needs_weechat = pytest.mark.skipif(
    WEECHAT is None, reason="weechat-headless is not installed (apt-get install weechat-headless)"
)
needs_irssi = pytest.mark.skipif(
    IRSSI is None, reason="irssi is not installed (apt-get install irssi)"
)


class IrcServer:
    """The real entry point with its IRC listener; line and IRC ports from its log."""

    def __init__(self, proc: ServerProcess, started: dict[str, Any], admin: Path) -> None:
        self.proc = proc
        self.admin = admin  # the admin socket
        self.host = str(started["host"])
        self.port = int(started["port"])
        self.irc_port = int(started["irc_port"])


@pytest.fixture
def irc_server(
    request: pytest.FixtureRequest, tmp_path: Path, short_tmp: Path
) -> Iterator[IrcServer]:
    sections = _sections({**TEST_DEFAULTS, "level": "info", "socket": str(short_tmp / "a.sock")})
    sections["irc"] = {"enabled": True, "port": 0}
    auth = getattr(request, "param", None)  # parametrized indirectly: an [auth] section
    if auth is not None:
        sections["auth"] = {"store": str(tmp_path / "accounts.db"), **auth}
    path = write_config(tmp_path / "chatsvc.toml", sections)
    proc = ServerProcess(["--config", str(path)])
    try:
        yield IrcServer(proc, proc.wait_event("server_started", 10.0), short_tmp / "a.sock")
    finally:
        proc.kill()


class WeeChat:
    """``weechat-headless`` connected to the server as ``nick``, logging every buffer."""

    def __init__(
        self, home: Path, server: IrcServer, nick: str, settings: tuple[str, ...] = ()
    ) -> None:
        assert WEECHAT is not None
        self.home = home
        self.nick = nick
        home.mkdir()
        commands = ";".join(
            [
                "/set logger.file.flush_delay 0",
                "/set logger.file.time_format %H:%M:%S",
                f"/server add {SERVER} {server.host}/{server.irc_port} -notls -nicks={nick}"
                f" -username={nick} -realname=WeeChat",
                *(f"/set irc.server.{SERVER}.{setting}" for setting in settings),
                f"/connect {SERVER}",
            ]
        )
        self.proc = subprocess.Popen(
            [WEECHAT, "--dir", str(home), "-P", "irc,logger,fifo", "-r", commands],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.fifo = home / f"weechat_fifo_{self.proc.pid}"

    def command(self, buffer: str, text: str) -> None:
        """Text or a /command typed into a buffer (``irc.server.cs``, ``irc.cs.#lobby``)."""
        wait_until(self.fifo.exists, TIMEOUT, what="WeeChat's FIFO")
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # WeeChat holds the read end
        try:
            os.write(fd, f"{buffer} *{text}\n".encode())
        finally:
            os.close(fd)

    def log(self, buffer: str) -> list[str]:
        """The logged lines of a buffer (``#lobby``, a nick, ``server``): prefix TAB text."""
        name = f"irc.server.{SERVER}" if buffer == "server" else f"irc.{SERVER}.{buffer.lower()}"
        try:
            text = (self.home / "logs" / f"{name}.weechatlog").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line.split("\t", 1)[1] for line in text.splitlines() if "\t" in line]

    def wait_log(self, buffer: str, line: str) -> None:
        """Wait until ``line`` (exactly: prefix TAB text) is logged in ``buffer``."""
        try:
            wait_until(lambda: line in self.log(buffer), TIMEOUT, what=repr(line))
        except AssertionError:
            raise AssertionError(f"{line!r} not in {buffer}: {self.log(buffer)[-15:]!r}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture
def weechat(tmp_path: Path) -> Iterator[Callable[..., WeeChat]]:
    made: list[WeeChat] = []

    def start(server: IrcServer, nick: str, settings: tuple[str, ...] = ()) -> WeeChat:
        client = WeeChat(tmp_path / f"weechat-{nick}", server, nick, settings)
        made.append(client)
        return client

    yield start
    for client in made:
        client.stop()


IRSSI_CONFIG = """\
settings = {{
  core = {{ real_name = "Irssi"; user_name = "{nick}"; nick = "{nick}"; }};
  "fe-common/core" = {{
    autolog = "yes";
    autolog_path = "{logs}/$0.log";
    autolog_level = "all";
  }};
}};
"""


class Irssi:
    """irssi in a real pty, typed at; its autolog (one file per window) is the record."""

    def __init__(self, home: Path, server: IrcServer, nick: str) -> None:
        assert IRSSI is not None
        home.mkdir()
        self.logs = home / "logs"
        (home / "config").write_text(IRSSI_CONFIG.format(nick=nick, logs=self.logs))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update({"TERM": "xterm", "LANG": "C.UTF-8"})
        argv = ["--home", str(home), "-c", server.host, "-p", str(server.irc_port), "-n", nick]
        self.child = pexpect.spawn(
            IRSSI, argv, env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200)
        )

    def line(self, text: str) -> None:
        self.child.send(text + "\r")

    def drain(self) -> None:
        """Read what irssi drew, so that it never blocks on a full pty."""
        try:
            while self.child.read_nonblocking(65536, timeout=0):
                pass
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass

    def log(self, target: str) -> list[str]:
        """The autologged lines of ``target``'s window, without the HH:MM stamp."""
        try:
            text = (self.logs / f"{target}.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [ln.split(" ", 1)[1] for ln in text.splitlines() if ln[:1].isdigit() and " " in ln]

    def wait_log(self, target: str, line: str) -> None:
        def logged() -> bool:
            self.drain()
            return line in self.log(target)

        try:
            wait_until(logged, TIMEOUT, what=repr(line))
        except AssertionError:
            raise AssertionError(f"{line!r} not in {target}: {self.log(target)[-15:]!r}") from None

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def irssi(tmp_path: Path) -> Iterator[Callable[[IrcServer, str], Irssi]]:
    made: list[Irssi] = []

    def start(server: IrcServer, nick: str) -> Irssi:
        client = Irssi(tmp_path / f"irssi-{nick}", server, nick)
        made.append(client)
        return client

    yield start
    for client in made:
        client.close()


class Console:
    """``chatsvc-client`` in a real pty; ``expect`` takes literal text."""

    def __init__(self, server: IrcServer, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update({"TERM": "xterm", "NO_COLOR": "1", "LANG": "C.UTF-8"})
        args = ["-m", "chatsvc.client", "--host", server.host, "--port", str(server.port)]
        self.child = pexpect.spawn(
            sys.executable,
            [*args, "--name", name],
            cwd=str(ROOT),
            env=env,
            encoding="utf-8",
            timeout=TIMEOUT,
            dimensions=(24, 200),
        )

    def expect(self, text: str) -> None:
        self.child.expect_exact(text)

    def line(self, text: str) -> None:
        self.child.send(text + "\r")

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def console() -> Iterator[Callable[[IrcServer, str], Console]]:
    made: list[Console] = []

    def make(server: IrcServer, name: str) -> Console:
        c = Console(server, name)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def joined(server: IrcServer, weechat: Callable[[IrcServer, str], WeeChat], nick: str) -> WeeChat:
    """A WeeChat in #lobby, with the channel's NAMES reply logged."""
    wee = weechat(server, nick)
    wait_until(lambda: any("Welcome" in ln for ln in wee.log("server")), TIMEOUT, what="001")
    wee.command(f"irc.server.{SERVER}", "/join #lobby")
    wee.wait_log("#lobby", f"-->\t{nick} ({nick}@chatsvc) has joined #lobby")
    return wee


@needs_weechat
def test_weechat_and_the_console_client_chat_in_one_room(
    irc_server: IrcServer, weechat: Any, console: Any
) -> None:
    wee = joined(irc_server, weechat, "wee")
    bob = console(irc_server, "bob")
    bob.expect("hello bob")
    # the console's join reaches WeeChat as an IRC JOIN, with chatsvc's mask
    wee.wait_log("#lobby", "-->\tbob (bob@chatsvc) has joined #lobby")
    bob.line("/who")
    bob.child.expect(r"in lobby \(2\): (bob, wee|wee, bob)")
    # both ways, names and text exact
    wee.command("irc.cs.#lobby", "hello from weechat")
    bob.expect("[lobby] wee: hello from weechat")
    wee.wait_log("#lobby", "wee\thello from weechat")  # WeeChat's own line
    bob.line("hi weechat, from the console")
    wee.wait_log("#lobby", "bob\thi weechat, from the console")
    # /me both ways: a CTCP ACTION for IRC, the text "/me ..." for the line protocol
    wee.command("irc.cs.#lobby", "/me waves")
    bob.expect("[lobby] wee: /me waves")
    bob.line("//me grins")
    wee.wait_log("#lobby", " *\tbob grins")


@needs_weechat
def test_private_messages_both_ways(irc_server: IrcServer, weechat: Any, console: Any) -> None:
    wee = joined(irc_server, weechat, "wee")
    bob = console(irc_server, "bob")
    bob.expect("hello bob")
    wee.wait_log("#lobby", "-->\tbob (bob@chatsvc) has joined #lobby")
    bob.line("/msg wee psst, weechat")
    bob.expect("[private to wee] bob: psst, weechat")
    wee.wait_log("bob", "bob\tpsst, weechat")  # WeeChat opened a private buffer
    wee.command("irc.cs.bob", "psst yourself")
    bob.expect("[private] wee: psst yourself")
    wee.wait_log("bob", "wee\tpsst yourself")


@needs_weechat
def test_nick_list_join_and_part_seen_from_both_sides(
    irc_server: IrcServer, weechat: Any, console: Any
) -> None:
    bob = console(irc_server, "bob")
    bob.expect("hello bob")
    wee = joined(irc_server, weechat, "wee")
    bob.expect("wee joined lobby")
    # the nick list WeeChat got on joining (353) holds the console's user
    wee.command("irc.cs.#lobby", "/names")
    wee.wait_log("#lobby", "--\tNicks #lobby: [bob wee]")
    # the console moving rooms is a PART for WeeChat, and back a JOIN
    bob.line("/join work")
    bob.expect("you are now in work")
    wee.wait_log("#lobby", "<--\tbob (bob@chatsvc) has left #lobby")
    bob.line("/join lobby")
    bob.expect("you are now in lobby")
    wee.wait_log("#lobby", "-->\tbob (bob@chatsvc) has joined #lobby")
    # WeeChat parting (with a reason) and joining another room
    wee.command("irc.cs.#lobby", "/part off to work")
    bob.expect("wee left lobby")
    wee.command(f"irc.server.{SERVER}", "/join #work")
    wee.wait_log("#work", "-->\twee (wee@chatsvc) has joined #work")
    bob.line("/join work")
    bob.expect("you are now in work")
    wee.wait_log("#work", "-->\tbob (bob@chatsvc) has joined #work")
    wee.command("irc.cs.#work", "/quit see you")
    bob.expect("* wee left work")
    wait_until(lambda: wee.proc.poll() is not None, TIMEOUT, what="WeeChat to exit on /quit")


@needs_weechat
def test_two_weechats_and_a_console_see_each_other(
    irc_server: IrcServer, weechat: Any, console: Any
) -> None:
    ann = joined(irc_server, weechat, "ann")
    ben = joined(irc_server, weechat, "ben")
    ann.wait_log("#lobby", "-->\tben (ben@chatsvc) has joined #lobby")
    carl = console(irc_server, "carl")
    carl.expect("hello carl")
    ann.command("irc.cs.#lobby", "one")
    ben.wait_log("#lobby", "ann\tone")
    carl.expect("[lobby] ann: one")
    carl.line("two")
    ann.wait_log("#lobby", "carl\ttwo")
    ben.wait_log("#lobby", "carl\ttwo")


@needs_irssi
def test_irssi_and_the_console_client_chat_in_one_room(
    irc_server: IrcServer, irssi: Any, console: Any
) -> None:
    bob = console(irc_server, "bob")
    bob.expect("hello bob")
    ir = irssi(irc_server, "ir")
    ir.child.expect_exact("Welcome")  # 001 on its screen: registered
    ir.line("/join #lobby")
    ir.wait_log("#lobby", "-!- ir [ir@chatsvc] has joined #lobby")
    bob.expect("* ir joined lobby")
    ir.line("hello from irssi")
    bob.expect("[lobby] ir: hello from irssi")
    bob.line("hi irssi")
    ir.wait_log("#lobby", "< bob> hi irssi")
    ir.line("/me waves")
    bob.expect("[lobby] ir: /me waves")
    bob.line("//me grins")
    ir.wait_log("#lobby", " * bob grins")
    bob.line("/msg ir psst")
    ir.wait_log("bob", "<bob> psst")  # a query window of its own
    ir.line("/msg bob psst yourself")
    bob.expect("[private] ir: psst yourself")
    ir.line("/part #lobby")
    bob.expect("* ir left lobby")


@needs_weechat
@pytest.mark.parametrize("irc_server", [{"mode": "registered"}], indirect=True, ids=["accounts"])
def test_weechat_logs_in_with_sasl_plain_and_chats(
    irc_server: IrcServer, weechat: Any, console: Any
) -> None:
    """WeeChat's ``sasl_mechanism plain``: logged in before registration; the account
    name is the nick (WeeChat asked for another nick and takes the one in 001)."""
    admin = [sys.executable, "-m", "chatsvc.admin_cli", "--socket", str(irc_server.admin)]
    added = subprocess.run(
        [*admin, "account", "add", "alice", "--password-stdin"],
        input="wee-secret\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert added.returncode == 0, added.stderr
    settings = ("sasl_mechanism plain", "sasl_username alice", "sasl_password wee-secret")
    wee = weechat(irc_server, "notalice", settings)
    wait_until(
        lambda: any("SASL authentication successful" in ln for ln in wee.log("server")),
        TIMEOUT,
        what="903 in WeeChat's log",
    )
    assert any("You are now logged in as alice" in ln for ln in wee.log("server"))
    wait_until(lambda: any("Welcome" in ln for ln in wee.log("server")), TIMEOUT, what="001")
    wee.command(f"irc.server.{SERVER}", "/join #lobby")
    wee.wait_log("#lobby", "-->\talice (alice@chatsvc) has joined #lobby")
    bob = console(irc_server, "bob")
    bob.expect("hello bob")
    wee.command("irc.cs.#lobby", "hello, logged in")
    bob.expect("[lobby] alice: hello, logged in")
    bob.line("welcome alice")
    wee.wait_log("#lobby", "bob\twelcome alice")
    assert irc_server.proc.wait_event("auth_ok", TIMEOUT)["name"] == "alice"
