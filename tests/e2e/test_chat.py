"""End-to-end chat behaviour against the real server on a free port, over raw sockets."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from typing import Callable

import pytest

from tests.e2e.conftest import ServerHandle
from tests.e2e.helpers import RawClient, logged_in, wait_until

MakeServer = Callable[..., ServerHandle]


def test_greeting_asks_for_a_name(server: ServerHandle) -> None:
    with RawClient(server.host, server.port) as c:
        assert c.read_line() == "* welcome to chatsvc 0.1.0"
        assert c.read_line() == "* please enter your name"


def test_login_puts_client_in_lobby_and_tells_the_room(server: ServerHandle) -> None:
    with (
        logged_in(server.host, server.port, "alice") as a,
        RawClient(server.host, server.port) as b,
    ):
        assert b.login("bob") == "* hello bob, you are in lobby"
        assert a.expect("bob joined") == "* bob joined lobby"


def test_chat_echoes_to_sender_and_reaches_only_the_room(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    c = logged_in(server.host, server.port, "carol")
    c.send("/join work")
    c.expect("you are now in work")
    a.send("hello lobby")
    assert a.expect("hello lobby") == "[lobby] alice: hello lobby"
    assert b.expect("hello lobby") == "[lobby] alice: hello lobby"
    c.send("hello work")
    assert c.expect("hello work") == "[work] carol: hello work"
    # carol got her own line and nothing from the lobby
    assert not any("hello lobby" in line for line in c.seen)
    b.send("marker")
    b.expect("marker")
    assert not any("hello work" in line for line in b.seen)
    for x in (a, b, c):
        x.close()


def test_rooms_who_help_and_unknown(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    a.send("/rooms")
    assert a.expect("rooms:") == "* rooms: lobby (2) [here], work (0), support (0), team (0)"
    a.send("/who")
    assert a.expect("* in ") == "* in lobby (2): alice, bob"
    a.send("/help")
    a.expect("/join ROOM")
    a.send("/frobnicate now")
    assert a.expect("! ") == "! unknown command: /frobnicate (try /help)"
    a.send("/join")
    assert a.expect("! ") == "! usage: /join ROOM"
    a.send("/JOIN team")
    a.expect("* you are now in team")
    a.send("/rooms")
    assert a.expect("rooms:") == "* rooms: lobby (1), work (0), support (0), team (1) [here]"
    b.close()
    a.close()


def test_join_moves_between_rooms_with_notices(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    w = logged_in(server.host, server.port, "walt")
    w.send("/join work")
    w.expect("you are now in work")
    b.expect("walt left lobby")
    a.send("/join work")
    a.expect("you are now in work")
    assert b.expect("alice left") == "* alice left lobby"
    assert w.expect("alice joined") == "* alice joined work"
    a.send("/join work")
    assert a.expect("! ") == "! you are already in work"
    a.send("/join kitchen")
    assert a.expect("! ") == "! no such room: kitchen (rooms: lobby, work, support, team)"
    for x in (a, b, w):
        x.close()


def test_private_message_and_echo(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    b.send("/join work")
    b.expect("now in work")
    a.send("/msg BOB psst, over here")
    assert b.expect("[private]") == "[private] alice: psst, over here"
    assert a.expect("[private") == "[private to bob] alice: psst, over here"
    a.send("/msg nobody1 hi")
    assert a.expect("! ") == "! no such user: nobody1"
    a.close()
    b.close()


def test_slash_slash_sends_a_literal_slash(server: ServerHandle) -> None:
    with logged_in(server.host, server.port, "alice") as a:
        a.send("//shrug")
        assert a.expect("shrug") == "[lobby] alice: /shrug"


@pytest.mark.parametrize("word", ["bye", "/quit", "  BYE "])
def test_bye_says_goodbye_closes_and_tells_the_room(server: ServerHandle, word: str) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    a.send(word)
    assert a.expect("goodbye") == "* goodbye"
    assert a.expect_eof() == []
    assert b.expect("alice left") == "* alice left lobby"
    wait_until(lambda: server.hub.count() == 1, what="alice removed")
    a.close()
    b.close()


def test_duplicate_names_are_refused_case_insensitively(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    with RawClient(server.host, server.port) as b:
        assert b.login("ALICE") == "! name taken: ALICE"
        b.send("alice2")
        assert b.expect("hello") == "* hello alice2, you are in lobby"
    a.close()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad name", "invalid name"),
        ("x" * 33, "name too long"),
        ("admin", "reserved"),
        ("Server", "reserved"),
        ("caf\u00e9", "invalid name"),
    ],
)
def test_invalid_names_get_a_reason_and_another_try(
    server: ServerHandle, name: str, reason: str
) -> None:
    with RawClient(server.host, server.port) as c:
        line = c.login(name)
        assert line.startswith("! ") and reason in line
        c.send("fine_name")
        c.expect("* hello fine_name")


def test_too_many_bad_names_close_the_connection(server: ServerHandle) -> None:
    with RawClient(server.host, server.port) as c:
        c.expect("enter your name")
        for _ in range(5):
            c.send("no good")
        rest = c.expect_eof()
        assert rest[-1] == "! too many rejected names; closing"


def test_invalid_utf8_is_an_error_and_the_session_goes_on(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    a.send_raw(b"caf\xe9 \xff\xfe\n")
    assert a.expect("! ").startswith("! invalid UTF-8")
    a.send_raw(b"\x00\x01binary\x1b[2J\n")
    assert a.expect("! ").startswith("! control characters are not allowed")
    a.send("still here \u00e9\u4e2d\U0001f600")
    assert b.expect("still here") == "[lobby] alice: still here \u00e9\u4e2d\U0001f600"
    assert not any("binary" in line for line in b.seen)
    a.close()
    b.close()


def test_overlong_line_is_discarded_not_buffered(make_server: MakeServer) -> None:
    srv = make_server(max_line_bytes=256)
    a = logged_in(srv.host, srv.port, "alice")
    b = logged_in(srv.host, srv.port, "bob")
    # 1 MiB without a newline, then the end of that line and a normal one
    chunk = b"x" * 65536
    for _ in range(16):
        a.send_raw(chunk)
    a.send_raw(b"tail\nnormal line\n")
    assert a.expect("! ") == "! line too long (max 256 bytes); discarded"
    assert b.expect("normal") == "[lobby] alice: normal line"
    assert not any("tail" in line or "xxx" in line for line in b.seen)
    # exactly at the limit is fine
    a.send("y" * 256)
    assert b.expect("yyy") == "[lobby] alice: " + "y" * 256
    a.close()
    b.close()


def test_half_sent_line_then_disconnect_is_cleaned_up(server: ServerHandle) -> None:
    b = logged_in(server.host, server.port, "bob")
    a = logged_in(server.host, server.port, "alice")
    b.expect("alice joined")
    a.send_raw(b"this line never ends")
    a.close()
    assert b.expect("alice left") == "* alice left lobby (disconnected)"
    assert not any("never ends" in line for line in b.seen)
    wait_until(lambda: server.hub.count() == 1, what="alice removed")
    # the name is free again
    logged_in(server.host, server.port, "alice").close()
    b.close()


def test_abrupt_reset_leaves_no_ghost(server: ServerHandle) -> None:
    b = logged_in(server.host, server.port, "bob")
    a = logged_in(server.host, server.port, "alice")
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()  # RST
    assert b.expect("alice left").startswith("* alice left lobby")
    wait_until(lambda: server.hub.count() == 1, what="alice removed")
    assert server.hub.room_members()["lobby"] == ["bob"]
    b.close()


def test_broadcast_reaches_200_clients_in_order(server: ServerHandle) -> None:
    clients = [logged_in(server.host, server.port, f"u{i}") for i in range(200)]
    senders = clients[:4]
    per_sender = 25

    def blast(c: RawClient, idx: int) -> None:
        for n in range(per_sender):
            c.send(f"m {idx} {n}")

    threads = [threading.Thread(target=blast, args=(c, i)) for i, c in enumerate(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    expected = len(senders) * per_sender
    orders = []
    pat = re.compile(r"^\[lobby\] u(\d+): m (\d+) (\d+)$")
    for c in clients:
        got: list[str] = []
        while len(got) < expected:
            line = c.expect(pat, timeout=10)
            got.append(line)
        # each sender's own messages arrive in the order sent
        for idx in range(len(senders)):
            mine = [int(pat.match(x).group(3)) for x in got if pat.match(x).group(2) == str(idx)]  # type: ignore[union-attr]
            assert mine == list(range(per_sender))
        orders.append(got)
    # and every member sees the same interleaving
    assert all(o == orders[0] for o in orders)
    for c in clients:
        c.close()


def test_slow_consumer_never_delays_others_and_is_cut(make_server: MakeServer) -> None:
    srv = make_server(send_queue_bytes=16384)
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(5)
    slow.connect((srv.host, srv.port))
    slow.sendall(b"sloth\n")
    wait_until(lambda: "sloth" in srv.hub.room_members()["lobby"], what="sloth login")
    fast = logged_in(srv.host, srv.port, "fast")
    other = logged_in(srv.host, srv.port, "other")
    other.send("/join work")
    other.expect("now in work")
    payload = "z" * 400
    deadline = time.monotonic() + 20
    n = 0
    # keep talking until the server cuts the one that never reads
    while "sloth" in srv.hub.room_members()["lobby"]:
        assert time.monotonic() < deadline, "slow consumer was never cut"
        fast.send(f"{n} {payload}")
        fast.expect(f"fast: {n} ")  # the sender is never held up
        n += 1
    assert fast.expect("sloth left") == "* sloth left lobby (too slow)"
    # a client in another room was never affected either
    other.send("ping")
    assert other.expect("ping") == "[work] other: ping"
    # the room is told at once; the member is removed (and counted) when its
    # reader thread ends
    wait_until(lambda: srv.hub.count() == 2, what="sloth removed")
    assert srv.hub.stats()["drops"] == {"send_queue_exceeded": 1}
    slow.close()
    fast.close()
    other.close()


def test_flood_is_throttled_then_disconnected(make_server: MakeServer) -> None:
    srv = make_server(flood_rate=1.0, flood_burst=3, flood_strikes=5)
    b = logged_in(srv.host, srv.port, "bob")
    a = logged_in(srv.host, srv.port, "alice")
    a.send_raw(b"".join(f"flood {i}\n".encode() for i in range(20)))
    assert a.expect("! ").startswith("! slow down")
    assert a.expect("! flooding") == "! flooding; disconnected"
    slow_downs = [line for line in a.seen if line.startswith("! slow down")]
    assert len(slow_downs) == 5  # every dropped line is answered, up to flood_strikes
    a.expect_eof()
    assert b.expect("alice left") == "* alice left lobby (flood)"
    got = [line for line in b.seen if "flood " in line and line.startswith("[")]
    assert len(got) == 3
    b.close()
    a.close()


def test_idle_clients_are_disconnected(make_server: MakeServer) -> None:
    srv = make_server(idle_timeout=1.0)
    b = logged_in(srv.host, srv.port, "bob")
    assert b.expect("! ", timeout=5).startswith("! idle for too long")
    b.expect_eof()
    b.close()
    wait_until(lambda: srv.hub.stats()["drops"].get("idle") == 1, what="idle drop counted")


def test_nameless_connections_time_out(make_server: MakeServer) -> None:
    srv = make_server(login_timeout=1.0)
    with RawClient(srv.host, srv.port) as c:
        c.expect("enter your name")
        assert c.expect("! ", timeout=5) == "! no name given in time; closing"
        c.expect_eof()
    wait_until(lambda: srv.hub.count() == 0, what="connection removed")


def test_max_clients_refuses_with_a_clear_line(make_server: MakeServer) -> None:
    srv = make_server(max_clients=2)
    a = logged_in(srv.host, srv.port, "a1")
    b = logged_in(srv.host, srv.port, "b1")
    with RawClient(srv.host, srv.port) as c:
        assert c.read_line() == "! server full, try again later"
        assert c.read_line() is None
    a.close()
    wait_until(lambda: srv.hub.count() == 1, what="slot freed")
    logged_in(srv.host, srv.port, "c1").close()
    b.close()


def test_per_ip_limit_refuses(make_server: MakeServer) -> None:
    srv = make_server(max_clients_per_ip=1)
    a = logged_in(srv.host, srv.port, "a1")
    with RawClient(srv.host, srv.port) as c:
        assert c.read_line() == "! too many connections from your address"
    a.close()


def test_shutdown_tells_clients_after_everything_queued(server: ServerHandle) -> None:
    a = logged_in(server.host, server.port, "alice")
    b = logged_in(server.host, server.port, "bob")
    for i in range(50):
        a.send(f"before {i}")
    a.expect("alice: before 49")
    server.stop()
    lines = b.expect_eof()
    chat = [line for line in b.seen if "before" in line]
    assert chat == [f"[lobby] alice: before {i}" for i in range(50)]
    assert lines[-1] == "* server shutting down"
    a.close()
    b.close()
