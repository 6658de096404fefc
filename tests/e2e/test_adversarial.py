"""Regression tests for the holes an adversarial run found against a live server.

Each test is named after what broke: real sockets, a real server (in-process or
the entry point in a subprocess), waits on conditions with deadlines.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from typing import Callable

from tests.e2e.conftest import ServerHandle
from tests.e2e.helpers import RawClient, ServerProcess, logged_in, wait_until

MakeServer = Callable[..., ServerHandle]


def test_who_in_a_huge_room_answers_the_asker_instead_of_cutting_it(
    make_server: MakeServer,
) -> None:
    # 150 names of 32 characters are ~5 KB of /who; the queue bound is 4 KiB.
    srv = make_server(send_queue_bytes=4096, announce_limit=0)
    names = [f"member{i:026d}" for i in range(150)]
    members = [logged_in(srv.host, srv.port, n) for n in names]
    asker = logged_in(srv.host, srv.port, "asker")
    try:
        asker.send("/who")
        first = asker.expect("* in lobby (151): ")
        listed = first.split(": ", 1)[1].split(",")
        while len([n for n in listed if n.strip()]) < 151:
            listed += asker.expect("*   ")[2:].split(",")
        assert {n.strip() for n in listed if n.strip()} == {*names, "asker"}
        asker.send("still here?")
        asker.expect("[lobby] asker: still here?")
        assert srv.hub.stats()["drops"].get("send_queue_exceeded", 0) == 0
    finally:
        for c in [*members, asker]:
            c.close()


def test_a_flood_of_blank_lines_is_cut_and_does_not_slow_the_room(
    make_server: MakeServer,
) -> None:
    srv = make_server(flood_rate=5.0, flood_burst=10, flood_strikes=50)
    alice = logged_in(srv.host, srv.port, "alice")
    bob = logged_in(srv.host, srv.port, "bob")
    blank = socket.create_connection((srv.host, srv.port), timeout=10)
    try:
        blank.sendall(b"mallory\n")
        wait_until(lambda: "mallory" in srv.hub.names(), what="mallory logged in")
        # blank and whitespace-only lines, far more than the bucket allows
        try:
            for _ in range(200):
                blank.sendall(b"\n   \n\t\n" * 500)
        except OSError:
            pass  # cut while sending: that is the point
        wait_until(lambda: "mallory" not in srv.hub.names(), what="mallory cut")
        alice.send("still fine")
        bob.expect("[lobby] alice: still fine")
        assert "* mallory left lobby (flood)" in bob.seen
        wait_until(lambda: srv.hub.stats()["drops"].get("flood") == 1, what="flood counted")
    finally:
        blank.close()
        alice.close()
        bob.close()


def test_blank_lines_before_login_pay_the_bucket_too(make_server: MakeServer) -> None:
    srv = make_server(flood_rate=5.0, flood_burst=10, flood_strikes=50)
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    try:
        try:
            for _ in range(100):
                s.sendall(b"\n" * 1000)
        except OSError:
            pass
        wait_until(
            lambda: srv.hub.stats()["drops"].get("flood") == 1, what="nameless flood disconnected"
        )
    finally:
        s.close()


def test_bidi_override_and_line_separator_are_refused(make_server: MakeServer) -> None:
    srv = make_server()
    with (
        logged_in(srv.host, srv.port, "alice") as alice,
        logged_in(srv.host, srv.port, "bob") as bob,
    ):
        alice.send("evil \u202e txt.exe")
        assert "U+202E" in alice.expect("! invisible")
        alice.send("one\u2028[lobby] bob: forged")
        assert "U+2028" in alice.expect("! invisible")
        alice.send("pad" + " " * 200 + "[lobby] bob: forged")
        got = bob.expect("[lobby] alice: pad")
        assert got == "[lobby] alice: pad [lobby] bob: forged"


def test_out_of_descriptors_backs_off_refuses_with_a_line_and_recovers(
    chatsvc_proc: Callable[..., ServerProcess],
) -> None:
    proc = chatsvc_proc()
    pid = proc.proc.pid
    open_now = len(os.listdir(f"/proc/{pid}/fd"))
    # Room for three clients; every later accept fails with EMFILE.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now + 3, open_now + 3))
    held = [RawClient(proc.host, proc.port) for _ in range(3)]
    for c in held:
        c.expect("please enter your name")
    cpu_before = _cpu_seconds(pid)
    wall_before = time.monotonic()
    extra = [RawClient(proc.host, proc.port) for _ in range(3)]
    assert extra[0].read_line() == "! server out of resources, try again later"
    event = proc.wait_event("accept_failed")
    assert event["error"] and event["count"] >= 1
    for c in extra + held:
        c.close()
    # Recovers by itself once descriptors are free again.
    with logged_in(proc.host, proc.port, "alice") as alice:
        alice.send("back")
        alice.expect("[lobby] alice: back")
    # It did not spin meanwhile: well under one core busy.
    busy = _cpu_seconds(pid) - cpu_before
    assert busy < 0.8 * (time.monotonic() - wall_before) + 0.2
    failures = [e for e in proc.events if e.get("event") == "accept_failed"]
    assert len(failures) <= 3


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
