"""A small Jepsen-style history check of cluster mode under a bounded nemesis.

Clients on two nodes chat in one room while the nemesis pauses Redis and
restarts it (SIGKILL, then a restart from its AOF with ``appendfsync always``).
Every client logs every line it receives.  Afterwards, per room: every
member's sequence must be the same total order, with no duplicates, every
sender's own lines in the order it sent them, and no line lost silently (a
line nobody got must have been answered ``! cluster unavailable`` to its
sender).  The checker is bench/nemesis.py's, shared with the soak benchmark.
"""

from __future__ import annotations

import signal
import time
from typing import Callable

import pytest

from bench.nemesis import LoggingClient, check, session_of
from tests.cluster.conftest import RedisServer
from tests.e2e.helpers import ServerProcess, wait_until

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster

LINES_PER_SENDER = 60
FAULT_PACE = 0.05  # between rounds: a pause lasts ~0.5 s, Redis is down ~0.5 s


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

    verdict = check([session_of(c, ended=False) for c in clients])
    print("history:", verdict.summary(), verdict.details[:5])
    assert verdict.ok, verdict.details[:10]
    # Nothing may be missing here, excused or not: no line waited past
    # unavailable_after, and Redis kept every line it sequenced.
    assert verdict.lost == verdict.excused == 0, verdict.summary()
    assert verdict.delivered + verdict.refused == verdict.sent, verdict.summary()
