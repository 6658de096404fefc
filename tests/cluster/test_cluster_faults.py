"""Network faults between a node and Redis, through a TCP proxy (bench/nemesis.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Callable

import pytest

from bench.nemesis import FaultProxy
from tests.cluster.conftest import RedisServer
from tests.e2e.helpers import RawClient, ServerProcess, logged_in

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    p = FaultProxy(("127.0.0.1", redis_server.port))
    yield p
    p.close()


def story(node: ServerProcess) -> list[str]:
    """The node's cluster events so far, for a failure message."""
    list(node.iter_events(0.5))
    return [
        f"{e.get('timestamp', '')[11:23]} {e['event']} {e.get('node') or e.get('error') or ''}"
        for e in node.events
        if str(e.get("event", "")).startswith(("cluster_", "client_"))
    ]


def chat(c: RawClient, n: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len([x for x in c.seen if x.startswith("[lobby] ")]) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, c.seen[-10:]
        assert c.read_line(timeout=remaining) is not None, "EOF"
    return [x for x in c.seen if x.startswith("[lobby] ")]


def test_cut_connections_to_redis_lose_and_duplicate_nothing(node: Node, proxy: FaultProxy) -> None:
    a = node("a", backend=f"redis://127.0.0.1:{proxy.port}/0", unavailable_after=10.0)
    b = node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    for i in range(20):
        alice.send(f"line {i}")
        if i in (5, 12):
            proxy.cut()
    assert chat(bob, 20) == [f"[lobby] alice: line {i}" for i in range(20)]
    assert chat(alice, 20) == chat(bob, 20)


def test_a_partitioned_node_is_reaped_then_fences_itself_when_it_returns(
    node: Node, proxy: FaultProxy
) -> None:
    a = node("a", backend=f"redis://127.0.0.1:{proxy.port}/0", unavailable_after=1.0)
    b = node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    alice.send("hello")  # after alice's join: once bob has it, so has the cluster
    bob.expect("[lobby] alice: hello")
    proxy.pause()
    try:
        alice.send("anyone there?")
        assert alice.expect("! cluster", timeout=15) == "! cluster unavailable"
        try:
            bob.expect("* alice left lobby (connection lost)", timeout=10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; node a: {story(a)}; node b: {story(b)}") from None
        # the name is free on the rest of the cluster meanwhile
        with logged_in(b.host, b.port, "alice") as twin:
            twin.send("bye")
            twin.expect("* goodbye")
    finally:
        proxy.resume()
    assert "lost contact with the cluster" in alice.expect("! this server", timeout=15)
    alice.expect_eof()
    with logged_in(a.host, a.port, "alice") as again:
        again.send("back")
        bob.expect("[lobby] alice: back", timeout=10)
