"""The admin protocol's one definition: messages, request checks, codes and exit statuses."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from chatsvc import admin, adminproto
from chatsvc.adminproto import Code, RequestFailed, build_request, decode, parse_request


def test_every_command_has_a_handler_and_every_handler_a_command() -> None:
    assert set(admin._HANDLERS) == set(adminproto.COMMANDS)


def test_messages_have_the_documented_shapes() -> None:
    assert adminproto.greeting("1.2") == {"protocol": 1, "server": "chatsvc", "version": "1.2"}
    assert adminproto.is_greeting(adminproto.greeting("x"))
    assert not adminproto.is_greeting({"protocol": 2, "server": "chatsvc"})
    assert adminproto.success({"a": 1}) == {"ok": True, "protocol": 1, "result": {"a": 1}}
    assert adminproto.failure(Code.NOT_FOUND, "no") == {
        "ok": False,
        "protocol": 1,
        "code": "not_found",
        "error": "no",
    }
    assert adminproto.failure(Code.UNKNOWN_COMMAND, "x", "did you mean?")["hint"] == (
        "did you mean?"
    )
    line = adminproto.encode({"text": "caf\u00e9 \u202e"})
    assert line.endswith(b"\n") and line.isascii()
    assert decode(line) == {"text": "caf\u00e9 \u202e"}


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (adminproto.success({}), None),
        (adminproto.failure(Code.FAILED, "x"), None),
        ({"protocol": 1}, "no 'ok' field"),
        ({"ok": True}, "a success without a 'result' object"),
        ({"ok": False, "error": "x"}, "a failure without a 'code'"),
    ],
)
def test_reply_problem(reply: dict[str, Any], problem: str | None) -> None:
    assert adminproto.reply_problem(reply) == problem


def test_codes_and_exit_statuses() -> None:
    assert "internal" in adminproto.CODES and "busy" in adminproto.CODES
    assert adminproto.exit_status(Code.FORBIDDEN) == adminproto.EXIT_DENIED == 4
    assert adminproto.exit_status(Code.BUSY) == adminproto.EXIT_BUSY == 6
    for code in adminproto.CODES - {Code.FORBIDDEN, Code.BUSY}:
        assert adminproto.exit_status(code) == adminproto.EXIT_FAILED == 1


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"nope", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b"[" * 50_000, "nested deeper than 32 levels"),
        (b'{"cmd": "stats", "x": ' + b"{" * 33 + b"}" * 33 + b"}", "nested deeper"),
    ],
)
def test_decode_refuses(line: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode(line)


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert adminproto.nesting_depth(b'{"text": "[[[[{{{{\\"]]"}') == 1
    assert adminproto.nesting_depth(b"[[1], [[2]]]") == 3
    assert decode(b'{"cmd": "broadcast", "text": "' + b"[" * 1000 + b'"}')["cmd"] == "broadcast"


@pytest.mark.parametrize(
    ("message", "args"),
    [
        ({"cmd": "stats"}, {}),
        ({"cmd": "kick", "name": "bob", "reason": None}, {"name": "bob"}),
        (
            {"cmd": "kick", "name": "bob", "ban": 60, "ban_address": True},
            {"name": "bob", "ban": 60, "ban_address": True},
        ),
        (
            {"cmd": "ban", "address": "::ffff:0:1", "seconds": 1.5},
            {"address": str(ipaddress.ip_address("::ffff:0:1"))},  # as this Python writes it
        ),
        ({"cmd": "shutdown", "in": 0, "reason": "upgrade \u00e0 5 h"}, None),
    ],
)
def test_parse_request_accepts(message: dict[str, Any], args: dict[str, Any] | None) -> None:
    request = parse_request(message)
    assert request.cmd == message["cmd"]
    for key, value in (args or {}).items():
        assert request.args[key] == value


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        ({}, Code.UNKNOWN_COMMAND, "unknown command ''"),
        ({"cmd": ["kick"]}, Code.UNKNOWN_COMMAND, "unknown command"),
        ({"cmd": "kik"}, Code.UNKNOWN_COMMAND, "unknown command 'kik'"),
        ({"cmd": "kick"}, Code.BAD_REQUEST, "argument 'name': missing"),
        ({"cmd": "kick", "name": "bob", "resaon": "x"}, Code.BAD_REQUEST, "unknown for 'kick'"),
        ({"cmd": "kick", "name": "bob", "ban": True}, Code.BAD_REQUEST, "number of seconds"),
        ({"cmd": "kick", "name": "bob", "ban": 1e300}, Code.BAD_REQUEST, "from 0 to"),
        ({"cmd": "kick", "name": "bob", "ban": float("nan")}, Code.BAD_REQUEST, "from 0 to"),
        ({"cmd": "kick", "name": "b", "ban_address": True}, Code.BAD_REQUEST, "needs a 'ban'"),
        ({"cmd": "kick", "name": "b", "reason": "a\nb"}, Code.BAD_REQUEST, "one line"),
        ({"cmd": "kick", "name": "b", "reason": "a\u2028b"}, Code.BAD_REQUEST, "U+2028"),
        ({"cmd": "kick", "name": "b", "reason": "a\u200bb"}, Code.BAD_REQUEST, "U+200B"),
        ({"cmd": "shutdown", "reason": "\x1b]0;pwned\x07"}, Code.BAD_REQUEST, "control"),
        ({"cmd": "shutdown", "reason": ""}, Code.BAD_REQUEST, "must not be empty"),
        ({"cmd": "broadcast", "text": "x" * 401}, Code.BAD_REQUEST, "too long"),
        ({"cmd": "broadcast", "text": 5}, Code.BAD_REQUEST, "must be a string"),
        ({"cmd": "ban", "address": "1.2.3.4", "seconds": 0}, Code.BAD_REQUEST, "more than 0"),
        ({"cmd": "ban", "address": "host", "seconds": 5}, Code.BAD_REQUEST, "IP address"),
        ({"cmd": "unban", "address": "010.0.0.1"}, Code.BAD_REQUEST, "IP address"),
        ({"cmd": "unban"}, Code.BAD_REQUEST, "exactly one"),
        ({"cmd": "reload", "check": "yes"}, Code.BAD_REQUEST, "true or false"),
    ],
)
def test_parse_request_refuses(message: dict[str, Any], code: str, text: str) -> None:
    with pytest.raises(RequestFailed) as info:
        parse_request(message)
    assert info.value.code == code
    assert text in str(info.value)
    assert info.value.reply()["code"] == code


def test_unknown_command_hints() -> None:
    with pytest.raises(RequestFailed) as info:
        parse_request({"cmd": "kik"})
    assert info.value.hint == "did you mean 'kick'?"
    with pytest.raises(RequestFailed) as info:
        parse_request({"cmd": "zzzzzz"})
    assert info.value.hint == "commands: " + ", ".join(adminproto.COMMANDS)


def test_build_request_checks_and_leaves_out_none() -> None:
    assert build_request("kick", name="bob", reason=None) == {"cmd": "kick", "name": "bob"}
    with pytest.raises(adminproto.BadArgument) as info:
        build_request("broadcast", text="\x1b[31mred")
    assert (info.value.arg, info.value.problem) == ("text", "control characters are not allowed")


def test_the_address_is_normalised_as_the_server_reports_peers() -> None:
    request = parse_request({"cmd": "ban", "address": "0:0:0:0:0:0:0:1", "seconds": 5})
    assert request.args["address"] == "::1"
