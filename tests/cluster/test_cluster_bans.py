"""Bans across nodes: address and name bans live in Redis and hold on every node.

Clients come from different loopback addresses (127.0.0.2, 127.0.0.3) so that
one of them can be banned while the test's other clients stay in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.cluster.conftest import RedisServer, until
from tests.e2e.helpers import RawClient, ServerProcess, logged_in

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster

BANNED = "! your address is banned from this server"


def admin(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatsvc.admin_cli", "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def from_address(srv: ServerProcess, source: str, name: str) -> RawClient:
    c = RawClient(srv.host, srv.port, source=source)
    reply = c.login(name)
    assert reply.startswith("* hello"), reply
    return c


def first_line(srv: ServerProcess, source: str) -> str:
    """What a new connection from ``source`` is told first."""
    c = RawClient(srv.host, srv.port, source=source)
    try:
        return c.read_line(timeout=10) or "EOF"
    finally:
        c.close()


def bans(sock: Path) -> list[dict[str, object]]:
    done = admin(sock, "--json", "bans")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["bans"])


def test_an_address_ban_on_one_node_closes_and_refuses_it_on_every_node(
    node: Node, short_tmp: Path
) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = from_address(b, "127.0.0.2", "bob")
    carol = from_address(b, "127.0.0.2", "carol")
    dave = logged_in(b.host, b.port, "dave")
    alice.expect("* dave joined lobby")

    done = admin(short_tmp / "a.sock", "ban", "--address", "127.0.0.2", "--for", "60")
    assert done.returncode == 0, done.stderr
    # b closes its members from that address, as a closes its own
    assert bob.expect("* you were kicked").startswith("* you were kicked")
    carol.expect("* you were kicked")
    bob.expect_eof()
    carol.expect_eof()
    alice.expect("* bob was kicked")
    dave.send("still here")
    alice.expect("[lobby] dave: still here")
    # and refuses it at accept, on both nodes
    assert first_line(b, "127.0.0.2") == BANNED
    assert first_line(a, "127.0.0.2") == BANNED

    # Every node lists it, with where it came from.
    listed = bans(short_tmp / "b.sock")
    assert [(x["kind"], x["what"], x["node"]) for x in listed] == [("address", "127.0.0.2", "a")]
    assert 50 < float(listed[0]["expires_in"]) <= 60  # type: ignore[arg-type]
    table = admin(short_tmp / "b.sock", "bans").stdout.splitlines()
    assert table[0].split() == ["KIND", "WHAT", "TIME", "LEFT", "NODE"]
    assert table[1].split()[:2] == ["address", "127.0.0.2"] and table[1].split()[-1] == "a"

    # Lifted on b: both nodes admit it again.
    done = admin(short_tmp / "b.sock", "unban", "--address", "127.0.0.2")
    assert done.returncode == 0, done.stderr
    until(lambda: "welcome" in first_line(a, "127.0.0.2"), what="a admits it again")
    from_address(a, "127.0.0.2", "bob").close()
    from_address(b, "127.0.0.2", "carol").close()
    assert bans(short_tmp / "a.sock") == []
    again = admin(short_tmp / "a.sock", "unban", "--address", "127.0.0.2")
    assert again.returncode != 0 and "no ban on address 127.0.0.2" in again.stderr


def test_an_address_ban_a_node_did_not_hear_of_is_refused_at_login(
    node: Node, redis_server: RedisServer, short_tmp: Path
) -> None:
    a = node("a")
    # A ban in the shared store that node a was never told of (it was written
    # while a could not hear, say): the claim at login checks the store itself.
    r = redis_server.client()
    r.hset("chatsvc:abans", "127.0.0.3", int(r.time()[0]) * 1000 + 60_000)
    c = RawClient(a.host, a.port, source="127.0.0.3")
    assert c.login("eve") == BANNED
    c.expect_eof()
    # a node started later knows it at accept
    b = node("b")
    assert first_line(b, "127.0.0.3") == BANNED
    logged_in(a.host, a.port, "frank").close()  # other addresses are not concerned


def test_name_bans_are_listed_and_lifted_from_any_node(node: Node, short_tmp: Path) -> None:
    a, b = node("a"), node("b")
    bob = logged_in(b.host, b.port, "bob")
    done = admin(short_tmp / "b.sock", "kick", "bob", "--ban", "120")
    assert done.returncode == 0, done.stderr
    bob.expect_eof()
    admin(short_tmp / "a.sock", "ban", "--address", "127.0.0.4", "--for", "30")
    listed = {(x["kind"], x["what"], x["node"]) for x in bans(short_tmp / "a.sock")}
    assert listed == {("name", "bob", "b"), ("address", "127.0.0.4", "a")}
    assert RawClient(a.host, a.port).login("Bob").startswith("! the name Bob is banned")

    # Lifted on a, where it was not set: b (which set it) lets the name in too.
    done = admin(short_tmp / "a.sock", "unban", "bob")
    assert done.returncode == 0, done.stderr

    def admitted() -> bool:
        c = RawClient(b.host, b.port)
        try:
            return c.login("bob").startswith("* hello")
        finally:
            c.close()

    until(admitted, what="b admits bob again")
    assert {x["what"] for x in bans(short_tmp / "b.sock")} == {"127.0.0.4"}


def test_kick_with_an_address_ban_of_another_nodes_member_bans_its_address_everywhere(
    node: Node, short_tmp: Path
) -> None:
    a, b = node("a"), node("b")
    alice = from_address(a, "127.0.0.5", "alice")
    bob = from_address(b, "127.0.0.5", "bob")
    carol = logged_in(b.host, b.port, "carol")
    alice.expect("* carol joined lobby")
    done = admin(short_tmp / "a.sock", "kick", "bob", "--ban", "60", "--ban-address")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "address banned too, by node b" in done.stdout
    bob.expect_eof()
    alice.expect("* you were kicked")  # the same address, on the other node
    alice.expect_eof()
    carol.send("still here")
    carol.expect("[lobby] carol: still here")
    until(lambda: first_line(a, "127.0.0.5") == BANNED, what="a refuses the address")
    listed = {(x["kind"], x["what"], x["node"]) for x in bans(short_tmp / "a.sock")}
    assert listed == {("name", "bob", "a"), ("address", "127.0.0.5", "b")}
