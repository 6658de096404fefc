"""Redis back with lost writes: its sequence goes backwards, members are told.

With ``appendfsync everysec`` (or ``no``) Redis acknowledges a write before its
AOF has it, and a crash loses the last second.  The tests reproduce that loss
deterministically: Redis is stopped, a copy of its AOF kept, more lines are
sequenced and delivered, then Redis comes back with the older copy.  The
lines sequenced in between are gone from the store and their numbers are free
again, exactly what a crash after acknowledged but unsynced writes leaves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import pytest

from chatsvc import events
from tests.cluster.conftest import RedisServer
from tests.e2e.helpers import RawClient, ServerProcess, logged_in

Node = Callable[..., ServerProcess]

pytestmark = pytest.mark.cluster

NOTICE = "* the cluster's store lost recent lines; lines sent meanwhile may be lost"


def read_until(c: RawClient, done: Callable[[list[str]], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done(c.seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"saw {c.seen[-12:]}"
        assert c.read_line(timeout=remaining) is not None, "EOF"


def chat(c: RawClient) -> list[str]:
    return [x.split(": ", 1)[1] for x in c.seen if x.startswith("[lobby] ")]


def has(*texts: str) -> Callable[[list[str]], bool]:
    return lambda seen: all(f"[lobby] alice: {t}" in seen for t in texts)


def numbers(redis_server: RedisServer) -> dict[str, int]:
    """The stream's number of each chat line (by its text)."""
    out: dict[str, int] = {}
    for entry_id, fields in redis_server.client().xrange("chatsvc:s:lobby"):
        event = events.from_wire(json.loads(fields["d"]))
        if isinstance(event, events.Chat):
            out[event.text] = int(entry_id.split("-")[0])
    return out


def lose_writes(
    redis_server: RedisServer, alice: RawClient, bob: RawClient, copy: Path
) -> dict[str, int]:
    """Sequence ``before``, keep a copy, sequence ``lost 0..4``, restore the copy.

    Returns the numbers the lost lines had.  Redis is left stopped.
    """
    alice.send("before")
    read_until(bob, has("before"))
    redis_server.kill()
    redis_server.save_data(copy)
    redis_server.start(keep_data=True)
    lost = [f"lost {i}" for i in range(5)]
    for text in lost:
        alice.send(text)
    read_until(bob, has(*lost))
    read_until(alice, has(*lost))
    used = numbers(redis_server)
    redis_server.kill()
    redis_server.restore_data(copy)
    return {t: used[t] for t in lost}


def test_redis_back_with_an_older_copy_of_its_data_tells_members_and_reuses_no_number(
    node: Node, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = node("a"), node("b")
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    lost = lose_writes(redis_server, alice, bob, tmp_path / "older")
    redis_server.start(keep_data=True)
    for c in (alice, bob):
        read_until(c, lambda seen: NOTICE in seen)
    after = [f"after {i}" for i in range(5)]
    for text in after:
        alice.send(text)
    for c in (alice, bob):
        read_until(c, has(*after))
        assert chat(c) == ["before", *lost, *after], c.seen
        assert not any("were missed" in x or "was reset" in x for x in c.seen), c.seen
    now = numbers(redis_server)
    assert min(now[t] for t in after) > max(lost.values()), (now, lost)


def test_lines_sent_while_redis_was_away_may_take_lost_numbers_but_no_gap_is_silent(
    node: Node, redis_server: RedisServer, tmp_path: Path
) -> None:
    # More lines wait in the publisher's queue than were lost: when Redis comes
    # back they take the lost lines' numbers and more, so the sequence is not
    # below what was delivered; the nodes still see that the entries differ.
    a = node("a", unavailable_after=30.0)
    b = node("b", unavailable_after=30.0)
    alice = logged_in(a.host, a.port, "alice")
    bob = logged_in(b.host, b.port, "bob")
    alice.expect("* bob joined lobby")
    lost = lose_writes(redis_server, alice, bob, tmp_path / "older")
    waiting = [f"waiting {i}" for i in range(12)]
    for text in waiting:
        alice.send(text)
    redis_server.start(keep_data=True)
    after = [f"after {i}" for i in range(3)]
    for text in after:
        alice.send(text)
    for c in (alice, bob):
        read_until(c, lambda seen: NOTICE in seen)
        read_until(c, has(*after))
    histories = [chat(alice), chat(bob)]
    for h in histories:
        assert len(h) == len(set(h)), f"a line twice: {h}"
        assert h[: 1 + len(lost)] == ["before", *lost]
        rest = h[1 + len(lost) :]
        # what waited is delivered in order (none of it lost: the publisher
        # appended it after Redis came back), then what came after
        assert rest == [*waiting, *after], rest
    assert histories[0] == histories[1]
