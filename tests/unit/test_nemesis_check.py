"""The cluster history checker (bench/nemesis.py), on made-up histories."""

from __future__ import annotations

from bench.nemesis import Session, check


def rx(*texts: str, room: str = "lobby") -> list[str]:
    return [f"[{room}] x: {t}" for t in texts]


def test_one_order_everywhere_is_clean() -> None:
    a = Session("a", rx("a1", "b1", "a2", "b2"), ["a1", "a2"], False)
    b = Session("b", rx("a1", "b1", "a2", "b2"), ["b1", "b2"], False)
    v = check([a, b])
    assert v.ok and v.summary()["delivered"] == 4 and v.lost == 0, v.details


def test_a_late_joiner_sees_a_window_of_the_order() -> None:
    a = Session("a", rx("a1", "a2", "a3"), ["a1", "a2", "a3"], False)
    b = Session("b", rx("a2", "a3"), [], False)
    assert check([a, b]).ok


def test_duplicates_reorders_and_fifo_are_counted() -> None:
    a = Session("a", rx("a1", "a2", "b1"), ["a1", "a2"], False)
    b = Session("b", rx("a1", "a1", "a2", "b1"), ["b1"], False)
    c = Session("c", rx("a2", "a1", "b1"), [], False)
    v = check([a, b, c])
    assert v.duplicated == 1
    assert v.reordered >= 1 and v.fifo_broken == 1 and v.cycles == 1
    assert not v.ok


def test_a_silent_gap_is_lost_and_a_told_one_excused() -> None:
    a = Session("a", rx("a1", "a2", "a3"), ["a1", "a2", "a3"], False)
    silent = Session("s", rx("a1", "a3"), [], False)
    told = Session("t", [*rx("a1"), "* 1 lines in lobby were missed", *rx("a3")], [], False)
    v = check([a, silent, told])
    assert (v.lost, v.excused, v.notices) == (1, 1, 1)


def test_lines_nobody_got_are_excused_only_when_the_sender_was_told_or_cut() -> None:
    refused = Session("r", [*rx("r1"), "! cluster unavailable"], ["r1", "r2"], False)
    cut = Session("c", rx("c1"), ["c1", "c2"], True)  # c2 in flight at EOF
    silent = Session("s", rx("s1"), ["s1", "s2"], False)
    v = check([refused, cut, silent])
    assert (v.excused, v.lost, v.refused) == (2, 1, 1)
