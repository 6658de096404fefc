"""MONITOR, away-notify/setname, message-tags and labeled-response: the hub's side
(fake sessions: ``Member`` objects whose outbox is read directly) and the IRC dialect."""

from __future__ import annotations

from typing import Any

from chatsvc import config, events
from chatsvc.hub import Hub, Member
from chatsvc.irc import _add_tag, client_tags, dialect_for, escape_tag, parse_line

ALL = frozenset({"message-tags", "away-notify", "setname", "extended-monitor", "echo-message"})


def make_hub(**overrides: dict[str, Any]) -> Hub:
    return Hub(config.with_overrides(config.Config(), **overrides))


def irc(caps: frozenset[str] = frozenset()) -> Any:
    return dialect_for("srv", "net", caps)


def connect(hub: Hub, name: str, caps: frozenset[str] | None = None, room: bool = True) -> Member:
    m = Member(dialect=irc(caps) if caps is not None else Member().dialect)
    assert hub.add(m) is None
    assert hub.login(m, name, join_default=room) is None
    take(hub, m)
    return m


def take(hub: Hub, m: Member) -> list[str]:
    """The outbox as lines (either protocol), emptied as the writer would."""
    with hub.lock:
        text = b"".join(m.outbox).decode()
        m.queued -= sum(map(len, m.outbox))
        m.outbox.clear()
        m.scheduled = False
    return [ln.rstrip("\r") for ln in text.split("\n") if ln]


# --- MONITOR ----------------------------------------------------------------------


def test_watchers_hear_of_logins_renames_and_departures_of_either_protocol() -> None:
    hub = make_hub()
    watcher = connect(hub, "w", frozenset(), room=False)
    added, refused = hub.watch(watcher, ["Bob", "carol"], 10)
    assert (added, refused) == ([("Bob", None), ("carol", None)], [])
    bob = Member()  # a line-protocol client
    assert hub.add(bob) is None and hub.login(bob, "bob") is None
    assert take(hub, watcher) == [":srv 730 * :bob!bob@srv"]
    assert hub.watched(watcher) == [("Bob", "bob"), ("carol", None)]
    assert hub.rename(bob, "BOB") is None  # a change of case only: no news
    assert take(hub, watcher) == []
    assert hub.rename(bob, "carol") is None
    assert take(hub, watcher) == [":srv 731 * :BOB", ":srv 730 * :carol!carol@srv"]
    hub.remove(bob, "eof")
    assert take(hub, watcher) == [":srv 731 * :carol"]


def test_the_watch_list_is_bounded_and_forgotten_with_the_member() -> None:
    hub = make_hub()
    watcher = connect(hub, "w", frozenset(), room=False)
    added, refused = hub.watch(watcher, [f"n{i}" for i in range(5)], 3)
    assert [a for a, _ in added] == ["n0", "n1", "n2"] and refused == ["n3", "n4"]
    _, refused = hub.watch(watcher, ["N1"], 3)  # already watched: no room needed
    assert refused == []
    hub.unwatch(watcher, ["n0"])
    assert [n for n, _ in hub.watched(watcher)] == ["n1", "n2"]
    hub.remove(watcher, "eof")
    assert hub.watchers == {}


def test_other_nodes_members_come_and_go_through_the_mirror_without_flapping() -> None:
    hub = make_hub()
    watcher = connect(hub, "w", frozenset(), room=False)
    hub.watch(watcher, ["rob"], 10)
    hub.deliver_remote("lobby", events.Joined("lobby", "rob"), origin="n2")
    assert take(hub, watcher) == [":srv 730 * :rob!rob@srv"]
    hub.deliver_remote("lobby", events.Left("lobby", "rob", "moved"), origin="n2")
    hub.deliver_remote("lobby", events.Joined("lobby", "rob"), origin="n2")  # /join elsewhere
    assert take(hub, watcher) == []
    assert hub.watched(watcher) == [("rob", "rob")]
    hub.deliver_remote("lobby", events.Renamed("lobby", "rob", "ROB"), origin="n2")
    assert take(hub, watcher) == []  # a change of case only
    hub.deliver_remote("lobby", events.Renamed("lobby", "ROB", "robin"), origin="n2")
    assert take(hub, watcher) == [":srv 731 * :ROB"]
    hub.deliver_remote("lobby", events.Renamed("lobby", "robin", "rob"), origin="n2")
    assert take(hub, watcher) == [":srv 730 * :rob!rob@srv"]
    hub.deliver_remote("lobby", events.Left("lobby", "rob", "eof"), origin="n2")
    assert take(hub, watcher) == [":srv 731 * :rob"]
    hub.set_remote({"rob": ("rob", "n2", ["lobby"])})  # a resync that shows rob again
    assert take(hub, watcher) == [":srv 730 * :rob!rob@srv"]
    hub.set_remote({})
    assert take(hub, watcher) == [":srv 731 * :rob"]


# --- notifications about a user ----------------------------------------------------


def test_share_reaches_each_room_peer_once_and_only_dialects_that_asked() -> None:
    hub = make_hub()
    alice = connect(hub, "alice", ALL, room=False)
    plain = connect(hub, "plain", frozenset(), room=False)
    line = connect(hub, "line")  # line protocol, in the default room
    watcher = connect(hub, "w", frozenset({"extended-monitor", "away-notify"}), room=False)
    for m in (alice, plain):
        for room in ("lobby", "work"):
            assert hub.enter(m, room) is None
    hub.watch(watcher, ["plain"], 10)
    for m in (alice, plain, line, watcher):
        take(hub, m)
    hub.share(plain, events.Away("plain", "lunch"))
    assert take(hub, alice) == [":plain!plain@srv AWAY :lunch"]  # once, though two rooms
    assert take(hub, watcher) == [":plain!plain@srv AWAY :lunch"]  # extended-monitor
    assert take(hub, line) == [] and take(hub, plain) == []
    hub.share(plain, events.RealName("plain", "P L"), echo=True)
    assert take(hub, alice) == [":plain!plain@srv SETNAME :P L"]
    assert take(hub, plain) == []  # no setname capability: not even its own
    assert take(hub, watcher) == []


# --- message tags -------------------------------------------------------------------


def test_client_tags_and_msgid_only_for_dialects_with_message_tags() -> None:
    hub = make_hub()
    tagged = connect(hub, "t", frozenset({"message-tags"}))
    plain = connect(hub, "p", frozenset())
    line = connect(hub, "l")
    for m in (tagged, plain):
        take(hub, m)
    tags = client_tags({"+draft/react": "a b;c", "secret": "1", "+": "x"})
    assert tags == (("+draft/react", "a b;c"),)
    assert hub.say(line, "hi", tags=tags) == "lobby"
    got = take(hub, tagged)
    assert len(got) == 1 and got[0].endswith(" :l!l@srv PRIVMSG #lobby :hi")
    assert got[0].startswith("@msgid=") and ";+draft/react=a\\sb\\:c :l!l@srv PRIVMSG" in got[0]
    assert take(hub, plain) == [":l!l@srv PRIVMSG #lobby :hi"]
    assert take(hub, line) == ["[lobby] l: hi"]  # the line protocol: byte for byte as before
    assert hub.say(line, "", tags=tags, tagmsg=True) == "lobby"
    assert take(hub, tagged)[0].endswith(" :l!l@srv TAGMSG #lobby")
    assert take(hub, plain) == [] and take(hub, line) == []


def test_msgids_differ_per_message_and_match_across_recipients() -> None:
    hub = make_hub()
    a = connect(hub, "a", frozenset({"message-tags", "echo-message"}))
    b = connect(hub, "b", frozenset({"message-tags"}))
    take(hub, a)
    hub.say(a, "one")
    hub.say(a, "two")
    ids_a = [ln.split(" ", 1)[0] for ln in take(hub, a)]
    ids_b = [ln.split(" ", 1)[0] for ln in take(hub, b)]
    assert ids_a == ids_b and len(set(ids_a)) == 2


def test_tag_escaping_round_trips_through_the_parser() -> None:
    value = "a;b c\\d\re\nf"
    msg = parse_line(f"@+k={escape_tag(value)} TAGMSG #a".encode())
    assert msg is not None and msg.tags == {"+k": value}
    assert _add_tag(":s PING x", "label=1") == "@label=1 :s PING x"
    assert _add_tag("@time=t :s PING x", "label=1") == "@label=1;time=t :s PING x"


# --- labeled-response ----------------------------------------------------------------


def test_capture_holds_replies_and_the_own_echo_but_not_others_lines() -> None:
    hub = make_hub()
    a = connect(hub, "a", frozenset({"echo-message"}))
    b = connect(hub, "b", frozenset({"echo-message"}))
    take(hub, a)
    hub.capture(a, True)
    hub.say(b, "from b")  # someone else's line goes out at once
    hub.say(a, "from a")  # a's own echo is part of the answer
    hub.tell(a, events.Raw(":srv 300 a :reply\r\n"))
    held = hub.capture(a, False)
    assert take(hub, a) == [":b!b@srv PRIVMSG #lobby :from b"]
    assert b"".join(held or []).decode().splitlines() == [
        ":a!a@srv PRIVMSG #lobby :from a",
        ":srv 300 a :reply",
    ]
    assert take(hub, b) == [":b!b@srv PRIVMSG #lobby :from b", ":a!a@srv PRIVMSG #lobby :from a"]
    assert hub.capture(a, True) is None and hub.capture(a, False) == []
