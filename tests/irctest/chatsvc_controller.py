"""irctest controller for chatsvc's IRC listener (see tests/irctest/run.sh, docs/irc.md).

Modelled on irctest's own controllers (``irctest/controllers/ngircd.py``): it
writes a config into the test's directory and runs ``python -m chatsvc``.
chatsvc has a fixed set of rooms, so the config lists the channels irctest's
tests join; a channel not listed here does not exist (403).

Servers left running: a few irctest test classes (``bot_mode``, ``bouncer``,
``websocket``) raise their "not supported" skip from ``setUp`` after the
server was started, and pytest then never calls ``tearDown``, which is where
irctest stops the server.  :class:`StopsLeftovers` keeps the servers it
started in a list and stops (process group, SIGTERM then SIGKILL) any still
running when the next test starts one, and the rest when the test run
exits; ``ngircd_controller.py`` applies it to irctest's own ngIRCd controller.

Accounts: for tests that run "services" the server runs with ``[auth] mode =
"registered"`` and a store in the test's directory, and :meth:`registerUser`
adds an account through the real ``chatsvc-admin account add NAME
--password-stdin`` on the server's admin socket.  chatsvc has no server
password: irctest's passworded-connection tests (``PASS`` with the password
every client must give) are run with ``mode = "required"`` and an account
``foo`` (the nick those tests use) holding that password, which is what the
password means on chatsvc: the password of the name's account.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from irctest.basecontrollers import BaseServerController, DirectoryBasedController
from irctest.runner import NotImplementedByController

# (process, config directory) of servers started and not stopped by irctest
_STARTED: list[tuple[subprocess.Popen[Any], Optional[Path]]] = []


def _stop(proc: subprocess.Popen[Any], directory: Optional[Path]) -> None:
    """Stop a server's process group (SIGTERM, then SIGKILL) and remove its directory."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # irctest starts each server in its own session
        except OSError:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def stop_leftovers() -> None:
    """Stop every server a finished test left running (tests run one at a time)."""
    while _STARTED:
        _stop(*_STARTED.pop())


atexit.register(stop_leftovers)


class StopsLeftovers(DirectoryBasedController):
    """A controller mixin: servers whose test skipped in ``setUp`` are stopped too."""

    def execute(self, command: Any, proc_name: Optional[str] = None, **kwargs: Any) -> Any:
        stop_leftovers()  # a new test started: anything still running is left over
        proc = super().execute(command, proc_name, **kwargs)
        _STARTED.append((proc, self.directory))
        return proc

    def kill_proc(self) -> None:
        proc = self.proc
        super().kill_proc()
        _STARTED[:] = [entry for entry in _STARTED if entry[0] is not proc]


ROOMS = ["chan", "test", "chan1", "chan2", "bar", "bar_two", "baz", "foo", "qux", "xyz"]
ROOMS += ["channel", "gen", "auditorium", "f", "how", "fooa", "c90076", "otherchan", "valid"]

TEMPLATE = """
[server]
host = "{host}"
port = {line_port}
max_clients_per_ip = 0
shutdown_grace = 1.0

[rooms]
names = [{rooms}]
default = "chan"

[limits]
flood_rate = 1000000.0
flood_burst = 1000000

[logging]
level = "info"
format = "json"

[admin]
socket = "{directory}/admin.sock"

[auth]
mode = "{auth_mode}"
store = "{directory}/accounts.db"
free_failures = 100

[irc]
enabled = true
port = {port}
server_name = "My.Little.Server"
network = "chatsvc"
"""


class ChatsvcController(StopsLeftovers, BaseServerController):
    software_name = "chatsvc"
    supported_sasl_mechanisms = {"PLAIN"}
    supports_sts = False

    def run(
        self,
        hostname: str,
        port: int,
        *,
        password: Optional[str],
        ssl: bool,
        run_services: bool,
        faketime: Optional[str],
        websocket_hostname: Optional[str],
        websocket_port: Optional[int],
    ) -> None:
        if ssl:
            raise NotImplementedByController("TLS")
        if websocket_hostname is not None or websocket_port is not None:
            raise NotImplementedByController("Websocket")
        assert self.proc is None
        self.port = port
        self.hostname = hostname
        self.create_config()
        assert self.directory is not None
        _, line_port = self.get_hostname_and_port()
        with self.open_file("chatsvc.toml") as fd:
            fd.write(
                TEMPLATE.format(
                    host=hostname,
                    port=port,
                    line_port=line_port,
                    rooms=", ".join(f'"{r}"' for r in ROOMS),
                    directory=self.directory,
                    auth_mode=(
                        "required"
                        if password is not None
                        else "registered"
                        if run_services
                        else "open"
                    ),
                )
            )
        config = self.directory / "chatsvc.toml"
        self.proc = self.execute([sys.executable, "-m", "chatsvc", "--config", config])
        if password is not None:
            self._add_account("foo", password)

    def wait_for_services(self) -> None:
        pass  # accounts are part of the server: nothing else to start

    def registerUser(
        self,
        case: Any,
        username: str,
        password: Optional[str] = None,
    ) -> None:
        if not case.run_services:
            raise ValueError("registerUser needs run_services (accounts are on only then)")
        assert password is not None
        self._add_account(username, password)

    def _add_account(self, name: str, password: str) -> None:
        """``chatsvc-admin account add NAME --password-stdin`` on this server's admin socket."""
        assert self.directory is not None
        sock = self.directory / "admin.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():  # the server is still starting
            self.check_is_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"no admin socket at {sock} after 30 s")
            time.sleep(0.05)
        admin = Path(sys.executable).with_name("chatsvc-admin")
        cmd = [str(admin) if admin.exists() else "chatsvc-admin", "--socket", str(sock)]
        done = subprocess.run(
            [*cmd, "account", "add", name, "--password-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise AssertionError(f"chatsvc-admin account add {name}: {done.stderr.strip()}")


def get_irctest_controller_class() -> type[ChatsvcController]:
    return ChatsvcController
