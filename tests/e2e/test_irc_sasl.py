"""IRC logins to accounts end to end: SASL PLAIN and PASS against the real ``chatsvc``.

Each test starts the entry point in a subprocess with ``[auth]`` (a store in the
test's temp dir, small throttle delays) and an IRC listener, adds accounts with
the real ``chatsvc-admin``, and talks IRC over real sockets (TLS for the
``tls_port`` tests).  Waiting is by condition (an expected line, EOF, a log
event), never by sleeping.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.e2e.conftest import TEST_DEFAULTS, _sections
from tests.e2e.helpers import RawClient, ServerProcess, logged_in, write_config
from tests.e2e.test_accounts_e2e import admin_cli
from tests.e2e.test_irc import IrcClient
from tests.e2e.test_tls import outside_address
from tests.e2e.tlsutil import Pki, TlsClient, client_context, make_pki

PASSWORD = "open sesame"
NUMERIC = re.compile(r" (900|903|904|905|906|907|908|001|432|433|462|464) ")


class IrcTlsClient(TlsClient):
    """An IRC connection over TLS (CRLF lines)."""

    def send(self, line: str) -> None:
        self.send_raw(line.encode() + b"\r\n")

    def read_line(self, timeout: Optional[float] = None) -> Optional[str]:
        text = super().read_line(timeout)
        return None if text is None else text.rstrip("\r")


class Server:
    def __init__(self, proc: ServerProcess, started: dict[str, Any], sock: Path) -> None:
        self.proc = proc
        self.sock = sock
        self.host = str(started["host"])
        self.port = int(started["port"])
        self.irc_port = int(started["irc_port"]) if started.get("irc_port") else 0
        self.irc_tls_port = int(started["irc_tls_port"]) if started.get("irc_tls_port") else 0

    def add(self, name: str, password: str = PASSWORD) -> None:
        done = admin_cli(
            self.sock, "account", "add", name, "--password-stdin", stdin=password + "\n"
        )
        assert done.returncode == 0, done.stderr

    def irc(self, host: Optional[str] = None) -> IrcClient:
        return IrcClient(host or self.host, self.irc_port)

    def events(self) -> list[dict[str, Any]]:
        list(self.proc.iter_events(0.3))
        return list(self.proc.events)


StartServer = Callable[..., Server]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start(tmp_path: Path, short_tmp: Path) -> Iterator[StartServer]:
    procs: list[ServerProcess] = []

    def run(
        mode: str = "registered",
        irc: Optional[dict[str, Any]] = None,
        tls: Optional[dict[str, Any]] = None,
        host: str = "127.0.0.1",
        **auth: Any,
    ) -> Server:
        flat = {**TEST_DEFAULTS, "level": "info", "host": host, "socket": str(short_tmp / "a.sock")}
        sections = _sections(flat)
        sections["irc"] = {"enabled": True, "port": 0, **(irc or {})}
        if tls is not None:
            sections["tls"] = tls
        sections["auth"] = {
            "mode": mode,
            "store": str(tmp_path / "accounts.db"),
            "throttle_base": 0.3,
            "throttle_cap": 0.6,
            **auth,
        }
        proc = ServerProcess(["--config", str(write_config(tmp_path / "chatsvc.toml", sections))])
        procs.append(proc)
        started = proc.wait_event("server_started", 10)
        return Server(proc, started, short_tmp / "a.sock")

    yield run
    for p in procs:
        p.kill()


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def sasl_begin(c: RawClient, v302: bool = True) -> str:
    """CAP LS (302) and CAP REQ sasl; the CAP LS line."""
    c.send("CAP LS 302" if v302 else "CAP LS")
    ls = c.expect(" CAP * LS ")
    c.send("CAP REQ :sasl")
    c.expect(" CAP * ACK ")
    return ls


def answer(c: RawClient) -> str:
    """The next numeric of the kind these tests wait for."""
    return c.expect(NUMERIC)


def finish(c: RawClient, nick: str) -> str:
    """NICK, USER, CAP END: the 001 (or refusal) line."""
    c.send(f"NICK {nick}")
    c.send(f"USER {nick} 0 * :{nick}")
    c.send("CAP END")
    return answer(c)


# --- SASL PLAIN ---------------------------------------------------------------------


def test_sasl_plain_logs_in_and_the_nick_is_the_account(start: StartServer) -> None:
    srv = start()
    srv.add("alice")
    with srv.irc() as c, logged_in(srv.host, srv.port, "bob") as bob:
        ls = sasl_begin(c)
        assert "sasl=PLAIN" in ls.split()
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "alice", PASSWORD))
        logged = answer(c)
        assert " 900 * alice!alice@chatsvc alice :You are now logged in as alice" in logged
        assert " 903 * :SASL authentication successful" in answer(c)
        # NICK differs from the account: the account name is the nick (one name space)
        welcome = finish(c, "someoneelse")
        assert " 001 alice " in welcome
        c.send("JOIN #lobby")
        c.send("PRIVMSG #lobby :hi from sasl")
        bob.expect("alice: hi from sasl")
        c.send("NICK other")  # the nick stays the account's name
        assert " 432 alice other " in answer(c)
        c.send("AUTHENTICATE PLAIN")  # no logging in again after registration
        assert " 462 alice " in answer(c)
    events = srv.events()
    assert any(e["event"] == "auth_ok" and e["name"] == "alice" for e in events)


def test_sasl_failure_retry_and_the_password_never_logged(start: StartServer) -> None:
    srv = start()
    srv.add("alice")
    with srv.irc() as c:
        assert "sasl" in sasl_begin(c, v302=False).split()  # no value before CAP 302
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("alice", "alice", "guess-one"))
        assert " 904 * :SASL authentication failed: wrong name or password" in answer(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("alice", "alice", PASSWORD))
        assert " 900 " in answer(c)
        assert " 903 " in answer(c)
        c.send("AUTHENTICATE PLAIN")
        assert " 907 * " in answer(c)
        assert " 001 alice " in finish(c, "alice")
    events = srv.events()
    failed = [e for e in events if e["event"] == "auth_failed"]
    assert [(e["name"], e["reason"]) for e in failed] == [("alice", "wrong_password")]
    text = "\n".join(srv.proc.raw_lines)
    assert "guess-one" not in text and PASSWORD not in text


def test_sasl_abort_too_long_unknown_mechanism_and_malformed(start: StartServer) -> None:
    srv = start()
    srv.add("alice")
    with srv.irc() as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE *")
        assert " 906 * " in answer(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + "A" * 401)
        assert " 905 * " in answer(c)
        c.send("AUTHENTICATE SCRAM-SHA-256")
        assert " 908 * PLAIN :are available SASL mechanisms" in answer(c)
        assert " 904 * " in answer(c)
        for bad in ("!!!", plain("bob", "alice", PASSWORD), plain("", "", PASSWORD)):
            c.send("AUTHENTICATE PLAIN")
            c.expect("AUTHENTICATE +")
            c.send("AUTHENTICATE " + bad)
            assert " 904 * " in answer(c), bad
        c.send("AUTHENTICATE PLAIN")  # registration during SASL: aborted, then a guest
        c.expect("AUTHENTICATE +")
        c.send("NICK guest")
        c.send("USER guest 0 * :guest")
        c.send("CAP END")
        assert " 906 * " in answer(c)
        assert " 001 guest " in answer(c)


@pytest.mark.parametrize("length", [152, 400, 800])
def test_sasl_chunks_of_400_bytes(start: StartServer, length: int) -> None:
    """A response is cut into 400-byte lines; one of exactly 400 is followed by ``+``."""
    password = "p" * (length * 3 // 4 - len("\0carol\0"))
    response = plain("", "carol", password)
    assert len(response) == length
    srv = start()
    srv.add("carol", password)
    with srv.irc() as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        for i in range(0, len(response), 400):
            c.send("AUTHENTICATE " + response[i : i + 400])
        if len(response) % 400 == 0:
            c.send("AUTHENTICATE +")
        assert " 900 " in answer(c)
        assert " 903 " in answer(c)
        assert " 001 carol " in finish(c, "carol")


def test_open_mode_offers_no_sasl(start: StartServer) -> None:
    srv = start("open")
    with srv.irc() as c:
        c.send("CAP LS 302")
        assert "sasl" not in c.expect(" CAP * LS ")
        c.send("CAP REQ :sasl")
        c.expect(" CAP * NAK sasl")
        c.send("AUTHENTICATE PLAIN")
        assert " 904 * " in answer(c)
        c.send("PASS bouncer:password")  # e.g. meant for a bouncer: ignored without accounts
        assert " 001 dora " in finish(c, "dora")


# --- PASS -------------------------------------------------------------------------


def test_pass_logs_in_a_nick_with_an_account(start: StartServer) -> None:
    srv = start()
    srv.add("alice")
    srv.add("bob", "bob's: secret")
    with srv.irc() as c:
        c.send(f"PASS :{PASSWORD}")
        c.send("NICK alice")
        c.send("USER alice 0 * :Alice")
        assert " 001 alice " in answer(c)
    with srv.irc() as c:  # PASS account:password names the account
        c.send("PASS :bob:bob's: secret")
        c.send("NICK whoever")
        c.send("USER x 0 * :x")
        assert " 001 bob " in answer(c)
    with srv.irc() as c:  # a free name: PASS is not needed and ignored
        c.send("PASS :anything")
        c.send("NICK dora")
        c.send("USER dora 0 * :Dora")
        assert " 001 dora " in answer(c)


def test_a_wrong_pass_is_464_and_the_connection_closes(start: StartServer) -> None:
    srv = start()
    srv.add("alice")
    with srv.irc() as c:
        c.send("PASS wrong")
        c.send("NICK alice")
        c.send("USER alice 0 * :Alice")
        assert " 464 * :Password incorrect: wrong name or password" in answer(c)
        c.expect("ERROR :Closing link: wrong name or password")
        c.expect_eof()


def test_a_protected_nick_without_password_is_refused_and_another_nick_works(
    start: StartServer,
) -> None:
    srv = start()
    srv.add("alice")
    with srv.irc() as c:
        c.send("NICK alice")
        c.send("USER alice 0 * :Alice")
        assert " 464 * :Password required" in answer(c)
        c.send("NICK alicia")
        assert " 001 alicia " in answer(c)
        c.send("NICK alice")  # and not by a rename either
        assert " 432 alicia alice " in answer(c)


def test_required_mode_refuses_every_nick_without_a_login(start: StartServer) -> None:
    srv = start("required")
    srv.add("alice")
    with srv.irc() as c:
        c.send("NICK stranger")
        c.send("USER s 0 * :s")
        assert " 464 * " in answer(c)
    with srv.irc() as c:  # an unknown name fails like a wrong password
        c.send("PASS whatever")
        c.send("NICK stranger")
        c.send("USER s 0 * :s")
        assert " 464 * :Password incorrect: wrong name or password" in answer(c)
    with srv.irc() as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "alice", PASSWORD))
        assert " 900 " in answer(c)
        assert " 903 " in answer(c)
        assert " 001 alice " in finish(c, "alice")
    reasons = [e["reason"] for e in srv.events() if e["event"] == "auth_failed"]
    assert reasons == ["unknown_name"]


def test_failed_logins_are_throttled(start: StartServer) -> None:
    srv = start(free_failures=1, throttle_base=30.0, throttle_cap=30.0)
    srv.add("alice")
    with srv.irc() as c:
        sasl_begin(c)
        for _ in range(2):
            c.send("AUTHENTICATE PLAIN")
            c.expect("AUTHENTICATE +")
            c.send("AUTHENTICATE " + plain("", "alice", "nope"))
            assert "wrong name or password" in answer(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "alice", PASSWORD))  # right, but throttled
        assert re.search(r" 904 \* :.*too many failed logins, try again in \d+ s", answer(c))
    assert any(e["event"] == "auth_throttled" for e in srv.events())


# --- one name space -----------------------------------------------------------------


def test_an_irc_user_and_a_line_user_compete_for_an_account_name(start: StartServer) -> None:
    srv = start()
    srv.add("alice")
    with srv.irc() as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "alice", PASSWORD))
        assert " 903 " in (answer(c), answer(c))[1]
        assert " 001 alice " in finish(c, "alice")
        with RawClient(srv.host, srv.port) as line:  # the IRC user holds the name
            line.expect("please enter your name")
            line.send("alice")
            line.expect("! name taken: alice")
    # the line user holds the name: the IRC login goes on as a guest
    with logged_in_with_password(srv, "alice") as line, srv.irc() as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "alice", PASSWORD))
        assert " 903 " in (answer(c), answer(c))[1]
        assert " 433 * alice " in finish(c, "alice")
        c.send("NICK alice2")
        assert " 001 alice2 " in answer(c)
        c.send("PRIVMSG alice :hello")
        line.expect("alice2: hello")


def logged_in_with_password(srv: Server, name: str) -> RawClient:
    c = RawClient(srv.host, srv.port)
    c.expect("please enter your name")
    c.send(name)
    c.expect(f"* password for {name}:")
    c.send(PASSWORD)
    c.expect(f"* hello {name}")
    return c


# --- TLS and the plain-text rule ------------------------------------------------------


def test_sasl_and_pass_over_irc_tls(start: StartServer, pki: Pki) -> None:
    """Over ``[irc] tls_port`` a password may come from another host; over plain TCP
    from there it is refused (904 / 464) before it is checked."""
    here = outside_address()
    srv = start(
        host="0.0.0.0" if here else "127.0.0.1",
        irc={"tls_port": 0},
        tls={"port": 0, "cert": pki.path("server.pem"), "key": pki.path("server-key.pem")},
    )
    srv.add("alice")
    srv.add("bob")
    address = here or "127.0.0.1"
    with IrcTlsClient(address, srv.irc_tls_port, client_context(pki.ca)) as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        c.expect("AUTHENTICATE +")
        c.send("AUTHENTICATE " + plain("", "alice", PASSWORD))
        assert " 900 " in answer(c)
        assert " 903 " in answer(c)
        assert " 001 alice " in finish(c, "alice")
    with IrcTlsClient(address, srv.irc_tls_port, client_context(pki.ca)) as c:
        c.send(f"PASS :{PASSWORD}")
        c.send("NICK bob")
        c.send("USER bob 0 * :Bob")
        assert " 001 bob " in answer(c)
    if here is None:
        return  # no other address: the plain-text refusal is tested by accounts' tests
    with srv.irc(here) as c:
        sasl_begin(c)
        c.send("AUTHENTICATE PLAIN")
        line = answer(c)
        assert " 904 * :SASL authentication failed: a password needs a TLS connection" in line
    with srv.irc(here) as c:
        c.send(f"PASS :{PASSWORD}")
        assert "464 * :Password incorrect: a password needs a TLS connection" in answer(c)
        c.expect_eof()
    reasons = [e.get("reason") for e in srv.events() if e["event"] == "auth_failed"]
    assert reasons == ["plaintext", "plaintext"]
    assert json.dumps(srv.events()).count(PASSWORD) == 0
