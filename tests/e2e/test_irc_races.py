"""Name races across both protocols: exactly one client gets a contested name.

Line-protocol logins, IRC registrations and IRC renames all claim names in
the hub's one name map under its one lock; these tests release many claims
for one name at the same instant (a barrier) and check that exactly one wins,
that every loser gets its protocol's refusal, and that the name is free again
once the winner leaves.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable

from tests.e2e import test_irc
from tests.e2e.helpers import RawClient, wait_until
from tests.e2e.test_irc import IrcClient, irc_client

irc_server = test_irc.irc_server  # the fixture

ROUNDS = 5
PER_PROTOCOL = 4


def race(attempts: list[Callable[[], bool]]) -> list[bool]:
    """Run the attempts at once; each returns whether it got the name."""
    barrier = threading.Barrier(len(attempts))
    results: list[Any] = [None] * len(attempts)

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = attempts[i]()
        except BaseException as exc:  # reported below, with its index
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(attempts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "an attempt never finished"
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return [bool(r) for r in results]


def line_attempt(c: RawClient, spelling: str) -> Callable[[], bool]:
    """Log in as ``spelling``: True if welcomed, False on ``! name taken``."""

    def go() -> bool:
        c.send(spelling)
        reply = c.expect(re.compile(r"^(\* hello |! )"))
        assert reply.startswith("* hello ") or reply == f"! name taken: {spelling}", reply
        return reply.startswith("* hello ")

    return go


def irc_attempt(c: IrcClient, spelling: str) -> Callable[[], bool]:
    """Register as ``spelling``: True on 001, False on 433."""

    def go() -> bool:
        c.send(f"NICK {spelling}")
        c.send("USER racer 0 * :racer")
        return " 001 " in c.expect(re.compile(r" (001|433) "))

    return go


def irc_rename(c: IrcClient, target: str) -> Callable[[], bool]:
    """A registered client's NICK: True when the rename is confirmed, False on 433."""

    def go() -> bool:
        c.send(f"NICK {target}")
        return " 433 " not in c.expect(re.compile(rf"( 433 | NICK :?{target}$)"))

    return go


def test_simultaneous_logins_of_one_name_over_both_protocols(irc_server: Any) -> None:
    h = irc_server()
    for round_no in range(ROUNDS):
        name = f"Contested{round_no}"
        lines = [RawClient(h.host, h.port) for _ in range(PER_PROTOCOL)]
        ircs = [irc_client(h) for _ in range(PER_PROTOCOL)]
        try:
            for c in lines:
                c.expect("please enter your name")

            # every spelling differs only in case: one name to the hub
            attempts = [
                line_attempt(c, name.lower() if i % 2 else name) for i, c in enumerate(lines)
            ]
            attempts += [
                irc_attempt(c, name.upper() if i % 2 else name) for i, c in enumerate(ircs)
            ]
            won = race(attempts)
            assert won.count(True) == 1, won
            assert [n for n in h.hub.names() if n == name.casefold()] == [name.casefold()]

            # the winner leaves: the name is free again, for either protocol
            winner = (lines + ircs)[won.index(True)]
            if isinstance(winner, IrcClient):
                winner.send("QUIT :bye")
            else:
                winner.send("/quit")
            gone = name.casefold()
            wait_until(lambda gone=gone: gone not in h.hub.names(), what="the name freed")
        finally:
            for c in lines + ircs:
                c.close()
        with RawClient(h.host, h.port) as again:
            assert again.login(name).startswith("* hello ")
            again.send("/quit")
    wait_until(lambda: h.hub.count() == 0, what="every racer gone")


def test_irc_renames_race_a_line_login_for_one_name(irc_server: Any) -> None:
    h = irc_server()
    for round_no in range(ROUNDS):
        target = f"Prize{round_no}"
        renamers = [irc_client(h, f"r{round_no}x{i}") for i in range(PER_PROTOCOL)]
        liners = [RawClient(h.host, h.port) for _ in range(2)]
        try:
            for c in liners:
                c.expect("please enter your name")

            won = race(
                [irc_rename(c, target) for c in renamers]
                + [line_attempt(c, target) for c in liners]
            )
            assert won.count(True) == 1, won
            assert target.casefold() in h.hub.names()
            # the losers kept their old names
            for c, ok in zip(renamers, won):
                if not ok:
                    assert c.sync() is not None
            names = set(h.hub.names())
            kept = {f"r{round_no}x{i}" for i, ok in enumerate(won[:PER_PROTOCOL]) if not ok}
            assert kept <= names
        finally:
            for c in renamers + liners:
                c.close()
        wait_until(lambda: h.hub.count() == 0, what="every racer gone")
