"""The admin protocol (version 1): the one definition the server, the CLI and the tests share.

Pure: no sockets, no threads.  docs/admin.md explains it to people; this module
is what the code agrees on: the greeting, the request and reply shapes (builders
and validators), the error codes, the size and nesting caps, and which exit
status of ``chatsvc-admin`` each outcome maps to.

Every text an operator sends to users (kick and shutdown reasons, broadcasts)
passes the same rule as a user's chat line (:func:`chatsvc.protocol.text_problem`)
plus "one line, at most ``MAX_TEXT_CHARS``"; the CLI checks it before connecting,
the server again for scripts that speak the protocol directly.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Callable, Final, NamedTuple, Optional

from chatsvc.protocol import check_name, text_problem

PROTOCOL_VERSION: Final = 1
SERVER_NAME: Final = "chatsvc"
MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_REPLY_BYTES: Final = 64 << 20  # a users list of 10,000 clients is a few MB
# Requests are flat and replies at most four levels deep; the cap is checked
# before parsing, so a deeply nested line never reaches the recursive decoder.
MAX_DEPTH: Final = 32
MAX_TEXT_CHARS: Final = 400
MAX_NAME_CHARS: Final = 64
MAX_PASSWORD_BYTES: Final = 1024
MAX_SECONDS: Final = 1e9  # about 31 years: finite, so deadlines stay ordinary floats

DEFAULT_KICK_REASON: Final = "kicked by an operator"
DEFAULT_BAN_REASON: Final = "banned by an operator"


class Code:
    """The ``code`` of a failure reply."""

    BAD_REQUEST: Final = "bad_request"  # not JSON, not an object, bad or unknown argument
    UNKNOWN_COMMAND: Final = "unknown_command"
    NOT_FOUND: Final = "not_found"  # no such user, room or ban
    FORBIDDEN: Final = "forbidden"  # peer credentials refused (sent instead of the greeting)
    TOO_LARGE: Final = "too_large"  # request over MAX_REQUEST_BYTES; the connection closes
    TIMEOUT: Final = "timeout"  # idle too long; the connection closes
    BUSY: Final = "busy"  # every admin connection is handling a request; try again
    FAILED: Final = "failed"  # the command could not be carried out (e.g. a bad config file)
    INTERNAL: Final = "internal"  # a bug in the server; the log has the traceback


CODES: Final = frozenset(v for k, v in vars(Code).items() if k.isupper())

# Exit statuses of chatsvc-admin.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # a failure reply (any code but forbidden and busy)
EXIT_USAGE: Final = 2  # bad command line or config; nothing was sent
EXIT_NOT_RUNNING: Final = 3  # no socket, or nothing answers on it
EXIT_DENIED: Final = 4  # the socket file or the server refused this user
EXIT_PROTOCOL: Final = 5  # an unexpected or missing reply
EXIT_BUSY: Final = 6  # running, but no admin connection to be had (after retrying)


def exit_status(code: str) -> int:
    """The exit status of ``chatsvc-admin`` for a failure reply with ``code``."""
    if code == Code.FORBIDDEN:
        return EXIT_DENIED
    if code == Code.BUSY:
        return EXIT_BUSY
    return EXIT_FAILED


class RequestFailed(Exception):
    """A request that gets a failure reply: ``code``, the text, maybe a hint."""

    def __init__(self, code: str, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint

    def reply(self) -> dict[str, Any]:
        return failure(self.code, str(self), self.hint)


class BadArgument(RequestFailed):
    """A ``bad_request`` about one argument; ``arg`` names it, ``problem`` says what is wrong."""

    def __init__(self, arg: str, problem: str) -> None:
        super().__init__(Code.BAD_REQUEST, f"argument {arg!r}: {problem}")
        self.arg = arg
        self.problem = problem


# --- messages ------------------------------------------------------------------------


def greeting(version: str) -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION, "server": SERVER_NAME, "version": version}


def is_greeting(message: Mapping[str, Any]) -> bool:
    return message.get("server") == SERVER_NAME and message.get("protocol") == PROTOCOL_VERSION


def success(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": True, "protocol": PROTOCOL_VERSION, "result": dict(result)}


def failure(code: str, message: str, hint: Optional[str] = None) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "ok": False,
        "protocol": PROTOCOL_VERSION,
        "code": code,
        "error": message,
    }
    if hint:
        reply["hint"] = hint
    return reply


def reply_problem(reply: Mapping[str, Any]) -> Optional[str]:
    """Why ``reply`` is not a well-formed reply, or None if it is."""
    ok = reply.get("ok")
    if not isinstance(ok, bool):
        return "no 'ok' field"
    if ok and not isinstance(reply.get("result"), dict):
        return "a success without a 'result' object"
    if not ok and not isinstance(reply.get("code"), str):
        return "a failure without a 'code'"
    return None


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as a line (ASCII: no invisible characters reach a raw terminal)."""
    return json.dumps(message).encode() + b"\n"


_STRINGS_RE = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.S)
_BRACKETS_RE = re.compile(rb"[\[\]{}]")


def nesting_depth(line: bytes) -> int:
    """How deeply brackets nest in ``line``, outside strings; a cheap pre-parse check."""
    depth = deepest = 0
    for bracket in _BRACKETS_RE.findall(_STRINGS_RE.sub(b"", line)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def decode(line: bytes) -> dict[str, Any]:
    """One message line to an object; ValueError says why it is not one."""
    if nesting_depth(line) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        message = json.loads(line)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise ValueError("not valid JSON") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


# --- requests --------------------------------------------------------------------------

Check = Callable[[str, Any], Any]  # (argument name, raw value) -> value to use


def check_text(arg: str, value: Any) -> str:
    """A text users will see: one non-blank line that passes the chat-text rule."""
    if not isinstance(value, str):
        raise BadArgument(arg, "must be a string")
    if not value.strip():
        raise BadArgument(arg, "must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise BadArgument(arg, f"too long ({len(value)} characters, at most {MAX_TEXT_CHARS})")
    if "\n" in value or "\r" in value:
        raise BadArgument(arg, "must be one line")
    problem = text_problem(value)
    if problem:
        raise BadArgument(arg, problem)
    return value


def _name(arg: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadArgument(arg, "must be a string")
    if not value or len(value) > MAX_NAME_CHARS or text_problem(value) or " " in value:
        raise BadArgument(arg, f"must be a name of 1-{MAX_NAME_CHARS} visible characters")
    return value


def _seconds(arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadArgument(arg, "must be a number of seconds")
    if not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise BadArgument(arg, f"must be a number of seconds from 0 to {MAX_SECONDS:g}")
    return value


def _positive_seconds(arg: str, value: Any) -> float:
    seconds = _seconds(arg, value)
    if seconds == 0:
        raise BadArgument(arg, "must be more than 0 seconds")
    return seconds


def _flag(arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadArgument(arg, "must be true or false")
    return value


def _address(arg: str, value: Any) -> str:
    """An IP address in the form the server reports peers (``::1``, ``10.0.0.7``)."""
    if not isinstance(value, str):
        raise BadArgument(arg, "must be a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise BadArgument(arg, f"must be an IP address, not {value[:60]!r}") from None


def _account_name(arg: str, value: Any) -> str:
    """A user name as the line protocol accepts one (the account's login name)."""
    if not isinstance(value, str):
        raise BadArgument(arg, "must be a string")
    why = check_name(value, MAX_NAME_CHARS)
    if why is not None and why.code == "name_reserved":
        raise BadArgument(arg, f"{value!r} is a reserved name")
    if why is not None:
        raise BadArgument(
            arg, f"must be a user name of 1-{MAX_NAME_CHARS} letters, digits, '_', '-', '.'"
        )
    return value


def _password(arg: str, value: Any) -> str:
    """A new password: never quoted back, whatever is wrong with it."""
    if not isinstance(value, str):
        raise BadArgument(arg, "must be a string")
    if not value:
        raise BadArgument(arg, "must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise BadArgument(arg, f"must be at most {MAX_PASSWORD_BYTES} bytes")
    if any(c in value for c in "\r\n\0"):
        raise BadArgument(arg, "must be one line without NUL characters")
    return value


ACCOUNT_ACTIONS: Final = {"add": True, "passwd": True, "del": False, "list": False}  # password?


def _account_action(arg: str, value: Any) -> str:
    if value not in ACCOUNT_ACTIONS:
        raise BadArgument(arg, "must be one of " + ", ".join(ACCOUNT_ACTIONS))
    return str(value)


class Arg(NamedTuple):
    check: Check
    required: bool = False


# Every command and its arguments; unknown arguments are refused, so a request
# for something this server cannot do (say, an address ban) never half-succeeds.
COMMANDS: Final[dict[str, dict[str, Arg]]] = {
    "rooms": {},
    "users": {},
    "stats": {},
    "bans": {},
    "nodes": {},
    "kick": {
        "name": Arg(_name, required=True),
        "reason": Arg(check_text),
        "ban": Arg(_seconds),
        "ban_address": Arg(_flag),
    },
    "ban": {
        "address": Arg(_address, required=True),
        "seconds": Arg(_positive_seconds, required=True),
        "reason": Arg(check_text),
    },
    "unban": {"name": Arg(_name), "address": Arg(_address)},
    "broadcast": {"text": Arg(check_text, required=True), "room": Arg(_name)},
    "reload": {"check": Arg(_flag)},
    "shutdown": {"in": Arg(_seconds), "reason": Arg(check_text)},
    "account": {
        "action": Arg(_account_action, required=True),
        "name": Arg(_account_name),
        "password": Arg(_password),
    },
}


def _kick_rules(args: Mapping[str, Any]) -> None:
    if args.get("ban_address") and not args.get("ban"):
        raise BadArgument("ban_address", "needs a 'ban' of more than 0 seconds")


def _unban_rules(args: Mapping[str, Any]) -> None:
    if ("name" in args) == ("address" in args):
        raise RequestFailed(Code.BAD_REQUEST, "unban needs exactly one of 'name' and 'address'")


def _account_rules(args: Mapping[str, Any]) -> None:
    action = args["action"]
    if action == "list":
        if "name" in args or "password" in args:
            raise RequestFailed(Code.BAD_REQUEST, "account list takes no 'name' or 'password'")
        return
    if "name" not in args:
        raise BadArgument("name", f"missing (account {action} needs it)")
    if ACCOUNT_ACTIONS[action] and "password" not in args:
        raise BadArgument("password", f"missing (account {action} needs it)")
    if not ACCOUNT_ACTIONS[action] and "password" in args:
        raise BadArgument("password", f"unknown for account {action}")


_RULES: Final[dict[str, Callable[[Mapping[str, Any]], None]]] = {
    "kick": _kick_rules,
    "unban": _unban_rules,
    "account": _account_rules,
}


class Request(NamedTuple):
    cmd: str
    args: dict[str, Any]  # checked; optional arguments left out or null are absent


def command_of(message: Mapping[str, Any]) -> str:
    """The command a message names, as text fit for a log (for the audit of bad ones too)."""
    return str(message.get("cmd", ""))[:64]


def parse_request(message: Mapping[str, Any]) -> Request:
    """Check a decoded request against ``COMMANDS``; RequestFailed says what is wrong."""
    cmd = command_of(message)
    spec = COMMANDS.get(cmd) if isinstance(message.get("cmd"), str) else None
    if spec is None:
        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "commands: " + ", ".join(COMMANDS)
        raise RequestFailed(Code.UNKNOWN_COMMAND, f"unknown command {cmd!r}", hint)
    args: dict[str, Any] = {}
    for key, value in message.items():
        if key == "cmd":
            continue
        arg = spec.get(key)
        if arg is None:
            known = ", ".join(spec) or "none"
            raise BadArgument(key, f"unknown for {cmd!r} (arguments: {known})")
        if value is not None:
            args[key] = arg.check(key, value)
    for key, arg in spec.items():
        if arg.required and key not in args:
            raise BadArgument(key, "missing")
    rules = _RULES.get(cmd)
    if rules is not None:
        rules(args)
    return Request(cmd, args)


def build_request(cmd: str, **args: Any) -> dict[str, Any]:
    """A request message, checked as the server will check it (None values left out)."""
    message = {"cmd": cmd, **{k: v for k, v in args.items() if v is not None}}
    parse_request(message)
    return message
