"""The scenarios: what each runs against one fresh server, and the figures it reports.

Every scenario takes a target, a context and its parameters, and returns a
flat dict of figures (numbers, booleans, None when not measurable). Each phase
has a deadline; a missed deadline raises and the run is reported as failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from bench import dialects
from bench.fleet import Fleet, distribute
from bench.loadgen import (
    ROLE_IDLE,
    ROLE_RECV,
    ROLE_SEND,
    ROLE_SLOW,
    ClientSpec,
)
from bench.procfs import ProcSample, ProcWatch, read_sample, server_side_closed, tcp_counter
from bench.stats import Histogram
from bench.targets import Endpoint, Target

Figures = dict[str, Any]
Reply = dict[str, Any]
ROOMS = ("lobby", "work", "support", "team")
LOBBY = "lobby"
IN_FLIGHT = 50
LOGIN_TIMEOUT = 30.0
DRAIN_SECONDS = 10.0


@dataclass
class RunContext:
    workers: int
    workdir: Path
    log: Callable[[str], None]


# -- parameters ---------------------------------------------------------------


@dataclass(frozen=True)
class IdleParams:
    clients: int = 10_000
    in_flight: int = IN_FLIGHT


@dataclass(frozen=True)
class SaturateParams:
    receivers: int = 50
    senders: int = 5
    windows: tuple[int, ...] = (1, 4, 16, 64)
    seconds: float = 5.0


@dataclass(frozen=True)
class FanoutParams:
    receivers: int = 200
    senders: int = 4
    rate: float = 200.0  # messages per second, all senders together
    seconds: float = 10.0


@dataclass(frozen=True)
class SlowParams:
    receivers: int = 50
    senders: int = 5
    rate: float = 500.0
    seconds: float = 20.0


@dataclass(frozen=True)
class ChurnParams:
    cycles: int = 5000
    concurrency: int = 20


@dataclass(frozen=True)
class SoakParams:
    clients: int = 1000
    seconds: float = 60.0
    rate: float = 50.0
    senders_per_room: int = 10
    churners: int = 10


@dataclass(frozen=True)
class BlastParams:
    messages: int = 1_000_000
    senders: int = 2
    receivers: int = 2
    window: int = 64
    max_seconds: float = 240.0


Params = Union[
    IdleParams, SaturateParams, FanoutParams, SlowParams, ChurnParams, SoakParams, BlastParams
]


# -- a server and its load for one run ---------------------------------------------


@dataclass
class Rig:
    endpoint: Endpoint
    fleet: Fleet
    watch: ProcWatch
    hooks: list[Callable[[], None]] = field(default_factory=list)

    @property
    def workers(self) -> int:
        return len(self.fleet.plans)

    def tick(self) -> None:
        for hook in self.hooks:
            hook()

    def cpu(self) -> tuple[float, float, float]:
        """(monotonic time, server CPU seconds, load generator CPU seconds) so far."""
        server = read_sample(self.endpoint.pid)
        workers = [read_sample(pid) for pid in self.fleet.pids()]
        return (
            time.monotonic(),
            server.cpu_s if server else 0.0,
            sum(w.cpu_s for w in workers if w is not None),
        )

    def split(self, total: int) -> list[int]:
        """``total`` shared out over the workers (at least 1 each)."""
        base, extra = divmod(total, self.workers)
        return [max(1, base + (1 if i < extra else 0)) for i in range(self.workers)]


@contextlib.contextmanager
def rig(
    target: Target,
    ctx: RunContext,
    clients: Sequence[ClientSpec],
    tag: str,
    closed_loop: bool = False,
) -> Iterator[Rig]:
    with target.running(ctx.workdir / tag) as endpoint:
        watch = ProcWatch(endpoint.pid)
        echoes = dialects.get(endpoint.dialect).echoes
        ack_room = LOBBY if closed_loop and not echoes else None
        plans = distribute(
            clients,
            ctx.workers,
            endpoint.host,
            endpoint.port,
            endpoint.dialect,
            ack_room,
            tls=endpoint.tls,
            tls_resume=endpoint.tls_resume,
        )
        holder: list[Rig] = []
        fleet = Fleet(plans, tick=lambda: holder[0].tick() if holder else None)
        current = Rig(endpoint, fleet, watch, [watch.tick])
        holder.append(current)
        try:
            fleet.start()
            yield current
        finally:
            fleet.stop()


def login(s: Rig, clients: int, in_flight: int = IN_FLIGHT) -> Reply:
    deadline_s = 60.0 + clients / 50.0
    deadline = time.monotonic() + deadline_s
    args = [
        {"in_flight": share, "timeout": LOGIN_TIMEOUT, "deadline": deadline}
        for share in s.split(in_flight)
    ]
    replies = s.fleet.call("login", args, timeout=deadline_s + 15.0)
    hist = Histogram()
    errors: Counter[str] = Counter()
    for reply in replies:
        hist.merge(Histogram.from_wire(reply["hist"]))
        errors.update(reply["errors"])
    firsts = [r["first"] for r in replies if r["first"] is not None]
    lasts = [r["last"] for r in replies if r["last"] is not None]
    return {
        "ok": sum(r["ok"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "errors": dict(errors),
        "hist": hist,
        "elapsed": (max(lasts) - min(firsts)) if firsts and lasts else None,
        "slow_ports": [port for r in replies for port in r["slow_ports"]],
        "tls_resumed": sum(r["tls_resumed"] for r in replies),
    }


def traffic(s: Rig, args: dict[str, Any], seconds: float) -> Reply:
    args = dict(args)
    args.setdefault("t0", time.monotonic() + 0.3)
    args["seconds"] = seconds
    replies = s.fleet.call("traffic", args, timeout=seconds + 30.0)
    seq: dict[int, int] = {}
    for reply in replies:
        seq.update({int(k): int(v) for k, v in reply["seq"].items()})
    merged: Reply = {
        "t0": args["t0"],
        "seq": seq,
        "phase_sent": sum(r["phase_sent"] for r in replies),
        "blocked": sum(r["blocked"] for r in replies),
        "lag_max_ms": max(r["lag_max_ms"] for r in replies),
        "senders_alive": sum(r["senders_alive"] for r in replies),
        "finished": time.monotonic(),
    }
    churns = [r["churn"] for r in replies if "churn" in r]
    if churns:
        merged["churn"] = merge_churn(churns)
    return merged


def drain(s: Rig, seq: dict[int, int], rooms: dict[int, str], seconds: float) -> Reply:
    deadline = time.monotonic() + seconds
    args = {"seq": seq, "rooms": rooms, "deadline": deadline}
    replies = s.fleet.call("drain", args, timeout=seconds + 15.0)
    hist = Histogram()
    for reply in replies:
        hist.merge(Histogram.from_wire(reply["hist"]))
    return {
        "phase_rx": sum(r["phase_rx"] for r in replies),
        "window_rx": sum(r["window_rx"] for r in replies),
        "hist": hist,
        "missing": sum(r["missing"] for r in replies),
        "dups": sum(r["dups"] for r in replies),
        "receivers_alive": sum(r["receivers_alive"] for r in replies),
        "receivers_dead": sum(r["receivers_dead"] for r in replies),
        "complete": all(r["complete"] for r in replies),
        "slow_closed_at": [t for r in replies for t in r["slow_closed_at"]],
    }


def merge_churn(replies: Sequence[Reply]) -> Reply:
    hist = Histogram()
    errors: Counter[str] = Counter()
    for reply in replies:
        hist.merge(Histogram.from_wire(reply["hist"]))
        errors.update(reply["errors"])
    return {
        "ok": sum(r["ok"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "errors": dict(errors),
        "hist": hist,
        "seconds": max((r["seconds"] for r in replies), default=0.0),
    }


def senders_and_receivers(
    receivers: int, senders: int, rooms: Sequence[str] = (LOBBY,)
) -> tuple[list[ClientSpec], dict[int, str]]:
    specs = [ClientSpec(ROLE_RECV, f"r{i}", rooms[i % len(rooms)]) for i in range(receivers)]
    room_of: dict[int, str] = {}
    for gid in range(senders):
        room = rooms[gid % len(rooms)]
        specs.append(ClientSpec(ROLE_SEND, f"s{gid}", room, gid))
        room_of[gid] = room
    return specs, room_of


def check_logins(result: Reply, expected: int) -> None:
    if result["ok"] < expected:
        raise RuntimeError(
            f"only {result['ok']} of {expected} clients logged in: {result['errors']}"
        )


def mb(kb: Optional[int]) -> Optional[float]:
    return None if kb is None else round(kb / 1024.0, 1)


def ratio_pct(part: float, whole: float) -> Optional[float]:
    return None if whole <= 0 else round(100.0 * part / whole, 2)


def cpu_use(
    before: tuple[float, float, float], after: tuple[float, float, float], suffix: str = ""
) -> Figures:
    """CPU used by the server and by the load generator, in % of one core."""
    wall = max(1e-6, after[0] - before[0])
    return {
        "server_cpu_pct" + suffix: round(100.0 * (after[1] - before[1]) / wall, 1),
        "loadgen_cpu_pct" + suffix: round(100.0 * (after[2] - before[2]) / wall, 1),
    }


def cpu_per(
    before: tuple[float, float, float],
    after: tuple[float, float, float],
    count: int,
    unit: str,
    suffix: str = "",
) -> Figures:
    """CPU time per ``unit`` (login, delivery) of the server and of the load generator, µs.

    What a wall-clock rate cannot tell apart on a machine the server shares with
    its load: the server's own cost, e.g. of TLS, whatever the generator's costs.
    """
    per: Figures = {}
    for side, index in (("server", 1), ("loadgen", 2)):
        used = after[index] - before[index]
        per[f"{side}_cpu_us_per_{unit}{suffix}"] = round(1e6 * used / count, 2) if count else None
    return per


def latency(hist: Histogram, suffix: str = "") -> Figures:
    return {key + suffix: value for key, value in hist.summary_ms().items()}


# -- scenarios ----------------------------------------------------------------------------


def run_idle(target: Target, ctx: RunContext, p: IdleParams) -> Figures:
    clients = [ClientSpec(ROLE_IDLE, f"u{i}") for i in range(p.clients)]
    with rig(target, ctx, clients, f"idle{p.clients}") as s:
        s.fleet.sleep(0.5)
        base = s.watch.now()
        overflows = tcp_counter("ListenOverflows")
        cpu_before = s.cpu()
        result = login(s, p.clients, p.in_flight)
        cpu_after = s.cpu()
        overflows = tcp_counter("ListenOverflows") - overflows
        s.fleet.sleep(1.0)  # let the server settle before reading its memory
        after = s.watch.now()
    ok = result["ok"]
    elapsed = result["elapsed"]
    hist: Histogram = result["hist"]
    return {
        "clients": p.clients,
        "ok": ok,
        "failed": result["failed"],
        "errors": result["errors"],
        "elapsed_s": None if elapsed is None else round(elapsed, 2),
        "login_rate_per_s": None if not elapsed else round(ok / elapsed, 1),
        "login_p50_ms": hist.summary_ms()["p50_ms"],
        "login_p99_ms": hist.summary_ms()["p99_ms"],
        "login_max_ms": hist.summary_ms()["max_ms"],
        "rss_base_mb": mb(base.rss_kb),
        "rss_mb": mb(after.rss_kb),
        "rss_per_client_kb": round((after.rss_kb - base.rss_kb) / ok, 1) if ok else None,
        **cpu_per(cpu_before, cpu_after, ok, "login"),
        "tls_resumed": result["tls_resumed"],
        "threads": after.threads,
        "fds": after.fds,
        "all_within_10s": bool(ok == p.clients and elapsed is not None and elapsed <= 10.0),
        # System-wide: connection attempts dropped because the listen queue was full
        # (each costs the client a 1 s SYN retransmit).
        "listen_overflows": overflows,
    }


def run_saturate(target: Target, ctx: RunContext, p: SaturateParams) -> Figures:
    clients, room_of = senders_and_receivers(p.receivers, p.senders)
    figures: Figures = {}
    best: Optional[tuple[float, int, Optional[float]]] = None
    with rig(target, ctx, clients, "saturate", closed_loop=True) as s:
        check_logins(login(s, len(clients)), len(clients))
        for window in p.windows:
            ctx.log(f"  window {window}")
            before = s.cpu()
            sent = traffic(s, {"mode": "closed", "window": window}, p.seconds)
            after = s.cpu()
            figures.update(cpu_use(before, after, f"_w{window}"))
            got = drain(s, sent["seq"], room_of, DRAIN_SECONDS)
            figures.update(cpu_per(before, after, got["window_rx"], "delivery", f"_w{window}"))
            rate = round(got["window_rx"] / p.seconds, 1)
            p99 = got["hist"].summary_ms()["p99_ms"]
            figures[f"delivered_per_s_w{window}"] = rate
            figures[f"p99_ms_w{window}"] = p99
            figures[f"lost_w{window}"] = got["missing"]
            if best is None or rate > best[0]:
                best = (rate, window, p99)
    assert best is not None
    figures["delivered_per_s"] = best[0]
    figures["best_window"] = best[1]
    figures["p99_ms"] = best[2]
    figures["server_cpu_pct"] = figures[f"server_cpu_pct_w{best[1]}"]
    figures["loadgen_cpu_pct"] = figures[f"loadgen_cpu_pct_w{best[1]}"]
    for side in ("server", "loadgen"):
        key = f"{side}_cpu_us_per_delivery"
        figures[key] = figures[f"{key}_w{best[1]}"]
    return figures


def run_fanout(target: Target, ctx: RunContext, p: FanoutParams) -> Figures:
    clients, room_of = senders_and_receivers(p.receivers, p.senders)
    with rig(target, ctx, clients, "fanout") as s:
        check_logins(login(s, len(clients)), len(clients))
        args = {"mode": "rate", "rate": p.rate / p.senders, "spread": p.senders}
        before = s.cpu()
        sent = traffic(s, args, p.seconds)
        used = cpu_use(before, s.cpu())
        got = drain(s, sent["seq"], room_of, DRAIN_SECONDS)
    expected = sent["phase_sent"] * p.receivers
    return {
        "sent": sent["phase_sent"],
        "expected": expected,
        "delivered": got["phase_rx"],
        "delivered_pct": ratio_pct(got["phase_rx"], expected),
        "delivered_per_s": round(got["phase_rx"] / p.seconds, 1),
        **latency(got["hist"]),
        "lost": got["missing"],
        "send_skipped": sent["blocked"],
        "send_lag_max_ms": sent["lag_max_ms"],
        "receivers_dropped": got["receivers_dead"],
        **used,
    }


def _slow_once(target: Target, ctx: RunContext, p: SlowParams, with_slow: bool) -> Figures:
    clients, room_of = senders_and_receivers(p.receivers, p.senders)
    if with_slow:
        clients.append(ClientSpec(ROLE_SLOW, "slow0", LOBBY))
    tag = "slow-with" if with_slow else "slow-without"
    with rig(target, ctx, clients, tag) as s:
        result = login(s, len(clients))
        check_logins(result, len(clients))
        t0 = time.monotonic() + 0.3
        cut: dict[str, float] = {}
        if with_slow:
            (slow_port,) = result["slow_ports"]
            server_port = s.endpoint.port
            next_check = [t0]

            def watch_cut() -> None:
                now = time.monotonic()
                if "at" in cut or now < next_check[0]:
                    return
                next_check[0] = now + 0.1
                if server_side_closed(server_port, slow_port):
                    cut["at"] = now

            s.hooks.append(watch_cut)
        args = {"mode": "rate", "rate": p.rate / p.senders, "spread": p.senders, "t0": t0}
        sent = traffic(s, args, p.seconds)
        got = drain(s, sent["seq"], room_of, 5.0)
        end = s.watch.now()
        rss_max = s.watch.max_rss_kb(since=t0)
    expected = sent["phase_sent"] * p.receivers
    suffix = "_with" if with_slow else "_without"
    figures: Figures = {
        "delivered_pct" + suffix: ratio_pct(got["phase_rx"], expected),
        "delivered" + suffix: got["phase_rx"],
        "expected" + suffix: expected,
        **latency(got["hist"], suffix),
        "rss_mb_max" + suffix: mb(rss_max),
        "rss_mb_end" + suffix: mb(end.rss_kb),
        "send_skipped" + suffix: sent["blocked"],
    }
    if with_slow:
        figures["cut_s"] = round(cut["at"] - t0, 2) if "at" in cut else None
    return figures


def run_slowconsumer(target: Target, ctx: RunContext, p: SlowParams) -> Figures:
    ctx.log("  without the slow member")
    figures = _slow_once(target, ctx, p, with_slow=False)
    ctx.log("  with the slow member")
    figures.update(_slow_once(target, ctx, p, with_slow=True))
    return figures


def run_churn(target: Target, ctx: RunContext, p: ChurnParams) -> Figures:
    with rig(target, ctx, [], "churn") as s:
        s.fleet.sleep(1.0)
        base = s.watch.now()
        seconds = 30.0 + p.cycles / 10.0
        deadline = time.monotonic() + seconds
        args = [
            {"cycles": cycles, "concurrency": conc, "deadline": deadline, "rooms": [LOBBY]}
            for cycles, conc in zip(s.split(p.cycles), s.split(p.concurrency))
        ]
        result = merge_churn(s.fleet.call("churn", args, timeout=seconds + 30.0))
        settle_start = time.monotonic()
        end = _settle(s, base, 10.0)
        settle = time.monotonic() - settle_start
    hist: Histogram = result["hist"]
    return {
        "cycles": result["ok"],
        "failed": result["failed"],
        "errors": result["errors"],
        "cycles_per_s": round(result["ok"] / result["seconds"], 1) if result["seconds"] else None,
        "cycle_p99_ms": hist.summary_ms()["p99_ms"],
        "threads_base": base.threads,
        "threads_end": end.threads,
        "fds_base": base.fds,
        "fds_end": end.fds,
        "leaked_threads": max(0, end.threads - base.threads),
        "leaked_fds": max(0, end.fds - base.fds),
        "settle_s": round(settle, 2),
        "rss_base_mb": mb(base.rss_kb),
        "rss_end_mb": mb(end.rss_kb),
    }


def _settle(s: Rig, base: ProcSample, seconds: float) -> ProcSample:
    """Wait (bounded) for threads and fds to come back to ``base``."""
    deadline = time.monotonic() + seconds
    while True:
        sample = s.watch.now()
        back = sample.threads <= base.threads and sample.fds <= base.fds
        if back or time.monotonic() >= deadline:
            return sample
        s.fleet.sleep(0.1)


def run_soak(target: Target, ctx: RunContext, p: SoakParams) -> Figures:
    senders = p.senders_per_room * len(ROOMS)
    receivers = p.clients - p.churners - senders
    if receivers < len(ROOMS):
        raise ValueError("soak needs more clients than senders and churners")
    clients, room_of = senders_and_receivers(receivers, senders, ROOMS)
    with rig(target, ctx, clients, "soak") as s:
        check_logins(login(s, len(clients)), len(clients))
        start = s.watch.now()
        churn_shares = s.split(p.churners) if p.churners else [0] * s.workers
        args: list[dict[str, Any]] = []
        t0 = time.monotonic() + 0.5
        for share in churn_shares:
            worker_args: dict[str, Any] = {
                "mode": "rate",
                "rate": p.rate / senders,
                "spread": senders,
                "t0": t0,
            }
            if share:
                worker_args["churn"] = {"cycles": 10**9, "concurrency": share, "rooms": ROOMS}
            args.append(worker_args)
        before = s.cpu()
        replies = s.fleet.call("traffic", _with_seconds(args, p.seconds), p.seconds + 30.0)
        used = cpu_use(before, s.cpu())
        seq: dict[int, int] = {}
        for reply in replies:
            seq.update({int(k): int(v) for k, v in reply["seq"].items()})
        churns = [r["churn"] for r in replies if "churn" in r]
        churn = merge_churn(churns) if churns else None
        got = drain(s, seq, room_of, 15.0)
        end = s.watch.now()
        rss_max = s.watch.max_rss_kb(since=t0)
    sent_total = sum(r["phase_sent"] for r in replies)
    return {
        "clients": p.clients,
        "seconds": p.seconds,
        "sent": sent_total,
        "delivered": got["phase_rx"],
        "lost": got["missing"],
        "duplicates": got["dups"],
        "receivers_dropped": got["receivers_dead"],
        **latency(got["hist"]),
        "churn_cycles": None if churn is None else churn["ok"],
        "churn_failed": None if churn is None else churn["failed"],
        "rss_start_mb": mb(start.rss_kb),
        "rss_end_mb": mb(end.rss_kb),
        "rss_max_mb": mb(rss_max),
        "threads_start": start.threads,
        "threads_end": end.threads,
        "fds_start": start.fds,
        "fds_end": end.fds,
        **used,
    }


def _with_seconds(args: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    return [dict(a, seconds=seconds) for a in args]


def run_blast(target: Target, ctx: RunContext, p: BlastParams) -> Figures:
    clients, room_of = senders_and_receivers(p.receivers, p.senders)
    quota = math.ceil(p.messages / p.senders)
    with rig(target, ctx, clients, "blast", closed_loop=True) as s:
        s.watch.interval = 0.5
        check_logins(login(s, len(clients)), len(clients))
        start = s.watch.now()
        args = {"mode": "closed", "window": p.window, "quota": quota}
        before = s.cpu()
        sent = traffic(s, args, p.max_seconds)
        used = cpu_use(before, s.cpu())
        got = drain(s, sent["seq"], room_of, 15.0)
        end = s.watch.now()
        t0 = sent["t0"]
        elapsed = max(1e-6, sent["finished"] - t0)
        rss_mid = s.watch.rss_at(t0 + elapsed / 2)
        rss_max = s.watch.max_rss_kb(since=t0)
    total = sent["phase_sent"]
    expected = total * p.receivers
    growth = None if rss_mid is None else mb(end.rss_kb - rss_mid)
    return {
        "messages": total,
        "complete": total >= p.messages,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(total / elapsed, 1),
        "delivered": got["phase_rx"],
        "delivered_pct": ratio_pct(got["phase_rx"], expected),
        **latency(got["hist"]),
        "rss_start_mb": mb(start.rss_kb),
        "rss_max_mb": mb(rss_max),
        "rss_end_mb": mb(end.rss_kb),
        "rss_growth_2nd_half_mb": growth,
        "rss_flat": growth is not None and growth < 10.0,
        **used,
    }


# -- registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str
    better: str  # "higher", "lower" or "" (for information)


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Target, RunContext, Any], Figures]
    figures: tuple[Figure, ...]
    doc: str


def _f(*pairs: tuple[str, str]) -> tuple[Figure, ...]:
    return tuple(Figure(key, better) for key, better in pairs)


H, L, I_ = "higher", "lower", ""

SCENARIOS: dict[str, Scenario] = {
    "idle": Scenario(
        "idle",
        run_idle,
        _f(
            ("ok", H),
            ("failed", L),
            ("login_rate_per_s", H),
            ("login_p99_ms", L),
            ("rss_per_client_kb", L),
            ("server_cpu_us_per_login", L),
            ("loadgen_cpu_us_per_login", I_),
            ("threads", I_),
            ("elapsed_s", L),
            ("all_within_10s", H),
        ),
        "N clients connect and log in, 50 in flight",
    ),
    "saturate": Scenario(
        "saturate",
        run_saturate,
        _f(
            ("delivered_per_s", H),
            ("best_window", I_),
            ("delivered_per_s_w1", H),
            ("delivered_per_s_w4", H),
            ("delivered_per_s_w16", H),
            ("delivered_per_s_w64", H),
            ("p99_ms", L),
            ("server_cpu_us_per_delivery", L),
            ("loadgen_cpu_us_per_delivery", I_),
        ),
        "closed loop, W unacknowledged messages per sender",
    ),
    "fanout": Scenario(
        "fanout",
        run_fanout,
        _f(
            ("delivered_pct", H),
            ("delivered", H),
            ("expected", I_),
            ("p50_ms", L),
            ("p99_ms", L),
            ("max_ms", L),
        ),
        "R receivers, S senders, fixed total rate",
    ),
    "slowconsumer": Scenario(
        "slowconsumer",
        run_slowconsumer,
        _f(
            ("delivered_pct_without", H),
            ("delivered_pct_with", H),
            ("p99_ms_without", L),
            ("p99_ms_with", L),
            ("cut_s", L),
            ("rss_mb_max_without", L),
            ("rss_mb_max_with", L),
        ),
        "fanout with and without one member that never reads",
    ),
    "churn": Scenario(
        "churn",
        run_churn,
        _f(
            ("cycles", H),
            ("failed", L),
            ("cycles_per_s", H),
            ("threads_base", I_),
            ("threads_end", I_),
            ("fds_base", I_),
            ("fds_end", I_),
            ("leaked_threads", L),
            ("leaked_fds", L),
        ),
        "connect, log in, chat, disconnect in a loop",
    ),
    "soak": Scenario(
        "soak",
        run_soak,
        _f(
            ("sent", I_),
            ("delivered", H),
            ("lost", L),
            ("receivers_dropped", L),
            ("p99_ms", L),
            ("churn_cycles", H),
            ("rss_start_mb", L),
            ("rss_end_mb", L),
            ("threads_start", I_),
            ("threads_end", I_),
            ("fds_start", I_),
            ("fds_end", I_),
        ),
        "mixed traffic from many clients in four rooms, with churn",
    ),
    "blast": Scenario(
        "blast",
        run_blast,
        _f(
            ("messages", I_),
            ("msgs_per_s", H),
            ("seconds", L),
            ("delivered_pct", H),
            ("rss_start_mb", L),
            ("rss_max_mb", L),
            ("rss_end_mb", L),
            ("rss_growth_2nd_half_mb", L),
        ),
        "a million messages through a few senders and receivers",
    ),
}

ORDER = ("idle", "saturate", "fanout", "slowconsumer", "churn", "soak", "blast")


def variants(name: str, quick: bool, overrides: dict[str, Any]) -> list[tuple[str, Params]]:
    """(label, parameters) of each run of a scenario."""
    seconds = overrides.get("seconds")
    if name == "idle":
        sizes = overrides.get("idle_clients") or ((200,) if quick else (1000, 5000, 10_000))
        return [(f"idle N={n}", IdleParams(clients=n)) for n in sizes]
    if name == "saturate":
        sat = SaturateParams(10, 2, (1, 16), 1.5) if quick else SaturateParams()
        if seconds:
            sat = dataclasses.replace(sat, seconds=seconds)
        return [(f"saturate R={sat.receivers} S={sat.senders}", sat)]
    if name == "fanout":
        fan = FanoutParams(20, 2, 100.0, 2.0) if quick else FanoutParams()
        if seconds:
            fan = dataclasses.replace(fan, seconds=seconds)
        return [(f"fanout R={fan.receivers} {fan.rate:g} msg/s", fan)]
    if name == "slowconsumer":
        slow = SlowParams(10, 2, 200.0, 4.0) if quick else SlowParams()
        if seconds:
            slow = dataclasses.replace(slow, seconds=seconds)
        return [(f"slowconsumer R={slow.receivers} {slow.rate:g} msg/s {slow.seconds:g} s", slow)]
    if name == "churn":
        churn = ChurnParams(150, 10) if quick else ChurnParams()
        return [(f"churn {churn.cycles} cycles", churn)]
    if name == "soak":
        soak = SoakParams(100, 5.0, 20.0, 2, 4) if quick else SoakParams()
        if overrides.get("soak_seconds"):
            soak = dataclasses.replace(soak, seconds=float(overrides["soak_seconds"]))
        return [(f"soak {soak.clients} clients {soak.seconds:g} s", soak)]
    if name == "blast":
        blast = BlastParams(messages=20_000, max_seconds=60.0) if quick else BlastParams()
        if overrides.get("blast_messages"):
            blast = dataclasses.replace(blast, messages=int(overrides["blast_messages"]))
        return [(f"blast {blast.messages} msgs", blast)]
    raise ValueError(f"unknown scenario {name!r}")
