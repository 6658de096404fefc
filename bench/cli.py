"""``python -m bench``: run scenarios against chatsvc and its baselines.

Each (scenario, target) run gets a fresh server. Targets of one scenario run
back to back, so their figures come from the same minutes of a noisy machine.
Results go to stdout as one JSON line per run; progress and the comparison
table go to stderr (and to ``--markdown`` when given).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Optional

from bench import report
from bench.loadgen import raise_fd_limit
from bench.scenarios import ORDER, SCENARIOS, RunContext, variants
from bench.targets import (
    DEFAULT_LOG_LEVEL,
    LOG_LEVELS,
    TARGET_NAMES,
    ChatsvcTarget,
    Target,
    TargetUnavailable,
    make_target,
)

DEFAULT_TARGETS = "chatsvc,seed,ngircd"
DEFAULT_WORKERS = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark chatsvc against a naive seed server and ngIRCd.",
    )
    p.add_argument("command", nargs="?", choices=["run"], default="run", help=argparse.SUPPRESS)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="every scenario: " + ", ".join(ORDER))
    what.add_argument("--scenario", help="comma-separated scenarios, e.g. fanout,saturate")
    p.add_argument(
        "--targets",
        default=DEFAULT_TARGETS,
        help=f"comma-separated, of {', '.join(TARGET_NAMES)} (default {DEFAULT_TARGETS})",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument(
        "--tls",
        action="store_true",
        help="run chatsvc over TLS (target chatsvc-tls: a TLS-only server, a self-signed "
        "certificate); list both in --targets, e.g. chatsvc,chatsvc-tls, to compare in one run",
    )
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="load processes")
    p.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    p.add_argument("--seconds", type=float, help="traffic seconds for saturate/fanout/slow")
    p.add_argument("--soak-seconds", type=float, help="soak duration (default 60)")
    p.add_argument("--blast-messages", type=int, help="blast message count (default 1e6)")
    p.add_argument("--idle-clients", help="comma-separated idle sizes (default 1000,5000,10000)")
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=DEFAULT_LOG_LEVEL,
        help=f"chatsvc's [logging] level (default {DEFAULT_LOG_LEVEL}, chatsvc's own default)",
    )
    p.add_argument("--chatsvc-module", default="chatsvc", help=argparse.SUPPRESS)
    p.add_argument(
        "--max-minutes", type=float, default=60.0, help="skip runs that would start later"
    )
    p.add_argument("--keep-logs", action="store_true", help="keep server logs and configs")
    return p


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    # Unwind through every finally block, which stops workers and servers.
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    names = list(ORDER) if args.all else [n.strip() for n in args.scenario.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.tls:
        target_names = ["chatsvc-tls" if t == "chatsvc" else t for t in target_names]
    try:
        targets = [make_target(t, args.chatsvc_module, args.log_level) for t in target_names]
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {
        "seconds": args.seconds,
        "soak_seconds": args.soak_seconds,
        "blast_messages": args.blast_messages,
        "idle_clients": tuple(int(n) for n in args.idle_clients.split(","))
        if args.idle_clients
        else None,
    }
    signal.signal(signal.SIGTERM, _interrupt)
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="chatsvc-bench-"))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    ctx = RunContext(workers=max(1, args.workers), workdir=workdir, log=log)
    records: list[report.Record] = []
    interrupted = False
    try:
        for name in names:
            for label, params in variants(name, args.quick, overrides):
                for target in targets:
                    if time.monotonic() - started > args.max_minutes * 60:
                        record = _record(name, label, target, params, ctx, args.quick)
                        record.update(status="skipped", error="time budget used up")
                    else:
                        log(f"{label} on {target.name}")
                        record = _run(name, label, target, params, ctx, args.quick)
                        log(
                            f"  -> {record['status']} in {record['seconds']} s"
                            + (f": {record['error']}" if record["error"] else "")
                        )
                    records.append(record)
                    _emit(record, args.jsonl)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; servers and workers stopped")
    finally:
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report.table(records, target_names)
    print("\n" + text, file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if interrupted:
        return 130
    return 1 if any(r["status"] == "failed" for r in records) else 0


def _record(
    name: str, label: str, target: Target, params: Any, ctx: RunContext, quick: bool
) -> report.Record:
    described = dict(dataclasses.asdict(params), workers=ctx.workers, quick=quick)
    if isinstance(target, ChatsvcTarget):
        described["log_level"] = target.log_level
    return report.make_record(name, label, target.name, described, {}, "ok", None, 0.0)


def _run(
    name: str, label: str, target: Target, params: Any, ctx: RunContext, quick: bool
) -> report.Record:
    record = _record(name, label, target, params, ctx, quick)
    began = time.monotonic()
    try:
        record["figures"] = SCENARIOS[name].run(target, ctx, params)
    except TargetUnavailable as exc:
        record.update(status="skipped", error=str(exc))
    except Exception as exc:  # one failed run must not stop the others
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    record["seconds"] = round(time.monotonic() - began, 1)
    return record


def _emit(record: report.Record, path: Optional[Path]) -> None:
    line = report.to_json_line(record)
    print(line, flush=True)
    if path is not None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
