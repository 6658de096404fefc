"""A small Jepsen-style history check of cluster mode under a bounded nemesis.

Clients on two nodes chat in one room while the nemesis pauses Redis and
restarts it (SIGKILL, then a restart from its AOF with ``appendfsync always``).
Every client logs every line it receives.  Afterwards, per room: every
member's sequence must be the same total order, with no duplicates, every
sender's own lines in the order it sent them, and no line lost silently (a
line nobody got must have been answered ``! cluster unavailable`` to its
sender).  The counts are printed, then asserted to be zero.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Callable

import pytest

from tests.cluster.conftest import RedisServer
from tests.e2e.helpers import ServerProcess, wait_until

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster

LINES_PER_SENDER = 60
FAULT_PACE = 0.05  # between rounds: a pause lasts ~0.5 s, Redis is down ~0.5 s


class LoggingClient:
    """A client whose reader thread logs every line it receives."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=10)
        self.lines: list[str] = []
        self._buf = b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.sock.sendall(name.encode() + b"\n")
        wait_until(lambda: any(x.startswith("* hello ") for x in self.lines), what="login")

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self._buf += data
            *done, self._buf = self._buf.split(b"\n")
            self.lines.extend(x.decode() for x in done)

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def chat(self) -> list[str]:
        return [x.split(": ", 1)[1] for x in list(self.lines) if x.startswith("[lobby] ")]

    def refusals(self) -> int:
        return sum(1 for x in list(self.lines) if x == "! cluster unavailable")

    def close(self) -> None:
        self.sock.close()


def test_history_under_redis_pauses_and_restarts(node: Node, redis_server: RedisServer) -> None:
    a = node("a", unavailable_after=8.0)
    b = node("b", unavailable_after=8.0)
    clients = [
        LoggingClient(srv.host, srv.port, f"{tag}{i}")
        for tag, srv in (("a", a), ("b", b))
        for i in range(3)
    ]
    try:
        wait_until(
            lambda: all(
                sum("joined lobby" in x for x in c.lines) >= 6 - 1 - i
                for i, c in enumerate(clients)
            ),
            timeout=10,
            what="everyone in the room",
        )
        # The nemesis: each fault is held for a set time while lines keep coming
        # (a fault's duration, not a wait for some condition).
        nemesis = {
            15: lambda: redis_server.signal(signal.SIGSTOP),
            25: lambda: redis_server.signal(signal.SIGCONT),
            35: lambda: redis_server.kill(),
            45: lambda: redis_server.start(keep_data=True),
        }
        for i in range(LINES_PER_SENDER):
            if i in nemesis:
                nemesis[i]()
            for c in clients:
                c.send(f"{c.name}:{i}")
            time.sleep(FAULT_PACE)
        sent = {c.name: [f"{c.name}:{i}" for i in range(LINES_PER_SENDER)] for c in clients}

        def settled() -> bool:
            # every sender has seen its own lines back, or been told of a refusal
            return all(
                len([x for x in c.chat() if x.startswith(c.name + ":")]) + c.refusals()
                >= LINES_PER_SENDER
                for c in clients
            )

        wait_until(settled, timeout=60, interval=0.05, what="every line delivered or refused")
        reference = max((c.chat() for c in clients), key=len)
        wait_until(
            lambda: all(len(c.chat()) >= len(reference) for c in clients),
            timeout=20,
            what="every member caught up",
        )
    finally:
        for c in clients:
            c.close()

    histories = {c.name: c.chat() for c in clients}
    order = max(histories.values(), key=len)
    duplicated = sum(len(h) - len(set(h)) for h in histories.values())
    reordered = sum(1 for h in histories.values() if h != order[: len(h)] and set(h) <= set(order))
    diverged = sum(1 for h in histories.values() if h != order)
    refused = sum(c.refusals() for c in clients)
    delivered = set(order)
    lost = sum(1 for lines in sent.values() for x in lines if x not in delivered) - refused
    fifo_broken = sum(
        1
        for h in histories.values()
        for name, lines in sent.items()
        if [x for x in h if x.startswith(name + ":")] != [x for x in lines if x in set(h)]
    )
    print(
        f"history: {len(order)} lines in one order, {refused} refused, lost={lost} "
        f"duplicated={duplicated} reordered={reordered} diverged={diverged} "
        f"fifo_broken={fifo_broken}"
    )
    assert (lost, duplicated, reordered, diverged, fifo_broken) == (0, 0, 0, 0, 0)
