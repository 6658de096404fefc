"""The benchmark code runs: a quick fanout against the seed server, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.targets import make_target

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


@pytest.mark.timeout(120)
def test_quick_idle_over_tls_logs_every_client_in() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (chatsvc-tls needs it)")
    argv = [sys.executable, "-m", "bench", "--scenario", "idle", "--tls", "--quick"]
    proc = subprocess.run(
        [
            *argv,
            "--targets",
            "chatsvc,chatsvc-tls-resume",
            "--workers",
            "1",
            "--idle-clients",
            "120",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["scenario"], r["target"], r["status"]) for r in records] == [
        ("idle", "chatsvc-tls", "ok"),
        ("idle", "chatsvc-tls-resume", "ok"),
    ], proc.stderr[-3000:]
    full, resumed = (r["figures"] for r in records)
    assert full["ok"] == resumed["ok"] == 120
    # CPU per login of each side, from /proc.  With 50 logins in flight, those
    # that start before the first one is done make full handshakes; the later
    # ones resume its session.
    assert full["server_cpu_us_per_login"] is not None
    assert resumed["loadgen_cpu_us_per_login"] is not None
    assert full["tls_resumed"] == 0
    assert 0 < resumed["tls_resumed"] <= 119


@pytest.mark.timeout(60)
def test_probe_measures_a_target_against_the_floor_in_the_same_run() -> None:
    argv = [sys.executable, "-m", "bench.probe", "--targets", "seed", "--repeat", "1"]
    proc = subprocess.run(
        [*argv, "--receivers", "20", "--rate", "100", "--seconds", "1", "--turn", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["target"], r["status"]) for r in records] == [("seed", "ok")], proc.stdout
    (seed,) = records
    # 100 messages in blocks of 10, taking turns: half to the server, half to the floor
    assert seed["delivered"] == seed["expected"] == 50 * 20
    assert seed["floor_delivered"] == seed["floor_expected"] == 50 * 20
    assert seed["p99_x_floor"] == round(seed["p99_ms"] / seed["floor_p99_ms"], 2)
    assert "| seed | 1 |" in proc.stderr  # the summary table


@pytest.mark.timeout(90)
def test_probe_over_tls_times_what_tls_receivers_get() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (chatsvc-tls needs it)")
    argv = [sys.executable, "-m", "bench.probe", "--targets", "chatsvc-tls", "--repeat", "1"]
    proc = subprocess.run(
        [*argv, "--receivers", "10", "--rate", "100", "--seconds", "1", "--turn", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["target"], r["status"]) for r in records] == [("chatsvc-tls", "ok")], proc.stdout
    (tls,) = records
    # every line decrypted and timed at the receivers; the floor stays plain TCP
    assert tls["delivered"] == tls["expected"] == 50 * 10
    assert tls["floor_delivered"] == tls["floor_expected"] == 50 * 10
    assert 0 < tls["p50_ms"] <= tls["p99_ms"]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("target", ["chatsvc-irc", "inspircd", "ngircd"])
def test_quick_irc_runs_deliver_every_message(target: str) -> None:
    """The IRC targets: registration, JOIN after the MOTD, the closed loop's acks."""
    reason = make_target(target).unavailable()
    if reason:
        pytest.skip(reason)
    argv = [sys.executable, "-m", "bench", "--scenario", "fanout,saturate", "--targets", target]
    proc = subprocess.run(
        [*argv, "--quick", "--workers", "2", "--seconds", "1", "--max-minutes", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["scenario"], r["target"], r["status"]) for r in records] == [
        ("fanout", target, "ok"),
        ("saturate", target, "ok"),
    ], proc.stderr[-3000:]
    fanout, saturate = (r["figures"] for r in records)
    assert fanout["expected"] > 0
    assert fanout["delivered"] == fanout["expected"]
    assert fanout["lost"] == 0
    assert saturate["delivered_per_s"] > 0


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_cluster_soak_smoke_checks_a_clean_history_under_faults() -> None:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    argv = [sys.executable, "-m", "bench.cluster", "--soak", "12", "--soak-nodes", "2"]
    proc = subprocess.run(
        [*argv, "--soak-gap", "1.5", "--soak-rate", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["ok"] and result["sent"] > 100, result
    assert sum(result["faults"].values()) >= 2, result
    assert (result["lost"], result["duplicated"], result["reordered"]) == (0, 0, 0), result
