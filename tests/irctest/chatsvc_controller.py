"""irctest controller for chatsvc's IRC listener (see tests/irctest/run.sh, docs/irc.md).

Modelled on irctest's own controllers (``irctest/controllers/ngircd.py``): it
writes a config into the test's directory and runs ``python -m chatsvc``.
chatsvc has a fixed set of rooms, so the config lists the channels irctest's
tests join; a channel not listed here does not exist (403).
"""

from __future__ import annotations

import sys
from typing import Optional

from irctest.basecontrollers import BaseServerController, DirectoryBasedController
from irctest.runner import NotImplementedByController

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

[irc]
enabled = true
port = {port}
server_name = "My.Little.Server"
network = "chatsvc"
"""


class ChatsvcController(BaseServerController, DirectoryBasedController):
    software_name = "chatsvc"
    supported_sasl_mechanisms: set[str] = set()
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
        if password is not None:
            raise NotImplementedByController("PASS (chatsvc has no accounts yet)")
        if ssl:
            raise NotImplementedByController("TLS")
        if websocket_hostname is not None or websocket_port is not None:
            raise NotImplementedByController("Websocket")
        if run_services:
            raise NotImplementedByController("services")
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
                )
            )
        config = self.directory / "chatsvc.toml"
        self.proc = self.execute([sys.executable, "-m", "chatsvc", "--config", config])


def get_irctest_controller_class() -> type[ChatsvcController]:
    return ChatsvcController
