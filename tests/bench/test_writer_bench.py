"""A bounded smoke run of ``python -m bench.writer``."""

from __future__ import annotations

import pytest

from bench import writer


def test_the_writer_bench_runs_and_reports_a_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert writer.main(["--members", "20", "--rounds", "50", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "median ratio over 1 runs" in out


def test_every_member_gets_every_line() -> None:
    # measure() checks that every member got every line (it raises otherwise)
    writer_ns, floor_ns = writer.measure(members=10, rounds=20)
    assert writer_ns > 0 and floor_ns > 0
