"""Fan-out latency measured at the kernel, against the floor: ``python -m bench.probe``.

The main ``fanout`` scenario times a line when the load generator's event loop
gets to it, so on a 2-core machine its figures include the generator's own
queueing (both chatsvc and ngIRCd show p99 near 5 ms there).  This probe asks
the kernel for the arrival time of every segment (``SO_TIMESTAMPNS``), so what
it reports is send-to-arrival time: the server plus loopback TCP, not the
reader.  One sender process sends at a fixed rate; one process with epoll
reads all receivers.

The ``floor`` target has no server: the sender process holds the other ends
of the receivers' connections and sends each line to all of them itself, one
``send`` per receiver in a tight loop, at the same rate and for the same time.
That is what one process needs just to get a line into R loopback sockets on
this machine at this moment.  Each round runs the floor and then every target,
and each target's p99 is also given as a multiple of that round's floor p99,
which is the figure to compare across runs and machines.

Bounded: per run, at most 10 s to connect and log in, ``--seconds`` of traffic
and a 10 s drain.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import select
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from bench.targets import HOST, make_target

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; not exported by 3.9
TIMESPEC = struct.Struct("qq")
FLOOR = "floor"
DEFAULT_TARGETS = "chatsvc,ngircd,seed"
LOGIN_SECONDS = 10.0
DRAIN_SECONDS = 10.0


def login(port: int, name: str, irc: bool) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=LOGIN_SECONDS)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if irc:
        s.sendall(f"NICK {name}\r\nUSER {name} 0 * :{name}\r\nJOIN #lobby\r\n".encode())
        done = b" 366 "  # end of NAMES: joined
    else:
        s.sendall(name.encode() + b"\n")
        done = b"* hello "
    buf = b""
    deadline = time.monotonic() + LOGIN_SECONDS
    while done not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} could not log in")
        buf += s.recv(65536)
    s.settimeout(None)  # a timeout would turn MSG_DONTWAIT reads into waits
    return s


def sender(port: int, irc: bool, rate: float, seconds: float, go: Any) -> None:
    s = login(port, "probe_sender", irc)
    go.wait(30)
    t0 = time.monotonic()
    for k in range(int(rate * seconds)):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        text = f"TS={time.time_ns() // 1000} probe"
        s.sendall((f"PRIVMSG #lobby :{text}\r\n" if irc else text + "\n").encode())
        try:  # our own echo (chatsvc) must not pile up
            while s.recv(65536, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass
    s.close()


def floor_sender(port: int, receivers: int, rate: float, seconds: float, go: Any) -> None:
    """The floor: this process sends every line to every receiver itself."""
    socks = []
    for _ in range(receivers):
        s = socket.create_connection((HOST, port), timeout=LOGIN_SECONDS)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    sends = [s.send for s in socks]
    go.wait(30)
    t0 = time.monotonic()
    for k in range(int(rate * seconds)):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # the line chatsvc's receivers get, stamped just before the first send
        line = f"[lobby] probe_sender: TS={time.time_ns() // 1000} probe\n".encode()
        for send in sends:
            send(line)
    for s in socks:
        s.close()


@contextmanager
def floor_receivers(
    target: str, receivers: int, rate: float, seconds: float, go: Any
) -> Iterator[tuple[list[socket.socket], Any]]:
    """Accepted ends of the floor sender's connections, and the sender process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(receivers)
        port = listener.getsockname()[1]
        proc = multiprocessing.Process(
            target=floor_sender, args=(port, receivers, rate, seconds, go), daemon=True
        )
        proc.start()
        listener.settimeout(LOGIN_SECONDS)
        socks = [listener.accept()[0] for _ in range(receivers)]
        try:
            yield socks, proc
        finally:
            for s in socks:
                s.close()


@contextmanager
def server_receivers(
    target: str, receivers: int, rate: float, seconds: float, go: Any
) -> Iterator[tuple[list[socket.socket], Any]]:
    """Receivers logged in to a fresh server, and a sender process logging in too."""
    name, _, module = target.partition(":")
    irc = name == "ngircd"
    server = make_target(name, module or "chatsvc")
    with tempfile.TemporaryDirectory() as work, server.running(Path(work)) as ep:
        socks = [login(ep.port, f"probe{i}", irc) for i in range(receivers)]
        try:
            proc = multiprocessing.Process(
                target=sender, args=(ep.port, irc, rate, seconds, go), daemon=True
            )
            proc.start()
            yield socks, proc
        finally:
            for s in socks:
                s.close()


def run(target: str, receivers: int, rate: float, seconds: float) -> dict[str, Any]:
    go = multiprocessing.Event()
    rig = floor_receivers if target == FLOOR else server_receivers
    expected = int(rate * seconds) * receivers
    with rig(target, receivers, rate, seconds, go) as (socks, proc):
        try:
            latencies = collect(socks, go, expected, seconds + DRAIN_SECONDS)
        finally:
            proc.join(DRAIN_SECONDS)
            if proc.is_alive():
                proc.kill()
                proc.join(1)
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[int(q * (len(latencies) - 1))] / 1000, 3) if latencies else -1.0

    return {
        "probe": "fanout",
        "target": target,
        "receivers": receivers,
        "rate": rate,
        "seconds": seconds,
        "delivered": len(latencies),
        "expected": expected,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] / 1000, 3) if latencies else -1.0,
    }


def collect(socks: list[socket.socket], go: Any, expected: int, seconds: float) -> list[int]:
    """Latencies in µs (kernel arrival minus send time in the line) until all or ``seconds``."""
    poller = select.epoll()
    by_fd: dict[int, socket.socket] = {}
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        poller.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    latencies: list[int] = []
    partial: dict[int, bytes] = {}
    ancillary = socket.CMSG_SPACE(TIMESPEC.size)
    go.set()
    deadline = time.monotonic() + seconds
    try:
        while len(latencies) < expected and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                data, anc, _, _ = by_fd[fd].recvmsg(65536, ancillary)
                arrived = time.time_ns() // 1000
                for _, kind, payload in anc:
                    if kind == SO_TIMESTAMPNS:
                        sec, nsec = TIMESPEC.unpack(payload[: TIMESPEC.size])
                        arrived = (sec * 1_000_000_000 + nsec) // 1000
                *lines, partial[fd] = (partial.get(fd, b"") + data).split(b"\n")
                for line in lines:
                    at = line.find(b"TS=")
                    if at >= 0:
                        latencies.append(arrived - int(line[at + 3 :].split(b" ", 1)[0]))
    finally:
        poller.close()
    return latencies


def summary(records: list[dict[str, Any]]) -> str:
    """Medians over the rounds, as a Markdown table."""
    rows = [
        "| target | runs | delivered | p50 ms | p99 ms | max ms | p99 / floor p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    order: dict[str, None] = dict.fromkeys(r["target"] for r in records)
    for target in order:
        mine = [r for r in records if r["target"] == target and r.get("status") == "ok"]
        if not mine:
            rows.append(f"| {target} | 0 | skipped or failed | | | | |")
            continue
        ratios = [r["p99_x_floor"] for r in mine if r.get("p99_x_floor") is not None]
        delivered = sum(r["delivered"] for r in mine)
        expected = sum(r["expected"] for r in mine)
        rows.append(
            f"| {target} | {len(mine)} | {delivered:,}/{expected:,}"
            f" | {_median(r['p50_ms'] for r in mine)}"
            f" | {_median(r['p99_ms'] for r in mine)}"
            f" | {_median(r['max_ms'] for r in mine)}"
            f" | {(str(_median(ratios)) + 'x') if ratios else '-'} |"
        )
    return "\n".join(rows)


def _median(values: Any) -> float:
    return round(float(statistics.median(list(values))), 3)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--targets",
        default=DEFAULT_TARGETS,
        help=f"compared with the floor, which always runs first (default {DEFAULT_TARGETS});"
        " chatsvc:MODULE runs another copy of chatsvc, importable as MODULE",
    )
    p.add_argument("--receivers", type=int, default=200)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=2, help="rounds: the floor, then each target")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip() and t.strip() != FLOOR]
    records: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        floor_p99: Optional[float] = None
        for target in [FLOOR, *targets]:
            record = measure(target, args)
            if target == FLOOR and record["status"] == "ok":
                floor_p99 = record["p99_ms"]
            if record["status"] == "ok" and floor_p99:
                record["p99_x_floor"] = round(record["p99_ms"] / floor_p99, 2)
            records.append(record)
            print(json.dumps(record), flush=True)
    print("\n" + summary(records), file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in records) else 0


def measure(target: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run as a record with a ``status``: ok, skipped (with why) or failed (with error)."""
    if target != FLOOR:
        try:
            unavailable = make_target(target.partition(":")[0]).unavailable()
        except ValueError as exc:
            return {"target": target, "status": "failed", "error": str(exc)}
        module = target.partition(":")[2]
        if module and not unavailable:
            unavailable = make_target("chatsvc", module).unavailable()
        if unavailable:
            return {"target": target, "status": "skipped", "why": unavailable}
    try:
        record = run(target, args.receivers, args.rate, args.seconds)
    except Exception as exc:  # one failed run must not stop the others
        return {"target": target, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    record["status"] = "ok" if record["delivered"] == record["expected"] else "incomplete"
    return record


if __name__ == "__main__":
    sys.exit(main())
