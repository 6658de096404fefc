"""The hub's logic with fake sessions: ``Member`` objects whose ``out`` list is the outbox."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chatsvc.hub
from chatsvc import config, events
from chatsvc.dialects import LINE, error_text
from chatsvc.hub import Batch, Hub, KickResult, Member

CAP = 4096


def make_hub(**overrides: dict[str, Any]) -> Hub:
    return Hub(config.with_overrides(config.Config(), **overrides))


def connect(hub: Hub, name: str | None = None, addr: str = "127.0.0.1") -> Member:
    m = Member(addr)
    assert hub.add(m) is None
    if name is not None:
        assert hub.login(m, name) is None
    return m


def lines(m: Member) -> list[str]:
    """What is queued for ``m``, one string per line (without the newline)."""
    text = b"".join(m.outbox).decode()
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def drain(hub: Hub, m: Member) -> list[str]:
    """Take the outbox as the writer would (and pretend it was all sent)."""
    with hub.lock:
        got = lines(m)
        m.queued -= sum(map(len, m.outbox))
        m.outbox.clear()
        m.scheduled = False
    return got


def fill(hub: Hub, m: Member, room_left: int) -> None:
    """Queue a reply so that only ``room_left`` bytes fit before the send cap."""
    cap = hub.cfg.limits.send_queue_bytes
    size = cap - m.queued - room_left
    hub.tell(m, events.Announcement("x" * (size - 3)))
    assert cap - m.queued == room_left


def reap(hub: Hub, now: float, idle_timeout: float, login_timeout: float) -> list[Member]:
    limits = {"idle_timeout": idle_timeout, "login_timeout": login_timeout}
    hub.apply(config.with_overrides(hub.cfg, limits=limits))
    return hub.reap(now)


def render(event: events.Event) -> bytes:
    return LINE.render(event)


def said(why: events.Error | None) -> str | None:
    """A hub refusal in the line dialect's words."""
    return None if why is None else error_text(why)


def assert_accounting(hub: Hub) -> None:
    for m in hub.members:
        assert m.queued == sum(map(len, m.outbox)), m.label


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def hub() -> Hub:
    return Hub(config.Config())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(chatsvc.hub, "time", fake)
    return fake


# --- login ----------------------------------------------------------------------


def test_hub_without_writers_gives_members_an_inert_mailbox(hub: Hub) -> None:
    alice = connect(hub, "alice")
    assert hub.mailboxes and alice.mailbox is hub.mailboxes[0]
    assert hub.mailboxes[0].to_send == [alice]
    assert list(hub.rooms) == ["lobby", "work", "support", "team"]


def test_login_greets_the_member_and_tells_the_room(hub: Hub) -> None:
    alice = connect(hub, "alice")
    assert lines(alice) == ["* hello alice, you are in lobby"]
    bob = connect(hub, "bob")
    assert lines(bob) == ["* hello bob, you are in lobby"]
    assert lines(alice) == ["* hello alice, you are in lobby", "* bob joined lobby"]
    assert bob.room == "lobby"
    assert bob.name == "bob"
    assert hub.by_name["bob"] is bob
    assert list(hub.rooms["lobby"]) == [alice, bob]


def test_login_to_another_default_room() -> None:
    hub = make_hub(rooms={"default": "support"})
    alice = connect(hub, "alice")
    assert lines(alice) == ["* hello alice, you are in support"]
    assert alice.room == "support"


def test_a_name_is_taken_case_insensitively(hub: Hub) -> None:
    connect(hub, "alice")
    other = connect(hub)
    assert said(hub.login(other, "ALICE")) == "name taken: ALICE"
    assert other.name is None
    assert other.room is None
    assert other not in hub.rooms["lobby"]
    assert hub.login(other, "alice2") is None


def test_the_case_of_a_name_is_kept(hub: Hub) -> None:
    alice = connect(hub, "Alice")
    assert alice.name == "Alice"
    assert hub.by_name["alice"] is alice


def test_a_closing_member_cannot_log_in(hub: Hub) -> None:
    m = connect(hub)
    hub.close(m, "eof")
    assert said(hub.login(m, "alice")) == "connection closing"
    assert "alice" not in hub.by_name


def test_a_ban_refuses_login_until_it_expires(hub: Hub, clock: FakeClock) -> None:
    bob = connect(hub, "bob")
    assert hub.kick("bob", "spam", ban_seconds=60).kicked
    hub.remove(bob, "eof")

    clock.now += 30
    again = connect(hub)
    why = said(hub.login(again, "BOB"))
    assert why is not None
    assert "banned" in why
    assert "30 s" in why
    assert again.name is None

    clock.now += 31
    assert hub.login(again, "Bob") is None
    assert "bob" not in hub.bans


def test_a_ban_applies_to_a_name_nobody_holds(hub: Hub, clock: FakeClock) -> None:
    assert not hub.kick("mallory", "pre-emptive", ban_seconds=10).kicked
    m = connect(hub)
    assert hub.login(m, "mallory") is not None
    clock.now += 11
    assert hub.login(m, "mallory") is None


# --- rooms ----------------------------------------------------------------------


def test_join_tells_the_old_and_the_new_room(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    dave = connect(hub, "dave")
    assert hub.join(dave, "work") is None
    for m in (alice, bob, dave):
        drain(hub, m)

    assert hub.join(alice, "work") is None
    assert lines(alice) == ["* you are now in work"]
    assert lines(bob) == ["* alice left lobby"]
    assert lines(dave) == ["* alice joined work"]
    assert alice.room == "work"
    assert alice not in hub.rooms["lobby"]
    assert alice in hub.rooms["work"]


def test_join_an_unknown_room_lists_the_rooms(hub: Hub) -> None:
    alice = connect(hub, "alice")
    drain(hub, alice)
    assert said(hub.join(alice, "kitchen")) == (
        "no such room: kitchen (rooms: lobby, work, support, team)"
    )
    assert alice.room == "lobby"
    assert lines(alice) == []


def test_room_names_are_case_sensitive(hub: Hub) -> None:
    alice = connect(hub, "alice")
    why = said(hub.join(alice, "Work"))
    assert why is not None
    assert why.startswith("no such room: Work")


def test_join_the_same_room(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, alice)
    drain(hub, bob)
    assert said(hub.join(alice, "lobby")) == "you are already in lobby"
    assert lines(alice) == []
    assert lines(bob) == []


def test_join_before_login(hub: Hub) -> None:
    m = connect(hub)
    assert said(hub.join(m, "work")) == "not in a room"
    assert m.room is None


def test_room_counts_and_who(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    carol = connect(hub, "carol")
    hub.join(carol, "support")
    assert (
        render(hub.room_list(alice))
        == b"* rooms: lobby (2) [here], work (0), support (1), team (0)\n"
    )
    assert render(hub.room_list()) == b"* rooms: lobby (2), work (0), support (1), team (0)\n"
    assert render(hub.who(bob)) == b"* in lobby (2): alice, bob\n"
    assert render(hub.who(carol)) == b"* in support (1): carol\n"
    assert hub.room_members() == {
        "lobby": ["alice", "bob"],
        "work": [],
        "support": ["carol"],
        "team": [],
    }


# --- chat -----------------------------------------------------------------------


def test_say_reaches_the_sender_and_the_room_only(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    carol = connect(hub, "carol")
    hub.join(carol, "work")
    for m in (alice, bob, carol):
        drain(hub, m)

    assert hub.say(alice, "hello") == "lobby"
    assert lines(alice) == ["[lobby] alice: hello"]
    assert lines(bob) == ["[lobby] alice: hello"]
    assert lines(carol) == []

    assert hub.say(carol, "anyone?") == "work"
    assert lines(carol) == ["[work] carol: anyone?"]
    assert lines(alice) == ["[lobby] alice: hello"]
    assert alice.msgs_sent == 1


def test_say_before_login_or_while_closing_goes_nowhere(hub: Hub) -> None:
    nameless = connect(hub)
    assert hub.say(nameless, "hi") is None
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, bob)
    hub.close(alice, "bye", events.Goodbye())
    drain(hub, bob)
    assert hub.say(alice, "still here?") is None
    assert lines(bob) == []


def test_interleaved_senders_are_seen_in_the_same_order_by_all(hub: Hub) -> None:
    members = [connect(hub, name) for name in ("alice", "bob", "carol", "dave")]
    for m in members:
        drain(hub, m)
    for i in range(20):
        sender = members[(i * 7) % len(members)]
        hub.say(sender, f"message {i}")
    seen = [lines(m) for m in members]
    assert len(seen[0]) == 20
    assert all(s == seen[0] for s in seen)
    assert [line.rsplit(" ", 1)[1] for line in seen[0]] == [str(i) for i in range(20)]


def test_private_message_and_echo(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    carol = connect(hub, "carol")
    for m in (alice, bob, carol):
        drain(hub, m)
    assert hub.private(alice, "BOB", "psst") is None
    assert lines(bob) == ["[private] alice: psst"]
    assert lines(alice) == ["[private to bob] alice: psst"]
    assert lines(carol) == []
    assert alice.msgs_sent == 1


def test_private_message_across_rooms(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    hub.join(bob, "team")
    drain(hub, bob)
    assert hub.private(alice, "bob", "over here") is None
    assert lines(bob) == ["[private] alice: over here"]


def test_private_message_to_an_unknown_user(hub: Hub) -> None:
    alice = connect(hub, "alice")
    drain(hub, alice)
    assert said(hub.private(alice, "zed", "hello?")) == "no such user: zed"
    assert lines(alice) == []
    assert hub.messages_in == 0


def test_private_message_to_a_closing_user(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    hub.close(bob, "bye")
    assert said(hub.private(alice, "bob", "wait")) == "no such user: bob"


def test_announce_to_one_room(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    carol = connect(hub, "carol")
    hub.join(carol, "work")
    for m in (alice, bob, carol):
        drain(hub, m)
    assert hub.announce(events.Announcement("maintenance at noon", "lobby"), "lobby") == 2
    assert lines(alice) == ["* maintenance at noon"]
    assert lines(bob) == ["* maintenance at noon"]
    assert lines(carol) == []


def test_announce_to_everyone_logged_in(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    hub.join(bob, "team")
    nameless = connect(hub)
    for m in (alice, bob, nameless):
        drain(hub, m)
    assert hub.announce(events.Announcement("hello all")) == 2
    assert lines(alice) == ["* hello all"]
    assert lines(bob) == ["* hello all"]
    assert lines(nameless) == []


def test_reply_goes_to_one_member(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, alice)
    drain(hub, bob)
    hub.tell(alice, events.error("no_such_user", name="one"), events.Announcement("two"))
    assert lines(alice) == ["! no such user: one", "* two"]
    assert lines(bob) == []


def test_outboxes_are_put_on_the_writers_dirty_list_once(hub: Hub) -> None:
    alice = connect(hub, "alice")
    hub.say(alice, "a")
    hub.say(alice, "b")
    assert alice.scheduled
    assert hub.mailboxes[0].to_send.count(alice) == 1


# --- kick -----------------------------------------------------------------------


def test_kick(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, alice)
    hub.say(bob, "spam spam")
    assert hub.kick("BOB", "spamming").kicked
    assert lines(bob)[-1] == "* you were kicked: spamming"
    assert lines(alice) == ["[lobby] bob: spam spam", "* bob was kicked (spamming)"]
    assert bob.close_reason == "kicked"
    assert bob.close_flush
    assert bob.room is None
    assert "bob" not in hub.by_name
    assert bob in hub.mailboxes[0].to_close
    assert hub.kicks == 1
    # The name is free again.
    assert hub.login(connect(hub), "bob") is None


def test_kick_an_unknown_user(hub: Hub) -> None:
    connect(hub, "alice")
    assert not hub.kick("zed", "why").kicked
    assert hub.kicks == 0


def test_kick_twice(hub: Hub) -> None:
    connect(hub, "bob")
    assert hub.kick("bob", "one").kicked
    assert not hub.kick("bob", "two").kicked
    assert hub.kicks == 1


# --- send queue -----------------------------------------------------------------


def write(
    hub: Hub, stuck: frozenset[Member] = frozenset()
) -> tuple[Batch, dict[Member, list[str]]]:
    """One writer step: what each member was sent; ``stuck`` members' kernels take nothing."""
    batch = hub.collect(hub.mailboxes[0])
    got: dict[Member, list[str]] = {}
    done: list[tuple[Member, int]] = []
    for m, data in batch.sends:
        if m not in stuck:
            got.setdefault(m, []).extend(data.decode().splitlines())
            done.append((m, len(data)))
    hub.sent(done)
    return batch, got


def test_a_reader_that_never_drains_is_closed_and_the_others_keep_receiving() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    slow, bob, carol = (connect(hub, name) for name in ("slow", "bob", "carol"))
    write(hub)
    text = "y" * 200
    bob_saw: list[str] = []
    sent = 0
    while slow.close_reason is None:
        assert sent < 100, "the slow reader was never closed"
        hub.say(carol, f"{sent} {text}")
        sent += 1
        assert slow.queued <= 2 * CAP
        batch, got = write(hub, stuck=frozenset({slow}))
        bob_saw += got.get(bob, [])
        if slow.close_reason is not None:  # cut: the writer held more than the bound
            assert slow.queued > CAP

    assert slow.close_reason == "send_queue_exceeded"
    assert not slow.close_flush
    assert slow.outbox == []
    assert slow.room is None
    assert "slow" not in hub.by_name
    assert (slow, False) in batch.closes
    assert bob_saw[-1] == "* slow left lobby (too slow)"
    assert [line for line in bob_saw if line.startswith("[")] == [
        f"[lobby] carol: {i} {text}" for i in range(sent)
    ]

    hub.say(carol, "after")
    assert drain(hub, bob) == ["[lobby] carol: after"]
    assert slow.outbox == []
    assert hub.remove(slow, "eof") == "send_queue_exceeded"
    assert hub.drops["send_queue_exceeded"] == 1


def test_bytes_sent_but_not_yet_reported_never_cut_a_quick_reader() -> None:
    # The writer reports what the kernel took after its sends; a client may read
    # a long reply and answer before that.  Its next line must not cut it.
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice = connect(hub, "alice")
    write(hub)
    fill(hub, alice, 10)
    hub.tell(alice, events.Announcement("x" * 500))  # over the bound: a reply may be
    batch = hub.collect(hub.mailboxes[0])  # handed to the kernel, not yet reported...
    hub.say(alice, "still here?")  # ... when the echo of alice's next line comes
    hub.say(alice, "and again")
    assert alice.close_reason is None
    hub.sent([(m, len(data)) for m, data in batch.sends])
    _, got = write(hub)
    assert got[alice] == ["[lobby] alice: still here?", "[lobby] alice: and again"]
    assert alice.queued == 0 and alice.slack == 0


def test_enqueueing_holds_a_queue_to_twice_the_bound_between_writer_steps() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    write(hub)
    while alice.close_reason is None:
        hub.say(bob, "z" * 300)
        assert alice.queued <= 2 * CAP
        drain(hub, bob)
    assert alice.close_reason == "send_queue_exceeded"
    assert alice.outbox == [] and alice.queued == 0


def test_a_reply_may_pass_the_cap_once() -> None:
    # A reply to the asker's own request is never what cuts it (e.g. /who in a
    # huge room); a member whose writer still holds more than that has stopped reading.
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, bob)
    fill(hub, alice, 10)
    hub.tell(alice, events.Announcement("this does not fit"))
    assert alice.close_reason is None
    assert alice.queued > CAP
    assert_accounting(hub)
    write(hub, stuck=frozenset({alice}))  # its kernel took none of it
    hub.tell(alice, events.Announcement("nor does this"))
    assert alice.close_reason is None  # not judged before the writer's next step
    write(hub, stuck=frozenset({alice}))
    assert alice.close_reason is None  # what it holds is within the reply's slack
    hub.say(bob, "x" * 100)
    batch, got = write(hub, stuck=frozenset({alice}))
    assert alice.close_reason == "send_queue_exceeded"
    assert (alice, False) in batch.closes
    assert got[bob] == ["[lobby] bob: " + "x" * 100, "* alice left lobby (too slow)"]


def test_a_line_that_exactly_fits_is_queued() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice = connect(hub, "alice")
    fill(hub, alice, 10)
    hub.tell(alice, events.Announcement("x" * 7))
    assert alice.close_reason is None
    assert alice.queued == CAP


def test_queued_is_the_sum_of_the_outbox(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    carol = connect(hub, "carol")
    hub.say(alice, "one")
    hub.private(bob, "carol", "two")
    hub.join(carol, "work")
    hub.announce(events.Announcement("three"))
    hub.tell(bob, events.Announcement("four"))
    assert_accounting(hub)
    queued = sum(len(b"".join(m.outbox)) for m in (alice, bob, carol))
    assert hub.stats()["queued_bytes"] == queued
    drain(hub, bob)
    assert bob.queued == 0
    assert_accounting(hub)


def test_private_message_past_the_cap_closes_the_recipient() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    fill(hub, bob, 5)
    write(hub, stuck=frozenset({bob}))  # bob's kernel takes none of it
    assert hub.private(alice, "bob", "hello there") is None
    assert bob.close_reason is None  # judged by the writer, where the count is exact
    write(hub, stuck=frozenset({bob}))
    assert bob.close_reason is None  # it holds CAP - 5: within the bound
    assert hub.private(alice, "bob", "hello again") is None
    write(hub, stuck=frozenset({bob}))
    assert bob.close_reason == "send_queue_exceeded"
    assert bob.outbox == []


def test_kicking_a_member_with_a_nearly_full_queue() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, alice)
    fill(hub, bob, 10)
    assert hub.kick("bob", "spamming").kicked
    assert hub.mailboxes[0].to_close.count(bob) == 1
    assert lines(alice) == ["* bob was kicked (spamming)"]
    assert bob.close_reason == "kicked"
    assert lines(bob)[-1] == "* you were kicked: spamming"


def test_shutdown_of_a_member_with_a_nearly_full_queue() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    alice = connect(hub, "alice")
    fill(hub, alice, 10)
    hub.begin_shutdown(events.ShuttingDown(reason="maintenance"))
    assert hub.mailboxes[0].to_close.count(alice) == 1
    assert alice.close_reason == "shutdown"
    assert lines(alice)[-1] == "* server shutting down: maintenance"


def test_a_join_that_overflows_the_queue_does_not_announce_a_ghost() -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP})
    bob, carol = connect(hub, "bob"), connect(hub, "carol")
    hub.join(carol, "work")
    drain(hub, carol)
    fill(hub, bob, 10)
    hub.tell(bob, events.Announcement("x" * 20))  # a reply may pass the cap once
    hub.tell(bob, events.Announcement("x" * CAP))  # twice the bound: cut at enqueue
    hub.join(bob, "work")
    assert bob.close_reason == "send_queue_exceeded"
    assert bob not in hub.rooms["work"]
    # Whatever carol was told about bob, the last word must be that he is gone.
    about_bob = [line for line in lines(carol) if line.startswith("* bob ")]
    assert about_bob == [] or about_bob[-1] == "* bob left work (too slow)"


# --- announce_limit -------------------------------------------------------------


def test_big_rooms_do_not_announce_membership() -> None:
    hub = make_hub(rooms={"announce_limit": 2})
    alice = connect(hub, "alice")
    bob = connect(hub, "bob")  # the room has 2: announced
    assert lines(alice)[-1] == "* bob joined lobby"
    drain(hub, alice)
    drain(hub, bob)
    carol = connect(hub, "carol")  # 3 > 2: quiet
    assert lines(alice) == []
    assert lines(bob) == []
    hub.say(carol, "hi")  # chat is delivered whatever the size
    assert lines(alice) == ["[lobby] carol: hi"]


def test_announce_limit_zero_silences_membership_notices() -> None:
    hub = make_hub(rooms={"announce_limit": 0})
    alice = connect(hub, "alice")
    drain(hub, alice)
    bob = connect(hub, "bob")
    hub.join(bob, "work")
    hub.kick("bob", "x")
    assert lines(alice) == []


# --- reaping --------------------------------------------------------------------


def test_reap_closes_a_nameless_member_after_the_login_timeout(hub: Hub) -> None:
    nameless = connect(hub)
    nameless.connected_mono = 100.0
    nameless.last_active = 130.5  # lines (rejected names) do not postpone it
    assert reap(hub, 129.0, 3600, 30) == []
    assert nameless not in hub.mailboxes[0].to_close
    assert reap(hub, 131.0, 3600, 30) == [nameless]
    assert nameless.close_reason == "login_timeout"
    assert lines(nameless)[-1] == "! no name given in time; closing"
    assert nameless in hub.mailboxes[0].to_close


def test_reap_closes_an_idle_member_after_the_idle_timeout(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, alice)
    drain(hub, bob)
    alice.last_active = 0.0
    bob.last_active = 3000.0
    assert reap(hub, 3500.0, 3600, 30) == []
    assert reap(hub, 3601.0, 3600, 30) == [alice]
    assert alice.close_reason == "idle"
    assert lines(alice) == ["! idle for too long (3600 s); closing"]
    assert lines(bob) == ["* alice left lobby (idle)"]
    assert bob.close_reason is None
    # Already closing: not reaped again.
    assert reap(hub, 5000.0, 3600, 30) == []
    assert bob.close_reason is None
    assert reap(hub, 6601.0, 3600, 30) == [bob]


def test_a_logged_in_member_is_not_reaped_by_the_login_timeout(hub: Hub) -> None:
    alice = connect(hub, "alice")
    alice.last_active = 0.0
    assert reap(hub, 100.0, 3600, 30) == []


def test_idle_timeout_zero_never_reaps_logged_in_members(hub: Hub) -> None:
    alice = connect(hub, "alice")
    alice.last_active = 0.0
    nameless = connect(hub)
    nameless.last_active = 0.0
    assert reap(hub, 1e9, 0, 30) == [nameless]
    assert alice.close_reason is None


# --- add and remove -------------------------------------------------------------


def test_add_refuses_past_max_clients() -> None:
    hub = make_hub(server={"max_clients": 2})
    connect(hub, addr="10.0.0.1")
    connect(hub, addr="10.0.0.2")
    assert hub.add(Member("10.0.0.3")) == "server_full"
    assert hub.add(Member("10.0.0.4")) == "server_full"
    assert hub.refused["server_full"] == 2
    assert hub.count() == 2
    assert hub.connections == 2


def test_add_refuses_past_the_per_ip_limit() -> None:
    hub = make_hub(server={"max_clients_per_ip": 2})
    first = connect(hub, addr="10.0.0.1")
    connect(hub, addr="10.0.0.1")
    assert hub.add(Member("10.0.0.1")) == "per_ip_limit"
    assert hub.refused["per_ip_limit"] == 1
    connect(hub, addr="10.0.0.2")  # another address is still welcome
    hub.remove(first, "eof")
    connect(hub, addr="10.0.0.1")  # a freed slot can be reused
    assert hub.per_ip["10.0.0.1"] == 2


def test_per_ip_limit_zero_means_unlimited() -> None:
    hub = make_hub(server={"max_clients_per_ip": 0})
    for _ in range(150):
        connect(hub)
    assert hub.per_ip["127.0.0.1"] == 150


def test_add_refuses_while_shutting_down(hub: Hub) -> None:
    hub.begin_shutdown(events.ShuttingDown())
    assert hub.add(Member()) == "shutting_down"
    assert hub.refused["shutting_down"] == 1


def test_remove_frees_name_room_and_address(hub: Hub) -> None:
    alice, bob = connect(hub, "alice", addr="10.0.0.1"), connect(hub, "bob")
    drain(hub, bob)
    assert hub.remove(alice, "eof") == "eof"
    assert lines(bob) == ["* alice left lobby (disconnected)"]
    assert alice.room is None
    assert alice not in hub.rooms["lobby"]
    assert "alice" not in hub.by_name
    assert "10.0.0.1" not in hub.per_ip
    assert alice not in hub.members
    assert hub.drops == {"eof": 1}
    assert alice in hub.mailboxes[0].to_retire
    assert alice.close_flush and alice.outbox  # after an EOF what is queued is still delivered
    assert hub.login(connect(hub), "alice") is None


def test_remove_after_an_error_drops_the_queue(hub: Hub) -> None:
    alice = connect(hub, "alice")
    assert hub.remove(alice, "error") == "error"
    assert not alice.close_flush
    assert alice.outbox == [] and alice.queued == 0


def test_remove_reports_the_reason_closing_began_with(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    hub.close(alice, "bye", events.Goodbye())
    assert lines(bob)[-1] == "* alice left lobby"
    drain(hub, bob)
    assert hub.remove(alice, "eof") == "bye"
    assert lines(bob) == []  # told once, not twice
    assert hub.drops == {"bye": 1}


def test_remove_counts_drops_by_reason(hub: Hub) -> None:
    for reason in ("eof", "eof", "error"):
        hub.remove(connect(hub), reason)
    kicked = connect(hub, "kicked")
    hub.kick("kicked", "x")
    hub.remove(kicked, "eof")
    assert hub.drops == {"eof": 2, "error": 1, "kicked": 1}


def test_remove_twice_counts_once(hub: Hub) -> None:
    m = connect(hub, "alice")
    hub.remove(m, "eof")
    hub.remove(m, "error")
    assert hub.drops == {"eof": 1}
    assert hub.count() == 0


def test_remove_drops_what_is_still_queued(hub: Hub) -> None:
    alice = connect(hub, "alice")
    hub.say(alice, "unsent")
    hub.remove(alice, "error")
    assert alice.outbox == []
    assert alice.queued == 0


@pytest.mark.parametrize(
    "reason, notice",
    [
        ("error", "* alice left lobby (connection lost)"),
        ("flood", "* alice left lobby (flood)"),
        ("bye", "* alice left lobby"),
        ("something_new", "* alice left lobby"),
    ],
)
def test_leave_notices_name_the_reason(hub: Hub, reason: str, notice: str) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    drain(hub, bob)
    assert hub.close(alice, reason)
    assert hub.close(alice, "other") is False
    assert lines(bob) == [notice]
    assert alice.close_reason == reason


# --- shutdown -------------------------------------------------------------------


def test_begin_shutdown_queues_the_final_line_after_everything_else(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    nameless = connect(hub)
    hub.say(alice, "last words")
    before = {m: lines(m) for m in (alice, bob, nameless)}
    final = events.ShuttingDown(5, "upgrade")
    assert hub.begin_shutdown(final) == 3
    for m in (alice, bob, nameless):
        assert lines(m) == [*before[m], "* server shutting down in 5 s: upgrade"]
        assert m.close_reason == "shutdown"
        assert m.close_flush
        assert m in hub.mailboxes[0].to_close
    assert hub.shutting_down
    assert all(not ms for ms in hub.rooms.values())
    assert hub.by_name == {}
    assert_accounting(hub)


def test_force_close_all_drops_what_is_queued(hub: Hub) -> None:
    alice = connect(hub, "alice")
    hub.begin_shutdown(events.ShuttingDown())
    hub.force_close_all()
    assert alice.outbox == []
    assert alice.queued == 0
    assert not alice.close_flush


# --- views ----------------------------------------------------------------------


def test_stats(hub: Hub) -> None:
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    connect(hub)
    hub.join(bob, "work")
    hub.say(alice, "hi")
    hub.private(alice, "bob", "psst")
    hub.kick("bob", "x")
    hub.remove(bob, "eof")
    stats = hub.stats()
    assert set(stats) == {
        "uptime",
        "clients",
        "logged_in",
        "rooms",
        "connections",
        "logins",
        "messages_in",
        "bytes_in",
        "bytes_out",
        "kicks",
        "queued_bytes",
        "drops",
        "refused",
    }
    assert stats["clients"] == 2
    assert stats["logged_in"] == 1
    assert stats["rooms"] == {"lobby": 1, "work": 0, "support": 0, "team": 0}
    assert stats["connections"] == 3
    assert stats["logins"] == 2
    assert stats["messages_in"] == 2
    assert stats["bytes_in"] == len(b"hi") + len(b"psst")  # the text users sent
    assert stats["bytes_out"] > 0
    assert stats["kicks"] == 1
    assert stats["drops"] == {"kicked": 1}
    assert stats["refused"] == {}
    assert stats["uptime"] >= 0


def test_users_lists_logged_in_members_only(hub: Hub) -> None:
    alice = connect(hub, "alice", addr="10.0.0.7")
    connect(hub)
    hub.say(alice, "hi")
    alice.last_active = time.monotonic()
    (user,) = hub.users()
    assert user["name"] == "alice"
    assert user["room"] == "lobby"
    assert user["addr"] == "10.0.0.7:0"
    assert user["messages"] == 1
    assert user["queued_bytes"] == alice.queued
    assert user["throttled"] is False
    assert list(hub.names()) == ["alice"]


# --- invariants under any sequence of operations --------------------------------

NAMES = ["ann", "bob", "cy", "dee"]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("login"), st.sampled_from(NAMES)),
        st.tuples(st.just("say"), st.sampled_from(NAMES), st.integers(0, 1500)),
        st.tuples(st.just("join"), st.sampled_from(NAMES), st.sampled_from(["lobby", "work"])),
        st.tuples(st.just("msg"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
        st.tuples(st.just("drain"), st.sampled_from(NAMES)),
        st.tuples(st.just("kick"), st.sampled_from(NAMES)),
        st.tuples(st.just("remove"), st.sampled_from(NAMES)),
        st.tuples(st.just("announce"), st.sampled_from([None, "lobby", "work"])),
    ),
    max_size=40,
)


@settings(max_examples=75)
@given(ops=OPS)
def test_accounting_and_membership_stay_consistent(ops: list[tuple[Any, ...]]) -> None:
    hub = make_hub(limits={"send_queue_bytes": CAP}, rooms={"names": ["lobby", "work"]})
    conns: dict[str, Member] = {}
    for op, *args in ops:
        if op == "announce":
            hub.announce(events.Announcement("notice", args[0]), args[0])
        elif op == "login":
            name: str = args[0]
            if name in conns and conns[name].close_reason is not None:
                hub.remove(conns.pop(name), "eof")  # as its reader thread would
            if name not in conns:
                conns[name] = connect(hub)
                hub.login(conns[name], name)
        elif args[0] in conns:
            name = args[0]
            m = conns[name]
            if op == "say":
                hub.say(m, "z" * args[1])
            elif op == "join":
                hub.join(m, args[1])
            elif op == "msg":
                hub.private(m, args[1], "hi")
            elif op == "drain":
                drain(hub, m)
            elif op == "kick":
                hub.kick(name, "x")
            elif op == "remove":
                hub.remove(m, "eof")
                del conns[name]

        assert_accounting(hub)
        for room, members in hub.rooms.items():
            for member in members:
                assert member.room == room
                assert member.close_reason is None
                assert member.queued <= CAP
        for key, member in hub.by_name.items():
            assert member.key == key
            assert member.close_reason is None
        assert sum(hub.per_ip.values()) == len(hub.members)


def test_reap_forgets_expired_bans(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("chatsvc.hub.time.monotonic", lambda: now[0])
    hub.kick("ghost", "gone", ban_seconds=60)  # no such user, but the name is banned
    assert "ghost" in hub.bans
    reap(hub, now[0], 0, 30)
    assert "ghost" in hub.bans
    now[0] += 61
    reap(hub, now[0], 0, 30)
    assert hub.bans == {}


def test_address_ban_refuses_new_connections_and_closes_the_others() -> None:
    hub = make_hub()
    bob = connect(hub, "bob", addr="10.0.0.7")
    twin = connect(hub, "twin", addr="10.0.0.7")
    other = connect(hub, "carol", addr="10.0.0.8")
    result = hub.kick("bob", "spam", ban_seconds=60, ban_address=True)
    assert result == KickResult(True, True, "10.0.0.7", 1)
    assert (
        bob.close_reason == "kicked"
        and twin.close_reason == "kicked"
        and other.close_reason is None
    )
    assert hub.add(Member("10.0.0.7", 1)) == "banned"
    assert hub.add(Member("10.0.0.8", 2)) is None
    assert [b["what"] for b in hub.ban_list()] == ["bob", "10.0.0.7"]
    assert hub.unban(address="10.0.0.7") and not hub.unban(address="10.0.0.7")
    assert hub.add(Member("10.0.0.7", 3)) is None


def test_kick_of_an_absent_name_still_sets_the_name_ban() -> None:
    hub = make_hub()
    result = hub.kick("ghost", "pre-emptive", ban_seconds=30, ban_address=True)
    assert result == KickResult(False, True, None, 0)
    assert "ghost" in hub.bans


class _NoEcho:
    """A dialect like IRC's without echo-message: it does not get its own lines."""

    name = "noecho"
    echo_own = False

    def render(self, event: events.Event) -> bytes:
        return LINE.render(event)


def test_a_multi_room_member_enters_speaks_and_parts() -> None:
    hub = make_hub()
    irc = Member("127.0.0.1", 1, _NoEcho())
    assert hub.add(irc) is None
    assert hub.login(irc, "ircuser", join_default=False) is None
    assert irc.rooms == {}
    alice = connect(hub, "alice")
    drain(hub, alice)
    assert hub.enter(irc, "lobby") is None
    assert hub.enter(irc, "work") is None
    assert said(hub.enter(irc, "work")) == "you are already in work"
    assert list(irc.rooms) == ["lobby", "work"]
    assert hub.say(irc, "hi", "work") == "work"
    assert hub.say(irc, "hi all", "lobby") == "lobby"
    assert hub.say(irc, "nope", "team") is None
    assert drain(hub, alice) == ["* ircuser joined lobby", "[lobby] ircuser: hi all"]
    own = drain(hub, irc)
    assert "* ircuser joined lobby" in own and "* ircuser joined work" in own
    assert not any(line.startswith("[") for line in own)  # no echo of its own lines
    assert hub.part(irc, "lobby", "bye now") is None
    assert said(hub.part(irc, "lobby")) == "you are not in lobby"
    assert drain(hub, alice) == ["* ircuser left lobby"]
    hub.remove(irc, "eof")
    assert hub.rooms["work"] == {}
