"""IRC: parsing (bytes in, messages out) and the dialect (events in, IRC lines out)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsvc import events, irc
from chatsvc.dialects import LINE
from chatsvc.irc import IrcParseError, Message, clean_text, dialect_for, parse_line

PLAIN = dialect_for("chatsvc", "net", frozenset())


def msg(raw: bytes) -> Message:
    parsed = parse_line(raw)
    assert parsed is not None
    return parsed


# --- parsing ------------------------------------------------------------------------


def test_command_and_params() -> None:
    assert msg(b"PRIVMSG #lobby :hello there") == Message(
        {}, "", "PRIVMSG", ("#lobby", "hello there")
    )


def test_commands_are_case_insensitive() -> None:
    assert msg(b"privmsg bob hi").command == "PRIVMSG"
    assert msg(b"Join #work").command == "JOIN"


def test_a_trailing_parameter_may_be_empty_or_start_with_a_colon() -> None:
    assert msg(b"TOPIC #lobby :").params == ("#lobby", "")
    assert msg(b"PRIVMSG bob ::-)").params == ("bob", ":-)")


def test_extra_spaces_between_parameters_are_ignored() -> None:
    assert msg(b"  JOIN   #a   ").params == ("#a",)


def test_tags_and_source_are_parsed_and_escapes_undone() -> None:
    m = msg(b"@label=x;+draft/y=a\\sb\\:c;flag :nick!u@h PRIVMSG #a :hi")
    assert m.tags == {"label": "x", "+draft/y": "a b;c", "flag": ""}
    assert m.source == "nick!u@h"
    assert (m.command, m.params) == ("PRIVMSG", ("#a", "hi"))


def test_blank_lines_and_bare_prefixes_are_nothing() -> None:
    assert parse_line(b"") is None
    assert parse_line(b"   ") is None
    assert parse_line(b":only.a.prefix") is None
    assert parse_line(b"@tags-only") is None
    assert parse_line(b":just :trailing") is None


def test_at_most_fifteen_parameters() -> None:
    m = msg(b"X " + b" ".join(b"p%d" % i for i in range(30)))
    assert len(m.params) == irc.MAX_PARAMS


def test_the_body_is_limited_to_510_bytes_and_client_tags_to_4096() -> None:
    assert msg(b"PRIVMSG #a :" + b"x" * (510 - 12)).params[1] == "x" * 498
    with pytest.raises(IrcParseError) as info:
        parse_line(b"PRIVMSG #a :" + b"x" * 499)
    assert (info.value.code, info.value.command) == ("input_too_long", "PRIVMSG")
    # IRCv3 message-tags: a client's tags, '@' and the trailing space included
    tags = b"@+a=" + b"x" * (4096 - 5) + b" "
    assert len(tags) == 4096
    assert msg(tags + b"PING x").tags == {"+a": "x" * 4091}
    with pytest.raises(IrcParseError):
        parse_line(b"@+a=" + b"x" * 4092 + b" PING x")


def test_invalid_utf8_and_nul_are_refused_naming_the_command() -> None:
    with pytest.raises(IrcParseError) as info:
        parse_line(b"PRIVMSG #a :hi\xaa")
    assert (info.value.code, info.value.command) == ("invalid_utf8", "PRIVMSG")
    with pytest.raises(IrcParseError):
        parse_line(b"PRIVMSG #a :a\x00b")
    with pytest.raises(IrcParseError) as info:
        parse_line(b":forged!x@y notice #a :\xff")  # the source is not the command
    assert info.value.command == "NOTICE"
    with pytest.raises(IrcParseError) as info:
        parse_line(b":\xff\xfe")
    assert info.value.command == "*"


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_are_refused_cleanly(raw: bytes) -> None:
    try:
        m = parse_line(raw.replace(b"\n", b""))
    except IrcParseError as exc:
        assert exc.code in ("input_too_long", "invalid_utf8")
    else:
        if m is not None:
            assert m.command == m.command.upper()
            assert " " not in m.command
            assert len(m.params) <= irc.MAX_PARAMS


# --- text from IRC clients -------------------------------------------------------------


def test_formatting_codes_are_stripped() -> None:
    assert clean_text("\x02bold\x02 \x0304,12red\x03 \x1fu\x0f") == ("bold red u", None)


def test_ctcp_action_becomes_slash_me_and_other_ctcp_is_refused() -> None:
    assert clean_text("\x01ACTION waves\x01") == ("/me waves", None)
    assert clean_text("\x01VERSION\x01") == ("", "ctcp")


def test_text_the_line_protocol_refuses_is_refused() -> None:
    assert clean_text("a\x07b")[1] == "control characters are not allowed"
    assert "U+202E" in str(clean_text("abc\u202edef")[1])


def test_runs_of_blanks_are_squeezed_as_in_the_line_protocol() -> None:
    assert clean_text("a     b\tc") == ("a b c", None)


# --- the dialect -------------------------------------------------------------------------


def render(event: events.Event, dialect: irc.IrcDialect = PLAIN) -> str:
    return dialect.render(event).decode()


def test_room_chat_is_a_privmsg_to_the_channel() -> None:
    assert render(events.Chat("lobby", "alice", "hi there", 0.0)) == (
        ":alice!alice@chatsvc PRIVMSG #lobby :hi there\r\n"
    )
    assert render(events.Chat("lobby", "alice", "hi", 0.0, notice=True)) == (
        ":alice!alice@chatsvc NOTICE #lobby :hi\r\n"
    )


def test_slash_me_becomes_a_ctcp_action() -> None:
    line = render(events.Chat("lobby", "bob", "/me grins", 0.0))
    assert line == ":bob!bob@chatsvc PRIVMSG #lobby :\x01ACTION grins\x01\r\n"


def test_a_long_line_protocol_message_is_cut_into_irc_lines_between_characters() -> None:
    text = "é" * 1000  # 2000 bytes: the line protocol allows it, IRC text is at most 510
    out = PLAIN.render(events.Chat("lobby", "alice", text, 0.0))
    lines = out.split(b"\r\n")[:-1]
    assert len(lines) == 4
    assert all(len(ln.split(b" :", 1)[1]) <= irc.MAX_BODY for ln in lines)
    assert "".join(ln.decode().split(" :", 1)[1] for ln in lines) == text


def test_what_an_irc_client_may_send_is_relayed_in_one_line() -> None:
    out = PLAIN.render(events.Private("alice", "bob", "a" * 496, 0.0))
    assert out.count(b"\r\n") == 1


def test_membership_events() -> None:
    assert render(events.Joined("work", "bob")) == ":bob!bob@chatsvc JOIN #work\r\n"
    assert render(events.Left("work", "bob", "part")) == ":bob!bob@chatsvc PART #work\r\n"
    assert render(events.Left("work", "bob", "part", "bye all")) == (
        ":bob!bob@chatsvc PART #work :bye all\r\n"
    )
    assert render(events.Left("work", "bob", "moved")) == ":bob!bob@chatsvc PART #work\r\n"
    assert render(events.Left("work", "bob", "idle")) == ":bob!bob@chatsvc QUIT :Idle timeout\r\n"
    assert render(events.Kicked("work", "bob", "spam")) == ":chatsvc KICK #work bob :spam\r\n"
    assert render(events.Renamed("work", "bob", "rob")) == ":bob!bob@chatsvc NICK :rob\r\n"


def test_private_messages_and_their_echo() -> None:
    pm = events.Private("alice", "bob", "psst", 0.0)
    assert render(pm) == ":alice!alice@chatsvc PRIVMSG bob :psst\r\n"
    assert render(pm._replace(echo=True)) == ""  # no echo-message: the sender gets nothing
    echo = dialect_for("chatsvc", "net", frozenset({"echo-message"}))
    assert render(pm._replace(echo=True), echo) == ":alice!alice@chatsvc PRIVMSG bob :psst\r\n"


def test_announcements_shutdown_and_closing_errors() -> None:
    assert render(events.Announcement("maintenance", "lobby")) == (
        ":chatsvc NOTICE #lobby :maintenance\r\n"
    )
    assert render(events.Announcement("hello all")) == ":chatsvc NOTICE * :hello all\r\n"
    soon = render(events.ShuttingDown(30.0, "upgrade"))
    assert soon == ":chatsvc NOTICE * :server shutting down in 30 s: upgrade\r\n"
    now = render(events.ShuttingDown(None, None)).split("\r\n")
    assert now[1] == "ERROR :Closing link: server shutting down"
    assert render(events.error("idle_timeout", seconds=60.0)).startswith("ERROR :Closing link: ")
    assert render(events.YouWereKicked("spam")) == "ERROR :Closing link: kicked (spam)\r\n"
    assert render(events.Goodbye()).startswith("ERROR ")


def test_hello_is_the_001_welcome() -> None:
    assert render(events.Hello("alice", None)) == (
        ":chatsvc 001 alice :Welcome to the net IRC network alice!alice@chatsvc\r\n"
    )


def test_every_event_type_renders() -> None:
    samples: list[events.Event] = [
        events.Chat("lobby", "a", "x", 0.0),
        events.Joined("lobby", "a"),
        events.Left("lobby", "a", "eof"),
        events.Kicked("lobby", "a", "r"),
        events.Renamed("lobby", "a", "b"),
        events.Announcement("x"),
        events.ShuttingDown(),
        events.Private("a", "b", "x", 0.0),
        events.Welcome("1"),
        events.Hello("a", "lobby"),
        events.PasswordWanted("a"),
        events.NowIn("lobby"),
        events.YouWereKicked("r"),
        events.Goodbye(),
        events.RoomList((("lobby", 1),), "lobby"),
        events.WhoList("lobby", ("a",)),
        events.Help(),
        events.error("no_such_user", name="x"),
        events.Raw(":x 001 a :hi\r\n"),
        events.Presence("a", True),
        events.Away("a", "gone"),
        events.RealName("a", "A"),
    ]
    covered = {type(e) for e in samples}
    assert covered == set(events.Event.__args__)  # type: ignore[attr-defined]
    for event in samples:
        out = PLAIN.render(event)
        assert out == b"" or out.endswith(b"\r\n")


def test_raw_passes_through_in_both_dialects() -> None:
    raw = events.Raw(":chatsvc 401 alice bob :No such nick\r\n")
    assert PLAIN.render(raw) == raw.text.encode()
    assert LINE.render(raw) == raw.text.encode()


def test_server_time_tags_every_line_with_the_event_time() -> None:
    timed = dialect_for("chatsvc", "net", frozenset({"server-time"}))
    out = render(events.Chat("lobby", "a", "x", 1700000000.5), timed)
    assert out == "@time=2023-11-14T22:13:20.500Z :a!a@chatsvc PRIVMSG #lobby :x\r\n"
    two = render(events.ShuttingDown(), timed).split("\r\n")
    assert all(ln.startswith("@time=") for ln in two if ln)


def test_one_dialect_object_per_capability_combination() -> None:
    a = dialect_for("chatsvc", "net", frozenset({"server-time", "echo-message"}))
    b = dialect_for("chatsvc", "net", frozenset({"echo-message", "server-time"}))
    assert a is b
    assert a.echo_own and not PLAIN.echo_own
    assert a is not PLAIN
    assert a.name == PLAIN.name == "irc"


def test_refusal_at_accept_is_an_error_line() -> None:
    assert (
        irc.refusal_line("server_full") == b"ERROR :Closing link: server full, try again later\r\n"
    )


def test_wire_lines_add_a_colon_only_when_needed() -> None:
    assert irc.line("s", "001", "bob", "Welcome") == ":s 001 bob Welcome\r\n"
    assert irc.line("s", "001", "bob", "two words") == ":s 001 bob :two words\r\n"
    assert irc.line("s", "332", "bob", "#a", "") == ":s 332 bob #a :\r\n"
    assert irc.line("", "PING", ":x") == "PING ::x\r\n"


def test_the_hub_renders_a_room_line_once_per_capability_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chatsvc.config import Config
    from chatsvc.hub import Hub, Member

    hub = Hub(Config())
    plain = dialect_for("chatsvc", "chatsvc", frozenset())
    timed = dialect_for("chatsvc", "chatsvc", frozenset({"server-time"}))
    members = [Member(dialect=plain) for _ in range(10)] + [Member(dialect=timed) for _ in range(5)]
    members.append(Member())  # a line-protocol member
    for i, m in enumerate(members):
        assert hub.add(m) is None
        assert hub.login(m, f"user{i}", join_default=False) is None
        assert hub.enter(m, "lobby") is None
    for m in members:
        m.outbox.clear()
    calls: list[irc.IrcDialect] = []
    real = irc.IrcDialect.render

    def counting(self: irc.IrcDialect, event: events.Event) -> bytes:
        calls.append(self)
        return real(self, event)

    monkeypatch.setattr(irc.IrcDialect, "render", counting)
    hub.say(members[-1], "hello", "lobby")
    assert sorted(map(id, calls)) == sorted([id(plain), id(timed)])
    assert members[0].outbox[0] is members[9].outbox[0]  # the same bytes object
    assert members[-1].outbox == [b"[lobby] user15: hello\n"]


# --- accounts: SASL PLAIN and PASS (pure parts) -------------------------------------


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def test_sasl_plain_with_and_without_authzid() -> None:
    assert irc.sasl_plain(_b64(b"\0alice\0pw"), 32) == ("alice", b"pw")
    assert irc.sasl_plain(_b64(b"alice\0alice\0pw"), 32) == ("alice", b"pw")
    assert irc.sasl_plain(_b64(b"ALICE\0alice\0p\xc3\xa9"), 32) == ("alice", "pé".encode())


@pytest.mark.parametrize(
    "response",
    [
        b"!!!",  # not base64
        b"",  # nothing
        _b64(b"\0alice\0"),  # empty password
        _b64(b"\0\0pw"),  # empty authcid
        _b64(b"alice\0pw"),  # two fields
        _b64(b"\0alice\0p\0w"),  # NUL in the password
        _b64(b"\0al ice\0pw"),  # not a chatsvc name
        _b64(b"\0\xff\0pw"),  # not UTF-8
    ],
)
def test_malformed_sasl_plain_responses_are_refused(response: bytes) -> None:
    assert isinstance(irc.sasl_plain(response, 32), str)


def test_sasl_plain_refuses_another_authorization_identity() -> None:
    assert irc.sasl_plain(_b64(b"bob\0alice\0pw"), 32) == (
        "authorization identity must be empty or the account"
    )


@given(st.binary(max_size=300))
def test_sasl_plain_never_raises(data: bytes) -> None:
    out = irc.sasl_plain(_b64(data), 32)
    assert isinstance(out, str) or (isinstance(out, tuple) and out[1])
    irc.sasl_plain(data, 32)


def test_pass_names_an_account_only_with_a_valid_name_before_the_colon() -> None:
    assert irc.pass_split(b"secret", 32) == (None, b"secret")
    assert irc.pass_split(b"bob:se:cret", 32) == ("bob", b"se:cret")
    assert irc.pass_split(b"no name:secret", 32) == (None, b"no name:secret")
    assert irc.pass_split(b":secret", 32) == (None, b":secret")
