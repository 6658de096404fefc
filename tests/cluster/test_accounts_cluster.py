"""Accounts in cluster mode: one store in Redis, shared by every node at once.

Real redis-server, real chatsvc nodes, the real ``chatsvc-admin`` on one node's
socket and raw sockets on the other's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.cluster.conftest import RedisServer
from tests.e2e.helpers import RawClient, ServerProcess
from tests.e2e.test_accounts_e2e import PASSWORD, login, relogin
from tests.e2e.test_irc import IrcClient
from tests.e2e.test_irc_sasl import answer, finish, plain, sasl_begin

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster


def admin(sock: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CHATSVC_CONFIG", "RUNTIME_DIRECTORY")}
    return subprocess.run(
        [sys.executable, "-m", "chatsvc.admin_cli", "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        input=stdin,
    )


def test_an_account_added_on_one_node_works_on_the_other_at_once(
    node: Node, redis_server: RedisServer, short_tmp: Path
) -> None:
    node("a", **{"auth.mode": "registered"})
    b = node("b", **{"auth.mode": "registered"})
    added = admin(
        short_tmp / "a.sock", "account", "add", "alice", "--password-stdin", stdin=PASSWORD
    )
    assert added.returncode == 0, added.stderr
    stored = redis_server.client().hgetall("chatsvc:accounts")
    assert list(stored) == ["alice"]
    assert PASSWORD not in stored["alice"] and json.loads(stored["alice"])["name"] == "alice"
    with RawClient(b.host, b.port) as c:
        assert login(c, "alice", "nope") == "! wrong name or password"
        assert relogin(c, "alice", PASSWORD) == "* hello alice, you are in lobby"
        listed = admin(short_tmp / "b.sock", "account", "list")
        assert "alice" in listed.stdout
        # deleted through node a: the user on node b is disconnected
        gone = admin(short_tmp / "a.sock", "account", "del", "alice")
        assert gone.returncode == 0, gone.stderr
        c.expect("* you were kicked: account deleted", timeout=10)
        c.expect_eof(timeout=10)
    assert redis_server.client().hlen("chatsvc:accounts") == 0


def test_one_account_cannot_be_logged_in_on_two_nodes(node: Node, short_tmp: Path) -> None:
    a = node("a", **{"auth.mode": "required"})
    b = node("b", **{"auth.mode": "required"})
    added = admin(short_tmp / "b.sock", "account", "add", "bob", "--password-stdin", stdin="pw\n")
    assert added.returncode == 0, added.stderr
    with RawClient(a.host, a.port) as first, RawClient(b.host, b.port) as second:
        assert login(first, "bob", "pw").startswith("* hello bob")
        # whether b already knows (no password asked) or finds out at the claim
        assert login(second, "bob", "pw") == "! name taken: bob"


def test_an_irc_sasl_login_on_one_node_holds_the_account_on_the_other(
    node: Node, short_tmp: Path
) -> None:
    a = node("a", **{"auth.mode": "registered"})
    b = node("b", **{"auth.mode": "registered", "irc.enabled": True, "irc.port": 0})
    added = admin(
        short_tmp / "a.sock", "account", "add", "carol", "--password-stdin", stdin=PASSWORD
    )
    assert added.returncode == 0, added.stderr
    started = next(e for e in b.events if e.get("event") == "server_started")
    with IrcClient(b.host, int(started["irc_port"])) as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "carol", PASSWORD))
        assert " 900 " in answer(c)
        assert " 903 " in answer(c)
        assert " 001 carol " in finish(c, "carol")
        with RawClient(a.host, a.port) as line:
            assert login(line, "carol", PASSWORD) == "! name taken: carol"
