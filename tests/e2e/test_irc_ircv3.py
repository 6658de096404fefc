"""IRCv3 extensions end to end: MONITOR across both protocols, away-notify, setname,
message-tags (and TAGMSG) and labeled-response, on real sockets."""

from __future__ import annotations

import re
from typing import Any

from tests.e2e.helpers import logged_in
from tests.e2e.test_irc import irc_client, irc_server  # noqa: F401  (the fixture)


def test_monitor_follows_line_protocol_users_logging_in_and_out(irc_server: Any) -> None:  # noqa: F811
    h = irc_server()
    with irc_client(h, "alice") as alice:
        alice.send("MONITOR + bob,carol")
        assert alice.expect(" 731 ") == ":chatsvc 731 alice :bob,carol"
        with logged_in(h.host, h.port, "bob"):
            assert alice.expect(" 730 ") == ":chatsvc 730 * :bob!bob@chatsvc"
            alice.send("MONITOR S")
            assert alice.expect(" 730 ") == ":chatsvc 730 alice :bob!bob@chatsvc"
            assert alice.expect(" 731 ") == ":chatsvc 731 alice :carol"
        assert alice.expect(" 731 ") == ":chatsvc 731 * :bob"
        alice.send("MONITOR - carol")
        alice.send("MONITOR L")
        assert alice.expect(" 732 ") == ":chatsvc 732 alice :bob"
        assert " 733 alice " in alice.expect(" 733 ")
        alice.send("MONITOR X :y z")
        assert alice.expect(" 421 ") == ":chatsvc 421 alice MONITOR :Unknown MONITOR subcommand X"
        alice.send("MONITOR")
        assert " 461 alice MONITOR " in alice.expect(" 461 ")
        alice.send("MONITOR C")
        alice.send("MONITOR L")
        assert " 733 " in alice.expect(re.compile(" 73[23] "))


def test_monitor_renames_masks_and_the_list_bound(irc_server: Any) -> None:  # noqa: F811
    h = irc_server()
    with irc_client(h, "alice") as alice, irc_client(h, "dave") as dave:
        assert "MONITOR=100" in " ".join(alice.seen)
        alice.send("MONITOR + *!user@host,erin")
        assert " 432 alice *!user@host " in alice.expect(" 432 ")
        assert alice.expect(" 731 ") == ":chatsvc 731 alice :erin"
        dave.send("NICK erin")
        assert alice.expect(" 730 ") == ":chatsvc 730 * :erin!erin@chatsvc"
        dave.send("NICK frank")
        assert alice.expect(" 731 ") == ":chatsvc 731 * :erin"
        alice.send("MONITOR + " + ",".join(f"n{i}" for i in range(120)))
        full = alice.expect(" 734 ")
        assert full.startswith(":chatsvc 734 alice 100 n99,n100,")  # erin + n0..n98 fit
        assert alice.sync() == []


def test_away_notify_and_setname_reach_the_members_that_asked(irc_server: Any) -> None:  # noqa: F811
    h = irc_server()
    with (
        irc_client(h, "alice", caps=("away-notify", "setname")) as alice,
        irc_client(h, "bob") as bob,
        logged_in(h.host, h.port, "carol") as carol,
    ):
        for c in (alice, bob):
            c.send("JOIN #lobby")
            c.expect(" 366 ")
        alice.sync()
        bob.send("AWAY :at lunch")
        assert alice.expect(" AWAY ") == ":bob!bob@chatsvc AWAY :at lunch"
        bob.send("AWAY")
        assert alice.expect(re.compile(" AWAY$")) == ":bob!bob@chatsvc AWAY"
        bob.send("SETNAME :Bob B.")
        assert alice.expect(" SETNAME ") == ":bob!bob@chatsvc SETNAME :Bob B."
        bob.send("WHOIS bob")
        assert bob.expect(" 311 ").endswith(" :Bob B.")
        assert not any("AWAY" in ln or "SETNAME" in ln for ln in bob.sync())
        bob.send("PRIVMSG #lobby :done")
        assert carol.expect("done") == "[lobby] bob: done"  # the line client saw nothing else
        assert not any("away" in ln.lower() for ln in carol.seen)


def test_message_tags_go_to_irc_members_that_asked_text_to_everyone(irc_server: Any) -> None:  # noqa: F811
    h = irc_server()
    with (
        irc_client(h, "alice", caps=("message-tags", "echo-message")) as alice,
        irc_client(h, "bob") as bob,
        logged_in(h.host, h.port, "carol") as carol,
    ):
        for c in (alice, bob):
            c.send("JOIN #lobby")
            c.expect(" 366 ")
        alice.sync()
        alice.send("@+draft/react=x\\sy;secret=1 PRIVMSG #lobby :hi all")
        echo = alice.expect(" PRIVMSG ")
        assert re.match(r"@msgid=\S+;\+draft/react=x\\sy :alice!alice@chatsvc PRIVMSG ", echo)
        assert bob.expect(" PRIVMSG ") == ":alice!alice@chatsvc PRIVMSG #lobby :hi all"
        assert carol.expect("hi all") == "[lobby] alice: hi all"
        alice.send("@+typing=active TAGMSG #lobby")
        assert alice.expect(" TAGMSG ").endswith(
            ";+typing=active :alice!alice@chatsvc TAGMSG #lobby"
        )
        alice.send("PRIVMSG #lobby :after")
        assert bob.expect(" PRIVMSG ").endswith(":after")  # no TAGMSG before it
        assert carol.read_line() == "[lobby] alice: after"
        alice.send("@+a=" + "x" * 4092 + " PRIVMSG #lobby :too many tags")
        assert " 417 alice " in alice.expect(" 417 ")
        alice.send("PRIVMSG #lobby :still here")
        assert carol.read_line() == "[lobby] alice: still here"


def test_labeled_responses_single_batch_and_ack(irc_server: Any) -> None:  # noqa: F811
    h = irc_server()
    caps = ("labeled-response", "batch", "echo-message")
    with irc_client(h, "alice", caps=caps) as alice, irc_client(h, "bob") as bob:
        alice.send("@label=p1 PING tok")
        assert alice.read_line() == "@label=p1 :chatsvc PONG chatsvc tok"
        alice.send("@label=a1 PONG tok")
        assert alice.read_line() == "@label=a1 :chatsvc ACK"
        alice.send("@label=u1 NOSUCH")
        assert alice.read_line() == "@label=u1 :chatsvc 421 alice NOSUCH :Unknown command"
        alice.send("@label=j1 JOIN #lobby")
        start = alice.read_line()
        assert start is not None
        m = re.fullmatch(r"@label=j1 :chatsvc BATCH \+(\S+) labeled-response", start)
        assert m, start
        body = []
        while (ln := alice.read_line()) != f":chatsvc BATCH -{m.group(1)}":
            assert ln is not None and ln.startswith(f"@batch={m.group(1)} "), ln
            body.append(ln)
        assert body[0].endswith(" JOIN #lobby") and body[-1].endswith(
            " 366 alice #lobby :End of /NAMES list"
        )
        alice.send("@label=m1 PRIVMSG bob :hello")
        assert alice.read_line() == "@label=m1 :alice!alice@chatsvc PRIVMSG bob :hello"
        assert bob.expect(" PRIVMSG ") == ":alice!alice@chatsvc PRIVMSG bob :hello"
