"""Cluster mode against a real redis-server and real chatsvc nodes (subprocesses).

Failures are injected through documented interfaces only: signals to a node or
to redis-server, and restarting redis-server with or without its data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.cluster.conftest import RedisServer, until
from tests.e2e.helpers import RawClient, ServerProcess, logged_in

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster


def chat_lines(c: RawClient) -> list[str]:
    return [line for line in c.seen if line.startswith("[lobby] ")]


def read_chat(c: RawClient, n: int, timeout: float = 10.0) -> list[str]:
    """Read until ``c`` has seen ``n`` chat lines; returns them."""
    deadline = time.monotonic() + timeout
    while len(chat_lines(c)) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{len(chat_lines(c))} of {n} chat lines; saw {c.seen[-10:]}"
        assert c.read_line(timeout=remaining) is not None, "EOF"
    return chat_lines(c)


def test_embedded_mode_never_imports_redis() -> None:
    code = (
        "import sys; from chatsvc import config; from chatsvc.server import ChatServer; "
        "s = ChatServer(config.with_overrides(config.Config(), server={'port': 0})); "
        "s.listener.close(); print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_lines_from_two_nodes_reach_everyone_in_one_order(node: Node) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    carol = logged_in(b.host, b.port, "carol")
    alice.expect("* bob joined lobby")
    for i in range(30):
        (alice if i % 2 else bob).send(f"line {i}")
    assert read_chat(alice, 30) == read_chat(bob, 30) == read_chat(carol, 30)
    assert sorted(chat_lines(alice)) == sorted(
        f"[lobby] {'alice' if i % 2 else 'bob'}: line {i}" for i in range(30)
    )


def test_names_are_unique_across_nodes_case_insensitively(node: Node) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    other = RawClient(b.host, b.port)
    assert other.login("ALICE") == "! name taken: ALICE"
    alice.send("bye")
    alice.expect("* goodbye")
    alice.close()
    until(lambda: other.login_again("ALICE").startswith("* hello"), what="name free again")


def test_who_rooms_and_private_messages_span_nodes(node: Node) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    bob.send("/who")
    who = bob.expect("* in lobby (2)")
    assert "alice" in who and "bob" in who
    bob.send("/rooms")
    assert bob.expect("* rooms:").startswith("* rooms: lobby (2) [here]")
    bob.send("/msg ALICE psst")
    assert alice.expect("[private]") == "[private] bob: psst"
    assert bob.expect("[private to") == "[private to alice] bob: psst"


def test_a_killed_node_is_announced_gone_and_its_names_freed_within_10_s(node: Node) -> None:
    a, b = node("a"), node("b")
    carol = logged_in(a.host, a.port, "carol")
    dave = logged_in(b.host, b.port, "dave")
    carol.expect("* dave joined lobby")
    carol.send("hello")  # after carol's join: once dave has it, so has the cluster
    dave.expect("[lobby] carol: hello")
    start = time.monotonic()
    a.proc.kill()
    dave.expect("* carol left lobby (connection lost)", timeout=10)
    assert time.monotonic() - start < 10
    with logged_in(b.host, b.port, "carol") as again:
        again.send("/who")
        assert again.expect("* in lobby (2)")


def test_lines_sent_while_redis_pauses_briefly_are_delivered_in_order(
    node: Node, redis_server: RedisServer
) -> None:
    a, b = node("a", unavailable_after=10.0), node("b", unavailable_after=10.0)
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    redis_server.signal(signal.SIGSTOP)
    try:
        for i in range(5):
            alice.send(f"during {i}")
    finally:
        redis_server.signal(signal.SIGCONT)
    assert read_chat(bob, 5) == [f"[lobby] alice: during {i}" for i in range(5)]
    assert read_chat(alice, 5) == chat_lines(bob)


def test_redis_away_past_unavailable_after_tells_senders_and_refuses_logins(
    node: Node, redis_server: RedisServer
) -> None:
    a = node("a", unavailable_after=0.5)
    alice = logged_in(a.host, a.port, "alice")
    redis_server.signal(signal.SIGSTOP)
    try:
        alice.send("into the void")
        assert alice.expect("! cluster", timeout=10) == "! cluster unavailable"
        late = RawClient(a.host, a.port)
        assert late.login("late") == "! cluster unavailable"
        late.close()
    finally:
        redis_server.signal(signal.SIGCONT)

    # Service resumes by itself.
    def says_hello() -> bool:
        alice.send("again")
        try:
            alice.expect("[lobby] alice: again", timeout=1)
            return True
        except AssertionError:
            return False

    until(says_hello, what="service resumes", timeout=15)


def test_redis_restarted_empty_is_an_epoch_change_members_are_told(
    node: Node, redis_server: RedisServer
) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    redis_server.kill()
    redis_server.start(keep_data=False)
    alice.expect("store was reset", timeout=15)
    bob.expect("store was reset", timeout=15)
    # Names were claimed again: nobody can take alice's.
    until(lambda: redis_server.client().hexists("chatsvc:names", "alice"), what="re-claim")
    other = RawClient(b.host, b.port)
    assert other.login("alice") == "! name taken: alice"
    alice.send("after")
    bob.expect("[lobby] alice: after", timeout=10)


def test_redis_restarted_with_its_data_resumes_without_loss(
    node: Node, redis_server: RedisServer
) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    alice.send("before")
    bob.expect("[lobby] alice: before")
    redis_server.kill()
    redis_server.start(keep_data=True)
    start = time.monotonic()

    def delivered() -> bool:
        alice.send("after")
        try:
            bob.expect("[lobby] alice: after", timeout=0.5)
            return True
        except AssertionError:
            return False

    until(delivered, what="delivery resumes", timeout=10)
    assert time.monotonic() - start < 5
    assert not any("reset" in line or "missed" in line for line in bob.seen)


def test_a_paused_node_fences_itself_and_rejoins(node: Node) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        bob.expect("* alice left lobby (connection lost)", timeout=10)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert "lost contact with the cluster" in alice.expect("! this server", timeout=10)
    alice.expect_eof()
    # The node serves again under a new incarnation.
    with logged_in(a.host, a.port, "alice") as again:
        again.send("back")
        bob.expect("[lobby] alice: back", timeout=10)


def admin(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatsvc.admin_cli", "--socket", sock, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_admin_views_span_nodes_and_kick_reaches_another_node(node: Node, short_tmp: Path) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    sock_a = str(short_tmp / "a.sock")

    users = json.loads(admin(sock_a, "--json", "users").stdout)["users"]
    assert {(u["name"], u.get("node")) for u in users} == {("alice", "a"), ("bob", "b")}
    table = admin(sock_a, "users").stdout
    assert "NODE" in table.splitlines()[0]
    rooms = json.loads(admin(sock_a, "--json", "rooms").stdout)["rooms"]
    assert sorted(next(r for r in rooms if r["name"] == "lobby")["users"]) == ["alice", "bob"]
    nodes = json.loads(admin(sock_a, "--json", "nodes").stdout)["nodes"]
    assert sorted((n["id"], n["members"]) for n in nodes) == [("a", 1), ("b", 1)]
    assert all(n["lease_left"] and n["lease_left"] > 0 for n in nodes)

    # kick bob (on b) from a's admin socket, with a name ban that holds everywhere
    done = admin(sock_a, "kick", "bob", "--reason", "spam", "--ban", "60")
    assert done.returncode == 0, done.stderr
    assert bob.expect("* you were kicked") == "* you were kicked: spam"
    alice.expect("* bob was kicked (spam)")
    again = RawClient(a.host, a.port)
    assert again.login("BOB").startswith("! the name BOB is banned")


def test_embedded_nodes_command_says_not_in_cluster_mode(
    chatsvc_proc: Callable[..., ServerProcess], short_tmp: Path
) -> None:
    chatsvc_proc()
    out = admin(str(short_tmp / "admin.sock"), "nodes")
    assert out.returncode == 0 and "not in cluster mode" in out.stdout


def test_a_password_comes_from_a_file_and_never_reaches_the_log(
    tmp_path: Path, short_tmp: Path
) -> None:
    from tests.cluster.conftest import _redis_missing
    from tests.e2e.conftest import TEST_DEFAULTS, _sections
    from tests.e2e.helpers import write_config

    if _redis_missing():
        pytest.skip(str(_redis_missing()))
    secret = "s3cret-" + os.urandom(4).hex()
    redis_dir = short_tmp / "r"
    redis_dir.mkdir()
    server = RedisServer(redis_dir, password=secret)
    server.start()
    pw = tmp_path / "redis.pass"
    pw.write_text(secret + "\n")
    pw.chmod(0o600)
    settings = {**TEST_DEFAULTS, "level": "info", "socket": str(short_tmp / "p.sock")}
    settings.update(backend=server.url, password_file=str(pw), node_id="p")
    proc = ServerProcess(["--config", str(write_config(tmp_path / "p.toml", _sections(settings)))])
    try:
        proc.wait_started()
        with logged_in(proc.host, proc.port, "alice") as alice:
            alice.send("hi")
            alice.expect("[lobby] alice: hi")
        bad = ServerProcess(
            [
                "--config",
                str(
                    write_config(
                        tmp_path / "q.toml",
                        _sections(
                            {
                                **settings,
                                "password_file": "",
                                "node_id": "q",
                                "socket": str(short_tmp / "q.sock"),
                            }
                        ),
                    )
                ),
            ]
        )
        assert bad.wait_exit() != 0
        assert any("cluster backend" in line for line in bad.raw_lines), bad.raw_lines[-3:]
        bad.kill()
    finally:
        proc.kill()
        server.kill()
    assert all(secret not in line for line in proc.raw_lines)


def test_irc_members_share_the_cluster_order_names_and_renames(node: Node) -> None:
    from tests.e2e.test_irc import IrcClient

    a = node("a", **{"irc.enabled": True, "irc.port": 0})
    b = node("b")
    started = next(e for e in a.events if e.get("event") == "server_started")
    irc_port = int(started["irc_port"])
    irc = IrcClient(a.host, irc_port)
    irc.register("ircy", caps=("echo-message",))
    irc.send("JOIN #lobby")
    irc.expect(" 366 ")
    bob = logged_in(b.host, b.port, "bob")
    irc.expect("JOIN")  # bob's join, from the other node
    # the nick is taken across nodes and protocols
    assert RawClient(b.host, b.port).login("IRCY") == "! name taken: IRCY"
    irc.send("PRIVMSG #lobby :hello from irc")
    bob.send("hello from line")
    line_order = [x.split(": ", 1)[1] for x in read_chat(bob, 2)]
    irc_order = [irc.expect("PRIVMSG #lobby :hello").split(" :", 1)[1] for _ in range(2)]
    assert line_order == irc_order  # one order for both protocols, across nodes
    assert sorted(line_order) == ["hello from irc", "hello from line"]
    irc.send("NICK ircz")
    bob.expect("ircy")  # the rename, as the line protocol shows it
    bob.send("/who")
    who = bob.expect("* in lobby (2)")
    assert "ircz" in who and "ircy" not in who
    with logged_in(b.host, b.port, "ircy") as again:  # the old name is free again
        again.send("/who")
        again.expect("* in lobby (3)")


def test_irc_monitor_sees_other_nodes_users_come_and_go(node: Node) -> None:
    from tests.e2e.test_irc import IrcClient

    a = node("a", **{"irc.enabled": True, "irc.port": 0})
    b = node("b")
    started = next(e for e in a.events if e.get("event") == "server_started")
    with IrcClient(a.host, int(started["irc_port"])) as watcher:
        watcher.register("watcher")
        watcher.send("MONITOR + bob")
        assert watcher.expect(" 731 ") == ":chatsvc 731 watcher :bob"
        with logged_in(b.host, b.port, "bob") as bob:
            assert watcher.expect(" 730 ", timeout=10) == ":chatsvc 730 * :bob!bob@chatsvc"
            bob.send("/join work")  # a move is no departure
            bob.expect("now in work")
            watcher.send("MONITOR S")
            assert watcher.expect(re.compile(" 73[01] ")) == ":chatsvc 730 watcher :bob!bob@chatsvc"
        assert watcher.expect(" 731 ", timeout=10) == ":chatsvc 731 * :bob"
