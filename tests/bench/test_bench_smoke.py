"""The benchmark code runs: a quick fanout against the seed server, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_quick_fanout_against_seed_delivers_every_message() -> None:
    argv = [sys.executable, "-m", "bench", "--scenario", "fanout", "--targets", "seed"]
    proc = subprocess.run(
        [*argv, "--quick", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["scenario"], r["target"], r["status"]) for r in records] == [
        ("fanout", "seed", "ok")
    ], proc.stderr[-3000:]
    figures = records[0]["figures"]
    assert figures["expected"] > 0
    assert figures["delivered"] == figures["expected"]
    assert figures["lost"] == 0
    assert figures["p99_ms"] is not None
    assert "| fanout" in proc.stderr  # the comparison table
