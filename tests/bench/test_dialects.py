"""The load generator's IRC dialects: what a client sends and when it is logged in."""

from __future__ import annotations

from bench import dialects


def test_irc_registers_first_and_joins_at_the_end_of_the_motd() -> None:
    irc = dialects.get("irc")
    assert irc.login("r1", "lobby") == b"NICK r1\r\nUSER r1 0 * :r1\r\n"
    assert irc.login_next(b":srv 001 r1 :Welcome", "lobby") is None
    assert irc.login_next(b":srv 376 r1 :End of MOTD", "lobby") == b"JOIN #lobby\r\n"
    assert irc.login_next(b":srv 422 r1 :MOTD File is missing", "lobby") == b"JOIN #lobby\r\n"
    # senders of the plain dialect never ask for operator status
    assert irc.login_next(b":srv 376 s0 :End", "lobby", sends=True) == b"JOIN #lobby\r\n"
    assert irc.login_done(b":srv 366 r1 #lobby :End of NAMES", "lobby")
    assert not irc.login_done(b":srv 376 r1 :End of MOTD", "lobby")


def test_irc_without_a_room_is_logged_in_at_the_end_of_the_motd() -> None:
    irc = dialects.get("irc")
    assert irc.login_next(b":srv 376 u1 :End of MOTD", "") is None
    assert irc.login_done(b":srv 376 u1 :End of MOTD", "")
    assert irc.login_done(b":srv 422 u1 :MOTD File is missing", "")


def test_no_motd_is_not_an_error_but_other_error_numerics_are() -> None:
    irc = dialects.get("irc")
    assert not irc.login_error(b":srv 422 u1 :MOTD File is missing")
    assert irc.login_error(b":srv 433 * u1 :Nickname is already in use")
    assert irc.login_error(b":srv 451 u1 JOIN :You have not registered")
    assert irc.login_error(b"ERROR :Closing link")
    assert not irc.login_error(b":srv 001 u1 :Welcome")


def test_irc_oper_senders_become_operators_before_joining() -> None:
    oper = dialects.get("irc-oper")
    assert not oper.echoes
    assert oper.login_next(b":srv 376 s0 :End of MOTD", "lobby", sends=True) == (
        b"OPER bench bench\r\nMODE s0 +F\r\nJOIN #lobby\r\n"
    )
    assert oper.login_next(b":srv 376 r0 :End of MOTD", "lobby") == b"JOIN #lobby\r\n"


def test_the_chat_dialect_needs_no_second_step() -> None:
    chat = dialects.get("chat")
    assert chat.echoes
    assert chat.login_next(b"* hello r1, you are in lobby", "lobby") is None
