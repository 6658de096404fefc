"""The IRC listener end to end: raw IRC sockets and line-protocol clients on one server."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from chatsvc import config, events
from tests.e2e.conftest import TEST_DEFAULTS, ServerHandle, _sections
from tests.e2e.helpers import RawClient, ServerProcess, logged_in, wait_until, write_config

IRC_DEFAULTS: dict[str, Any] = {"enabled": True, "port": 0}


class IrcClient(RawClient):
    """A raw IRC connection: CRLF lines out, every read bounded."""

    def send(self, line: str) -> None:
        self.send_raw(line.encode() + b"\r\n")

    def read_line(self, timeout: Optional[float] = None) -> Optional[str]:
        text = super().read_line(timeout)
        return None if text is None else text.rstrip("\r")

    def register(self, nick: str, caps: tuple[str, ...] = ()) -> list[str]:
        """NICK/USER (with CAP REQ first if asked); the lines up to the end of the MOTD."""
        if caps:
            self.send("CAP LS 302")
            self.send("CAP REQ :" + " ".join(caps))
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :{nick} Real")
        if caps:
            self.expect(" ACK ")
            self.send("CAP END")
        lines = [self.expect(re.compile(r" (001|433|432) "))]
        assert " 001 " in lines[0], lines
        while not re.search(r" (376|422) ", lines[-1]):
            line = self.read_line()
            assert line is not None, lines
            lines.append(line)
        return lines

    def sync(self, token: str = "sync") -> list[str]:
        """Every line before the answer to a PING: the server answers in order."""
        self.send(f"PING {token}")
        out: list[str] = []
        while True:
            line = self.read_line()
            assert line is not None, out
            if line.endswith(f"PONG chatsvc {token}") or line.endswith(f"PONG chatsvc :{token}"):
                return out
            out.append(line)


@pytest.fixture
def irc_server() -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def make(irc: Optional[dict[str, Any]] = None, **overrides: Any) -> ServerHandle:
        sections = _sections({**TEST_DEFAULTS, **overrides})
        sections["irc"] = {**IRC_DEFAULTS, **(irc or {})}
        handle = ServerHandle(config.from_mapping(sections, "test"))
        handles.append(handle)
        return handle

    yield make
    for h in handles:
        if h.running:
            h.stop()


def irc_client(h: ServerHandle, nick: Optional[str] = None, **kw: Any) -> IrcClient:
    address = h.server.irc_address
    assert address is not None
    c = IrcClient(*address)
    if nick is not None:
        c.register(nick, **kw)
    return c


# --- registration -------------------------------------------------------------------


def test_registration_sends_welcome_isupport_and_no_motd(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h) as c:
        lines = c.register("alice")
    assert lines[0] == ":chatsvc 001 alice :Welcome to the chatsvc IRC network alice!alice@chatsvc"
    isupport = next(ln for ln in lines if " 005 " in ln)
    for token in ("CHANTYPES=#", "PREFIX=(ov)@+", "CASEMAPPING=ascii", "NICKLEN=32"):
        assert token in isupport
    assert "NETWORK=chatsvc" in isupport
    assert lines[-1].startswith(":chatsvc 422 alice ")


def test_motd_lines_and_names_from_the_config(irc_server: Any) -> None:
    h = irc_server(irc={"motd": "first\nsecond", "server_name": "irc.example.org"})
    with irc_client(h) as c:
        lines = c.register("alice")
    assert ":irc.example.org 372 alice :- first" in lines
    assert ":irc.example.org 372 alice :- second" in lines
    assert lines[-1].startswith(":irc.example.org 376 ")


def test_cap_negotiation_holds_registration_until_cap_end(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h) as c:
        c.send("CAP LS 302")
        offered = c.expect(" LS ").split(" LS :", 1)[1].split()
        assert offered == sorted(offered)
        assert {"echo-message", "multi-prefix", "server-time", "userhost-in-names"} <= set(offered)
        c.send("NICK alice")
        c.send("USER a 0 * :A")
        c.send("CAP REQ :echo-message unknown-cap")
        assert "NAK" in c.expect(" NAK ")
        c.send("CAP REQ :echo-message")
        c.expect(" ACK ")
        c.send("PING early")
        before_end = c.expect("PONG")
        assert " 001 " not in "".join(c.seen)
        assert before_end.endswith("early")
        c.send("CAP END")
        c.expect(" 001 alice ")


def test_commands_before_registration_get_451(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h) as c:
        c.send("JOIN :")  # what irssi sends first
        assert c.expect(" 451 ").startswith(":chatsvc 451 * ")
        c.send("PRIVMSG #lobby :hi")
        c.expect(" 451 ")
        c.send("PASS whatever")  # accepted and ignored
        c.register("alice")


def test_user_needs_four_parameters(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h) as c:
        c.send("NICK alice")
        c.send("USER a 0 *")
        assert c.expect(" 461 ").endswith("USER :Not enough parameters")


# --- one name space -----------------------------------------------------------------------


def test_nick_collision_across_both_protocols(irc_server: Any) -> None:
    h = irc_server()
    with logged_in(h.host, h.port, "bob") as bob, irc_client(h) as c:
        c.send("NICK BOB")
        c.send("USER x 0 * :x")
        assert c.expect(" 433 ") == ":chatsvc 433 * BOB :Nickname is already in use"
        c.send("NICK carol")
        c.expect(" 001 carol ")
        with RawClient(h.host, h.port) as line_carol:
            assert line_carol.login("Carol") == "! name taken: Carol"
        assert sorted(h.hub.names()) == ["bob", "carol"]
        protocols = {u["name"]: u["protocol"] for u in h.hub.users()}
        assert protocols == {"bob": "line", "carol": "irc"}
        bob.send("/quit")


@pytest.mark.parametrize("nick", ["admin", "Server", "no#pe", "a" * 33, "é"])
def test_names_chatsvc_refuses_are_erroneous_nicknames(irc_server: Any, nick: str) -> None:
    h = irc_server()
    with irc_client(h) as c:
        c.send(f"NICK {nick}")
        assert c.expect(" 432 ").startswith(f":chatsvc 432 * {nick} :Erroneous nickname")


def test_nick_changes_reach_both_protocols_and_keep_one_name_space(irc_server: Any) -> None:
    h = irc_server()
    with (
        irc_client(h, "alice") as alice,
        irc_client(h, "carol") as carol,
        logged_in(h.host, h.port, "bob") as bob,
    ):
        for c in (alice, carol):
            c.send("JOIN #lobby")
            c.expect(" 366 ")
        alice.send("NICK alicia")
        assert alice.expect(" NICK ") == ":alice!alice@chatsvc NICK :alicia"
        assert carol.expect(" NICK ") == ":alice!alice@chatsvc NICK :alicia"
        bob.expect("* alice is now known as alicia")
        alice.send("NICK Bob")
        assert alice.expect(" 433 ") == ":chatsvc 433 alicia Bob :Nickname is already in use"
        alice.send("NICK ALICIA")  # a change of case only
        alice.expect(":alicia!alicia@chatsvc NICK :ALICIA")
        with RawClient(h.host, h.port) as line_alice:
            assert line_alice.login("alice").startswith("* hello alice")  # released
        alice.send("PRIVMSG bob :from the new name")
        bob.expect("[private] ALICIA: from the new name")
        alice.send("USER a 0 * :A")
        alice.expect(" 462 ")


def test_whowas_remembers_irc_users_that_left(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        with irc_client(h) as gone:
            gone.send("NICK dave")
            gone.send("USER dv 0 * :Dave D")
            gone.expect(" 001 ")
            gone.send("QUIT")
            gone.expect_eof()
        alice.send("WHOWAS dave")
        assert alice.expect(" 314 ") == ":chatsvc 314 alice dave dv chatsvc * :Dave D"
        alice.expect(" 369 alice dave ")
        alice.send("WHOWAS nobody")
        alice.expect(" 406 alice nobody ")
        alice.expect(" 369 alice nobody ")


# --- the same rooms, one order ------------------------------------------------------------


def test_irc_and_line_clients_see_each_others_lines_in_one_order(irc_server: Any) -> None:
    h = irc_server()
    with (
        irc_client(h, "alice", caps=("echo-message",)) as alice,
        logged_in(h.host, h.port, "bob") as bob,
    ):
        alice.send("JOIN #lobby")
        alice.expect(" 366 alice #lobby ")
        bob.expect("* alice joined lobby")
        n = 30
        go = threading.Barrier(2)

        def irc_side() -> None:
            go.wait(5)
            for i in range(n):
                alice.send(f"PRIVMSG #lobby :a{i}")

        sender = threading.Thread(target=irc_side)
        sender.start()
        go.wait(5)
        for i in range(n):
            bob.send(f"b{i}")
        sender.join(5)

        chat = re.compile(r"^(?::(\w+)!\S+ PRIVMSG #lobby :|\[lobby\] (\w+): )([ab]\d+)$")

        def order(client: RawClient) -> list[tuple[str, str]]:
            seen: list[tuple[str, str]] = []
            while len(seen) < 2 * n:
                line = client.read_line()
                assert line is not None
                m = chat.match(line)
                if m:
                    seen.append((m.group(1) or m.group(2), m.group(3)))
            return seen

        irc_order, line_order = order(alice), order(bob)
        assert irc_order == line_order
        assert [t for s, t in irc_order if s == "alice"] == [f"a{i}" for i in range(n)]


def test_join_names_topic_part_and_channel_case(irc_server: Any) -> None:
    h = irc_server(irc={"topics": {"work": "Work things"}})
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob") as bob:
        bob.send("/join work")
        bob.expect("you are now in work")
        alice.send("JOIN #WORK,#nope")
        assert alice.expect(" JOIN ") == ":alice!alice@chatsvc JOIN #work"
        assert alice.read_line() == ":chatsvc 332 alice #work :Work things"
        names = alice.read_line()
        assert names is not None and names.startswith(":chatsvc 353 alice = #work :")
        assert sorted(names.split(":", 2)[2].split()) == ["alice", "bob"]
        assert alice.read_line() == ":chatsvc 366 alice #work :End of /NAMES list"
        assert alice.read_line() == ":chatsvc 403 alice #nope :No such channel"
        bob.expect("* alice joined work")
        alice.send("TOPIC #lobby")
        assert alice.expect(" 331 ") == ":chatsvc 331 alice #lobby :No topic is set"
        alice.send("TOPIC #work :new")
        alice.expect(" 482 alice #work ")
        alice.send("PART #work :see you")
        assert alice.expect(" PART ") == ":alice!alice@chatsvc PART #work :see you"
        bob.expect("* alice left work")
        alice.send("PART #work")
        alice.expect(" 442 alice #work ")


def test_join_zero_leaves_every_channel(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        alice.send("JOIN #lobby,#work")
        alice.expect(" 366 alice #work ")
        alice.send("JOIN 0")
        parts = {alice.expect(" PART ").split()[-1], alice.expect(" PART ").split()[-1]}
        assert parts == {"#lobby", "#work"}
        assert h.hub.room_members()["lobby"] == []


def test_private_messages_and_notices_both_ways(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob") as bob:
        alice.send("PRIVMSG bob :psst")
        bob.expect("[private] alice: psst")
        bob.send("/msg alice hi back")
        assert alice.expect("PRIVMSG") == ":bob!bob@chatsvc PRIVMSG alice :hi back"
        alice.send("NOTICE bob :fyi")
        bob.expect("[private] alice: fyi")
        alice.send("PRIVMSG nobody :x")
        assert alice.expect(" 401 ") == ":chatsvc 401 alice nobody :No such nick/channel"
        alice.send("NOTICE nobody :x")  # never answered
        assert all(" 401 " not in ln for ln in alice.sync())


def test_actions_and_line_protocol_slash_me(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob") as bob:
        alice.send("JOIN #lobby")
        alice.expect(" 366 ")
        alice.send("PRIVMSG #lobby :\x01ACTION waves\x01")
        bob.expect("[lobby] alice: /me waves")
        bob.send("//me grins")
        assert alice.expect("PRIVMSG") == ":bob!bob@chatsvc PRIVMSG #lobby :\x01ACTION grins\x01"


def test_queries_who_whois_ison_list_mode(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob"):
        alice.send("WHOIS bob")
        assert alice.expect(" 311 ") == ":chatsvc 311 alice bob bob chatsvc * :bob"
        assert alice.expect(" 319 ") == ":chatsvc 319 alice bob :#lobby"
        assert "(line)" in alice.expect(" 312 ")
        alice.expect(" 318 alice bob ")
        alice.send("WHOIS ghost")
        alice.expect(" 401 alice ghost ")
        alice.expect(" 318 alice ghost ")
        alice.send("WHO #lobby")
        assert alice.expect(" 352 ").startswith(":chatsvc 352 alice #lobby bob ")
        alice.expect(" 315 alice #lobby ")
        alice.send("ISON bob ghost Alice")
        assert alice.expect(" 303 ") == ":chatsvc 303 alice :bob alice"
        alice.send("LIST")
        assert alice.expect(" 322 ") == ":chatsvc 322 alice #lobby 1 :"
        alice.expect(" 323 ")
        alice.send("MODE #lobby")
        assert alice.expect(" 324 ") == ":chatsvc 324 alice #lobby +nt"
        alice.send("MODE #lobby +o alice")
        alice.expect(" 482 ")
        alice.send("MODE alice")
        alice.expect(" 221 alice +")
        alice.send("AWAY :lunch")
        alice.expect(" 306 ")


def test_error_numerics(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        for sent, code in [
            ("FROB x", "421 alice FROB"),
            ("JOIN", "461 alice JOIN"),
            ("PRIVMSG #lobby :not joined", "404 alice #lobby"),
            ("PRIVMSG #nope :x", "403 alice #nope"),
            ("PRIVMSG", "411 alice"),
            ("PRIVMSG bob", "412 alice"),
            ("PART #lobby", "442 alice #lobby"),
            ("PING", "409 alice"),
            ("KICK #lobby bob", "482 alice #lobby"),
        ]:
            alice.send(sent)
            assert f":chatsvc {code} " in alice.expect(re.compile(r"^:chatsvc \d{3} ")), sent


def test_ping_echoes_the_token_and_quit_ends_with_error(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob") as bob:
        alice.send("JOIN #lobby")
        alice.expect(" 366 ")
        alice.send("PING :some token")
        assert alice.expect("PONG") == ":chatsvc PONG chatsvc :some token"
        with irc_client(h, "carol", caps=("userhost-in-names",)) as carol:
            carol.send("JOIN #lobby")
            names = carol.expect(" 353 ")
            assert "alice!alice@chatsvc" in names and "carol!carol@chatsvc" in names
            alice.send("QUIT :gone")
            assert alice.expect("ERROR").startswith("ERROR :Closing link")
            alice.expect_eof()
            bob.expect("* alice left lobby")
            assert carol.expect("QUIT") == ":alice!alice@chatsvc QUIT :Quit: gone"


# --- hostile input ------------------------------------------------------------------------


def test_overlong_lines_are_answered_417_and_the_session_goes_on(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        alice.send("PRIVMSG #lobby :" + "x" * 600)
        alice.expect(" 417 alice ")
        alice.send_raw(b"@" + b"t" * 20000 + b" PING x\r\n")  # past the splitter's bound
        alice.expect(" 417 alice ")
        alice.send("PING still-here")
        alice.expect("still-here")


def test_nul_invalid_utf8_and_control_characters_are_refused(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob") as bob:
        alice.send("JOIN #lobby")
        alice.expect(" 366 ")
        alice.send_raw(b"PRIVMSG #lobby :bad \xff\xfe\r\n")
        assert alice.expect("FAIL") == ":chatsvc FAIL PRIVMSG INVALID_UTF8 :Invalid UTF-8"
        alice.send_raw(b"PRIVMSG #lobby :nul\x00byte\r\n")
        alice.expect("INVALID_UTF8")
        alice.send("PRIVMSG #lobby :bell\x07")
        assert "control characters" in alice.expect("Message refused")
        alice.send("PRIVMSG #lobby :\x02bold\x02 and \x0304red")
        bob.expect("[lobby] alice: bold and red")
        assert all("bad" not in ln and "nul" not in ln and "bell" not in ln for ln in bob.seen)


def test_ctcp_other_than_action_is_dropped_and_forged_prefixes_ignored(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob") as bob:
        alice.send("JOIN #lobby")
        alice.expect(" 366 ")
        alice.send("PRIVMSG bob :\x01VERSION\x01")
        alice.send(":bob!bob@chatsvc PRIVMSG #lobby :forged?")
        bob.expect("[lobby] alice: forged?")
        assert all("VERSION" not in ln for ln in bob.seen)


def test_flood_control_applies_as_to_line_clients(irc_server: Any) -> None:
    h = irc_server(flood_rate=1.0, flood_burst=5, flood_strikes=3)
    with irc_client(h, "alice") as alice:
        alice.send_raw(b"PING x\r\n" * 30)
        lines = alice.lines_until_eof()
        assert any("slow down" in ln for ln in lines)
        assert lines[-1] == "ERROR :Closing link: flooding; disconnected"


def test_login_timeout_closes_an_unregistered_irc_client(irc_server: Any) -> None:
    h = irc_server(login_timeout=1.0)
    with irc_client(h) as c:
        c.send("NICK alice")
        assert c.lines_until_eof(timeout=5.0)[-1].startswith("ERROR :Closing link: no name")


def test_send_queue_cut_off_applies(irc_server: Any) -> None:
    h = irc_server(send_queue_bytes=4096)
    with irc_client(h, "slow") as slow:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        slow.send("JOIN #lobby")
        slow.expect(" 366 ")
        for _ in range(2000):  # more than the kernel buffers hold; slow reads nothing
            h.hub.announce(events.Announcement("x" * 300), "lobby")
        wait_until(lambda: h.hub.stats()["drops"].get("send_queue_exceeded"), what="the cut")
        assert h.hub.names() == []


# --- operators and lifecycle --------------------------------------------------------------


def test_kick_broadcast_and_shutdown_reach_irc_clients(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, irc_client(h, "carol") as carol:
        for c in (alice, carol):
            c.send("JOIN #lobby")
            c.expect(" 366 ")
        alice.expect(":carol!carol@chatsvc JOIN #lobby")
        h.hub.announce(events.Announcement("maintenance at noon", "lobby"), "lobby")
        assert alice.expect("NOTICE") == ":chatsvc NOTICE #lobby :maintenance at noon"
        assert h.hub.kick("carol", "spam").kicked
        assert carol.expect("ERROR") == "ERROR :Closing link: kicked (spam)"
        assert alice.expect("KICK") == ":chatsvc KICK #lobby carol :spam"
        h.stop("upgrade")
        lines = alice.lines_until_eof()
        assert ":chatsvc NOTICE * :server shutting down: upgrade" in lines
        assert lines[-1] == "ERROR :Closing link: server shutting down"


def test_shared_limits_refuse_irc_connections_with_an_error_line(irc_server: Any) -> None:
    h = irc_server(max_clients=1)
    with logged_in(h.host, h.port, "bob"), irc_client(h) as c:
        assert c.lines_until_eof() == ["ERROR :Closing link: server full, try again later"]


def test_no_irc_listener_unless_enabled(irc_server: Any) -> None:
    h = irc_server(irc={"enabled": False})
    assert h.server.irc_address is None


def test_the_entry_point_logs_the_irc_port(tmp_path: Path, short_tmp: Path) -> None:
    sections = _sections({**TEST_DEFAULTS, "level": "info", "socket": str(short_tmp / "a.sock")})
    sections["irc"] = dict(IRC_DEFAULTS)
    proc = ServerProcess(["--config", str(write_config(tmp_path / "c.toml", sections))])
    try:
        started = proc.wait_event("server_started", 10)
        port = int(started["irc_port"])
        assert port and port != started["port"]
        with IrcClient(started["host"], port) as c:
            c.register("alice")
    finally:
        proc.kill()


def test_who_and_whois_show_what_user_gave(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h) as alice, logged_in(h.host, h.port, "bob"):
        alice.send("NICK alice")
        alice.send("USER al1ce 0 * :Alice \x02Liddell\x02")
        alice.expect(" 001 ")
        alice.send("WHO alice")
        assert alice.expect(" 352 ") == (
            ":chatsvc 352 alice * al1ce chatsvc chatsvc alice H :0 Alice Liddell"
        )
        alice.send("WHO *")
        lines = alice.sync()
        assert [ln.split()[7] for ln in lines if " 352 " in ln] == ["alice", "bob"]
        assert lines[-1] == ":chatsvc 315 alice * :End of /WHO list"
        alice.send("AWAY :out")
        alice.expect(" 306 ")
        alice.send("WHOIS alice")
        assert alice.expect(" 311 ") == ":chatsvc 311 alice alice al1ce chatsvc * :Alice Liddell"
        assert alice.expect(" 301 ") == ":chatsvc 301 alice alice :out"


def test_help_and_links(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        alice.send("HELP privmsg")
        assert alice.expect(" 704 ").startswith(":chatsvc 704 alice PRIVMSG :PRIVMSG #room|nick")
        alice.expect(" 706 alice PRIVMSG ")
        alice.send("HELP")
        alice.expect(" 706 alice * ")
        alice.send("HELP FROB")
        alice.expect(" 524 alice FROB ")
        alice.send("LINKS")
        assert alice.expect(" 364 ") == ":chatsvc 364 alice chatsvc chatsvc :0 chatsvc"
        alice.expect(" 365 alice * ")


# --- a real IRC client ----------------------------------------------------------------


def _write_fifo(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ii holds the reading end open
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@pytest.mark.skipif(shutil.which("ii") is None, reason="the ii IRC client is not installed")
def test_the_ii_client_chats_with_a_line_client(irc_server: Any, tmp_path: Path) -> None:
    h = irc_server()
    host, port = h.server.irc_address
    proc = subprocess.Popen(
        ["ii", "-s", host, "-p", str(port), "-n", "iiuser", "-i", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server_dir = tmp_path / host
        wait_until(lambda: (server_dir / "in").exists(), what="ii's server fifo")
        with logged_in(h.host, h.port, "bob") as bob:
            wait_until(lambda: "iiuser" in h.hub.names(), what="ii registered")
            _write_fifo(server_dir / "in", "/j #lobby\n")
            bob.expect("* iiuser joined lobby")
            chan = server_dir / "#lobby"
            wait_until(lambda: (chan / "in").exists(), what="ii's channel fifo")
            _write_fifo(chan / "in", "hello from ii\n")
            bob.expect("[lobby] iiuser: hello from ii")
            bob.send("hi ii")
            wait_until(
                lambda: "<bob> hi ii" in (chan / "out").read_text(errors="replace"),
                what="ii's channel log",
            )
    finally:
        proc.terminate()
        proc.wait(5)


def test_names_of_one_room_named_many_times_is_answered_once(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        alice.send("NAMES #lobby,#LOBBY,#lobby,#nope,#nope")
        lines = alice.sync()
        assert [ln.split()[3] for ln in lines if " 366 " in ln] == ["#lobby", "#nope"]


def test_whox_fields_come_in_the_standard_order(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice, logged_in(h.host, h.port, "bob"):
        isupport = " ".join(ln for ln in alice.seen if " 005 " in ln)
        assert " WHOX " in isupport + " "
        alice.send("WHO bob %rnt,42")
        assert alice.expect(" 354 ") == ":chatsvc 354 alice 42 bob :bob"
        alice.expect(" 315 alice bob ")
        alice.send("WHO #lobby %cuhsnfdlaor")
        reply = alice.expect(" 354 ").split()
        channel, user, host, server, nick, flags, hops, idle, account, oplevel = reply[3:13]
        assert (channel, user, host, server, nick) == ("#lobby", "bob", "chatsvc", "chatsvc", "bob")
        assert (flags, hops, account, oplevel, reply[13]) == ("H", "0", "0", "n/a", ":bob")
        assert idle.isdigit()


def test_motd_and_topics_follow_a_reload(irc_server: Any) -> None:
    h = irc_server(irc={"motd": "old"})
    with irc_client(h, "alice") as alice:
        h.hub.apply(config.with_overrides(h.hub.cfg, irc={"motd": "new", "topics": {"team": "T"}}))
        alice.send("MOTD")
        assert alice.expect(" 372 ") == ":chatsvc 372 alice :- new"
        alice.send("TOPIC #team")
        assert alice.expect(" 332 ") == ":chatsvc 332 alice #team :T"


def test_an_address_ban_refuses_irc_connections_too(irc_server: Any) -> None:
    h = irc_server()
    with irc_client(h, "alice") as alice:
        assert h.hub.ban_address("127.0.0.1", 60, "spam") == 1
        assert alice.expect("ERROR") == "ERROR :Closing link: kicked (spam)"
    with irc_client(h) as again:
        assert again.lines_until_eof() == [
            "ERROR :Closing link: your address is banned from this server"
        ]
