"""The wire protocol: framing, decoding, command parsing, names and server lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc import protocol
from chatsvc.dialects import error_text
from chatsvc.protocol import OVERLONG, Command, DecodeError, Frame, LineSplitter

# --- LineSplitter ---------------------------------------------------------------


def feed_bytewise(splitter: LineSplitter, data: bytes) -> list[Frame]:
    out: list[Frame] = []
    for i in range(len(data)):
        out += splitter.feed(data[i : i + 1])
        assert splitter.pending <= splitter.limit + 1
    return out


def test_a_single_line_is_returned_without_its_newline() -> None:
    assert LineSplitter(64).feed(b"hello\n") == [b"hello"]


def test_crlf_is_stripped() -> None:
    assert LineSplitter(64).feed(b"hello\r\n") == [b"hello"]


def test_only_one_trailing_cr_is_stripped() -> None:
    assert LineSplitter(64).feed(b"a\r\r\n") == [b"a\r"]


def test_a_cr_inside_a_line_is_kept() -> None:
    assert LineSplitter(64).feed(b"a\rb\n") == [b"a\rb"]


def test_several_lines_in_one_chunk() -> None:
    assert LineSplitter(64).feed(b"one\ntwo\r\n\nthree\n") == [b"one", b"two", b"", b"three"]


def test_a_partial_line_waits_for_its_newline() -> None:
    splitter = LineSplitter(64)
    assert splitter.feed(b"hel") == []
    assert splitter.pending == 3
    assert splitter.feed(b"lo\nwor") == [b"hello"]
    assert splitter.pending == 3
    assert splitter.feed(b"ld\n") == [b"world"]
    assert splitter.pending == 0


def test_a_line_split_byte_by_byte() -> None:
    splitter = LineSplitter(64)
    assert feed_bytewise(splitter, b"hello world\r\nsecond\n") == [b"hello world", b"second"]
    assert splitter.pending == 0


def test_a_line_of_exactly_the_limit_is_accepted() -> None:
    splitter = LineSplitter(8)
    assert splitter.feed(b"x" * 8 + b"\n") == [b"x" * 8]


def test_a_line_of_exactly_the_limit_with_crlf_byte_by_byte_is_accepted() -> None:
    splitter = LineSplitter(8)
    assert feed_bytewise(splitter, b"x" * 8 + b"\r\n") == [b"x" * 8]


def test_a_line_one_over_the_limit_is_overlong_once() -> None:
    splitter = LineSplitter(8)
    assert splitter.feed(b"x" * 9 + b"\nok\n") == [OVERLONG, b"ok"]


def test_a_line_one_over_the_limit_byte_by_byte_is_overlong_once() -> None:
    splitter = LineSplitter(8)
    assert feed_bytewise(splitter, b"x" * 9 + b"\r\nok\n") == [OVERLONG, b"ok"]


def test_an_overlong_line_over_many_chunks_is_reported_once_and_discarded() -> None:
    splitter = LineSplitter(16)
    out: list[Frame] = []
    for _ in range(1000):
        out += splitter.feed(b"y" * 100)
        assert splitter.pending <= 17
    out += splitter.feed(b"yyy\r\nnext line\n")
    assert out == [OVERLONG, b"next line"]
    assert splitter.pending == 0


def test_an_overlong_line_is_reported_as_soon_as_it_passes_the_limit() -> None:
    splitter = LineSplitter(8)
    assert splitter.feed(b"z" * 9) == []  # could still be 8 bytes + "\r"
    assert splitter.feed(b"z") == [OVERLONG]
    assert splitter.feed(b"z" * 50) == []
    assert splitter.feed(b"\n") == []
    assert splitter.feed(b"fine\n") == [b"fine"]


def test_overlong_is_a_singleton_marker() -> None:
    assert repr(OVERLONG) == "OVERLONG"
    assert OVERLONG is protocol.OVERLONG


LINE_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")) | st.lists(
    st.sampled_from([b"a", b"\r", b"\xff", b" "]), max_size=40
).map(b"".join)


def expected_frames(lines: list[bytes], limit: int) -> list[Frame]:
    out: list[Frame] = []
    for line in lines:
        body = line[:-1] if line.endswith(b"\r") else line
        out.append(body if len(body) <= limit else OVERLONG)
    return out


@settings(max_examples=300)
@given(
    limit=st.integers(min_value=1, max_value=24),
    lines=st.lists(LINE_BYTES, max_size=12),
    data=st.data(),
)
def test_any_chunking_yields_the_lines_within_the_limit_in_order(
    limit: int, lines: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    splitter = LineSplitter(limit)
    out: list[Frame] = []
    for start, end in zip(bounds, bounds[1:]):
        out += splitter.feed(stream[start:end])
        assert splitter.pending <= limit + 1
    assert out == expected_frames(lines, limit)
    assert splitter.pending == 0


@settings(max_examples=200)
@given(
    limit=st.integers(min_value=1, max_value=24),
    chunks=st.lists(st.binary(max_size=64), max_size=30),
)
def test_pending_stays_bounded_whatever_arrives(limit: int, chunks: list[bytes]) -> None:
    splitter = LineSplitter(limit)
    for chunk in chunks:
        for frame in splitter.feed(chunk):
            assert frame is OVERLONG or (isinstance(frame, bytes) and len(frame) <= limit)
        assert splitter.pending <= limit + 1


# --- decode ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"hello", "hello"),
        (b"", ""),
        ("h\u00e9llo w\u00f6rld".encode(), "h\u00e9llo w\u00f6rld"),
        ("\u65e5\u672c\u8a9e".encode(), "\u65e5\u672c\u8a9e"),
        ("party \U0001f389\U0001f600".encode(), "party \U0001f389\U0001f600"),
        (b"a\tb", "a\tb"),
    ],
)
def test_decode_accepts_utf8_text(raw: bytes, text: str) -> None:
    assert protocol.decode(raw) == text


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b"caf\xe9", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"ok \xf0\x9f\x98"],
    ids=["ff", "latin1", "truncated", "overlong-encoding", "surrogate", "cut-emoji"],
)
def test_decode_rejects_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        protocol.decode(raw)


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x07", "\x08", "\x0b", "\x0c", "\r", "\x1b", "\x1f", "\x7f", "\x85", "\x9b"],
)
def test_decode_rejects_control_characters(char: str) -> None:
    with pytest.raises(DecodeError, match="control characters"):
        protocol.decode(f"a{char}b".encode())


def test_decode_rejects_an_ansi_escape_sequence() -> None:
    with pytest.raises(DecodeError):
        protocol.decode(b"\x1b[2J\x1b[Hgotcha")


@given(st.binary(max_size=64))
def test_decode_returns_text_or_raises_decode_error(raw: bytes) -> None:
    try:
        text = protocol.decode(raw)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert text.encode() == raw


_VISIBLE = st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp"))


@given(st.text(_VISIBLE | st.just("\t"), max_size=40))
def test_decode_round_trips_text_without_controls(text: str) -> None:
    assert protocol.decode(text.encode()) == text


# --- parse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, command",
    [
        ("hello", Command("chat", text="hello")),
        ("  indented text ", Command("chat", text=" indented text ")),
        ("a\tb  c   d", Command("chat", text="a b c d")),
        ("a/b", Command("chat", text="a/b")),
        ("//text", Command("chat", text="/text")),
        ("//join work", Command("chat", text="/join work")),
        ("bye", Command("quit")),
        ("BYE", Command("quit")),
        ("  Bye  ", Command("quit")),
        ("bye now", Command("chat", text="bye now")),
        ("/quit", Command("quit")),
        ("/QUIT", Command("quit")),
        ("/rooms", Command("rooms")),
        ("/who", Command("who")),
        ("/who ", Command("who")),
        ("/help", Command("help")),
        ("/join work", Command("join", arg="work")),
        ("/JOIN work", Command("join", arg="work")),
        ("/Join  Work ", Command("join", arg="Work")),
        ("/join", Command("usage", arg="/join ROOM")),
        ("/join ", Command("usage", arg="/join ROOM")),
        ("/join a b", Command("usage", arg="/join ROOM")),
        ("/msg bob hi there", Command("msg", arg="bob", text="hi there")),
        ("/MSG bob  spaced  out ", Command("msg", arg="bob", text="spaced out")),
        ("/msg bob", Command("usage", arg="/msg NAME TEXT")),
        ("/msg bob   ", Command("usage", arg="/msg NAME TEXT")),
        ("/msg", Command("usage", arg="/msg NAME TEXT")),
        ("/who extra", Command("usage", arg="/who")),
        ("/rooms all", Command("usage", arg="/rooms")),
        ("/quit now", Command("usage", arg="/quit")),
        ("/help me", Command("usage", arg="/help")),
        ("/dance", Command("unknown", arg="/dance")),
        ("/Dance wildly", Command("unknown", arg="/Dance")),
        ("/", Command("unknown", arg="/")),
        ("", Command("empty")),
        ("   ", Command("empty")),
        ("\t", Command("empty")),
    ],
)
def test_parse(line: str, command: Command) -> None:
    assert protocol.parse(line) == command


@given(st.text(max_size=80))
def test_parse_never_raises(line: str) -> None:
    command = protocol.parse(line)
    assert command.kind in {"chat", "quit", "empty", "unknown", "usage", *protocol.COMMAND_USAGE}


@given(st.text(max_size=80).filter(lambda s: not s.startswith("/") and s.strip()))
def test_plain_text_is_chat_squeezed_unless_it_is_bye(line: str) -> None:
    command = protocol.parse(line)
    if line.strip().lower() == "bye":
        assert command == Command("quit")
    else:
        assert command == Command("chat", text=protocol.squeeze(line))
        assert "  " not in command.text and "\t" not in command.text


@pytest.mark.parametrize(
    "char", ["\u202e", "\u2066", "\u200b", "\u200e", "\ufeff", "\u2028", "\u2029", "\u061c"]
)
def test_invisible_and_direction_changing_characters_are_refused(char: str) -> None:
    assert protocol.text_problem(f"a{char}b") is not None
    with pytest.raises(DecodeError, match=f"U\\+{ord(char):04X}"):
        protocol.decode(f"a{char}b".encode())


def test_emoji_sequences_with_zero_width_joiner_pass() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert protocol.decode(family.encode()) == family


# --- names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "a", "Bob_2", "x.y-z", "a" * 32, "0"])
def test_check_name_accepts_valid_names(name: str) -> None:
    assert protocol.check_name(name, 32) is None


@pytest.mark.parametrize(
    "name, max_length, reason",
    [
        ("", 32, "a name is required"),
        ("a" * 33, 32, "name too long (at most 32 characters)"),
        ("abcd", 3, "name too long (at most 3 characters)"),
        ("al ice", 32, "invalid name"),
        ("al!ce", 32, "invalid name"),
        ("\u00e5lice", 32, "invalid name"),
        ("[lobby]", 32, "invalid name"),
        ("alice\n", 32, "invalid name"),
        ("admin", 32, "reserved"),
        ("Admin", 32, "reserved"),
        ("ROOT", 32, "reserved"),
        ("Server", 32, "reserved"),
        ("nobody", 32, "reserved"),
    ],
)
def test_check_name_rejects(name: str, max_length: int, reason: str) -> None:
    why = protocol.check_name(name, max_length)
    assert why is not None
    assert reason in error_text(why)


@pytest.mark.parametrize("name", sorted(protocol.RESERVED_NAMES))
def test_every_reserved_name_is_rejected_in_any_case(name: str) -> None:
    assert protocol.check_name(name, 32) is not None
    assert protocol.check_name(name.upper(), 32) is not None
    assert protocol.check_name(name.capitalize(), 32) is not None


@given(st.text(max_size=40), st.integers(min_value=1, max_value=64))
def test_check_name_never_raises(name: str, max_length: int) -> None:
    why = protocol.check_name(name, max_length)
    if why is None:
        assert 1 <= len(name) <= max_length
        assert protocol.NAME_RE.fullmatch(name)
