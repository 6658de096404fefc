"""Fan-out latency measured at the kernel, against the floor: ``python -m bench.probe``.

The main ``fanout`` scenario times a line when the load generator's event loop
gets to it, so on a 2-core machine its figures include the generator's own
queueing (both chatsvc and ngIRCd show p99 near 5 ms there).  This probe asks
the kernel for the arrival time of every segment (``SO_TIMESTAMPNS``), so what
it reports is send-to-arrival time: the server plus loopback TCP, not the
reader.  One sender process sends at a fixed rate; one process with epoll
reads all receivers.  Over TLS (``--targets chatsvc-tls``) the receivers keep
their record layer in memory over the plain socket, and a line counts as
arrived with the segment that completed its record.

The floor: the same sender process also holds the other ends of R more
connections to the reading process (no server in between), and every other
message (``--turn``) goes to them instead of to the server: the sender itself
sends the line to all R, one ``send`` per receiver in a tight loop.  That is
what one process needs just to get a line into R loopback sockets on this
machine at this moment.  Floor and server take turns at the same rate, 5 ms
apart, so both meet the same load from whatever else the machine runs (a
floor measured in a separate run did not: on a shared 2-core machine its p99
moved between 1.8 and 25 ms from one minute to the next).  Each target's p99
is also given as a multiple of the floor's p99 from the same run
(``p99_x_floor``), the figure to compare across runs and machines.
``cpu_pressure_pct`` is the share of the run during which some task on the
machine waited for a CPU (/proc/pressure/cpu); high values mean a noisy run.

The ratio of two p99s still moves with the load (noise shared by both pulls
it toward 1).  Another figure pairs messages: for each server message, the
time until its last receiver had it, minus the same for the floor message
sent 5 ms away (``last_excess_p50_ms`` and p90, p99): what the server adds to
the fan-out, with the load common to both taken out.

Bounded: per run, at most 10 s to connect and log in, ``--seconds`` of traffic
(half of it the floor's) and a 10 s drain.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import select
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

from bench.targets import HOST, make_target

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; not exported by 3.9
TIMESPEC = struct.Struct("qq")
DEFAULT_TARGETS = "chatsvc,ngircd,seed"
LOGIN_SECONDS = 10.0
DRAIN_SECONDS = 10.0


# A TLS receiver: its own record layer in memory over the plain socket, so the
# socket still gives the kernel's arrival time of every segment.
TlsReceiver = tuple[ssl.SSLObject, ssl.MemoryBIO]


def client_tls() -> ssl.SSLContext:
    """The probe's TLS: the target's certificate is a throw-away one, not checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_login(port: int, name: str) -> tuple[socket.socket, TlsReceiver]:
    """Log in over TLS (chatsvc-tls), the handshake done in memory."""
    s = socket.create_connection((HOST, port), timeout=LOGIN_SECONDS)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_tls().wrap_bio(incoming, outgoing)
    deadline = time.monotonic() + LOGIN_SECONDS
    buf = b""
    sent = False
    while True:
        try:
            if not sent:
                obj.do_handshake()
                obj.write(name.encode() + b"\n")
                sent = True
            while True:
                chunk = obj.read(65536)
                if not chunk:
                    raise ConnectionError(f"{name}: closed during login")
                buf += chunk
        except ssl.SSLWantReadError:
            pass
        out = outgoing.read()
        if out:
            s.sendall(out)
        if b"* hello " in buf:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} could not log in")
        data = s.recv(65536)
        if not data:
            raise ConnectionError(f"{name}: closed during login")
        incoming.write(data)
    s.settimeout(None)
    return s, (obj, incoming)


def login(port: int, name: str, irc: bool, tls: bool = False) -> socket.socket:
    s: socket.socket = socket.create_connection((HOST, port), timeout=LOGIN_SECONDS)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:  # the sender: an ordinary TLS socket
        s = client_tls().wrap_socket(s)
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


def is_floor(k: int, turn: int) -> bool:
    """Message k goes to the floor's receivers (odd turns) or to the server."""
    return (k // turn) % 2 == 1


def drain_echo(s: socket.socket) -> None:
    """Read our own echo (chatsvc) without waiting, so it does not pile up."""
    if isinstance(s, ssl.SSLSocket):
        while s.pending() or select.select([s], [], [], 0)[0]:
            if not s.recv(65536):
                return
        return
    try:
        while s.recv(65536, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        pass


def sender(
    port: int,
    floor_port: int,
    irc: bool,
    receivers: int,
    plan: tuple[float, float, int],
    go: Any,
    tls: bool = False,
) -> None:
    rate, seconds, turn = plan
    s = login(port, "probe_sender", irc, tls)
    floor = []
    for _ in range(receivers):
        f = socket.create_connection((HOST, floor_port), timeout=LOGIN_SECONDS)
        f.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        floor.append(f)
    floor_sends = [f.send for f in floor]
    go.wait(30)
    t0 = time.monotonic()
    for k in range(int(rate * seconds)):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if is_floor(k, turn):
            # the line chatsvc's receivers get, stamped just before the first send
            line = f"[lobby] probe_sender: TS={time.time_ns() // 1000} probe\n".encode()
            for send in floor_sends:
                send(line)
            continue
        text = f"TS={time.time_ns() // 1000} probe"
        s.sendall((f"PRIVMSG #lobby :{text}\r\n" if irc else text + "\n").encode())
        drain_echo(s)
    s.close()
    for f in floor:
        f.close()


def run(target: str, receivers: int, rate: float, seconds: float, turn: int) -> dict[str, Any]:
    name, _, module = target.partition(":")
    irc = name == "ngircd"
    total = int(rate * seconds)
    to_floor = sum(is_floor(k, turn) for k in range(total))
    go = multiprocessing.Event()
    plan = (rate, seconds, turn)
    server = make_target(name, module or "chatsvc")
    with tempfile.TemporaryDirectory() as work, server.running(Path(work)) as ep:
        tls: dict[int, TlsReceiver] = {}
        socks: list[socket.socket] = []
        for i in range(receivers):
            if ep.tls:
                sock, receiver = tls_login(ep.port, f"probe{i}")
                tls[sock.fileno()] = receiver
            else:
                sock = login(ep.port, f"probe{i}", irc)
            socks.append(sock)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((HOST, 0))
            listener.listen(receivers)
            listener.settimeout(LOGIN_SECONDS)
            proc = multiprocessing.Process(
                target=sender,
                args=(ep.port, listener.getsockname()[1], irc, receivers, plan, go, ep.tls),
                daemon=True,
            )
            proc.start()
            try:
                floor = [listener.accept()[0] for _ in range(receivers)]
                socks += floor
                expected = (total - to_floor) * receivers, to_floor * receivers
                pressure = cpu_pressure_us(), time.monotonic()
                got, last = collect(socks, floor, go, expected, seconds + DRAIN_SECONDS, tls)
                waited = cpu_pressure_us() - pressure[0] if pressure[0] >= 0 else -1
                elapsed = time.monotonic() - pressure[1]
            finally:
                for s in socks:
                    s.close()
                proc.join(DRAIN_SECONDS)
                if proc.is_alive():
                    proc.kill()
                    proc.join(1)
    record: dict[str, Any] = {
        "probe": "fanout",
        "target": target,
        "receivers": receivers,
        "rate": rate,
        "seconds": seconds,
        "turn": turn,
    }
    for prefix, latencies, want in (("", got[0], expected[0]), ("floor_", got[1], expected[1])):
        latencies.sort()
        record.update(
            {
                f"{prefix}delivered": len(latencies),
                f"{prefix}expected": want,
                f"{prefix}p50_ms": percentile(latencies, 0.5),
                f"{prefix}p99_ms": percentile(latencies, 0.99),
                f"{prefix}max_ms": percentile(latencies, 1.0),
            }
        )
    excess = sorted(excess_over_floor(*last))
    for q in (0.5, 0.9, 0.99):
        record[f"last_excess_p{round(q * 100)}_ms"] = percentile(excess, q)
    if waited >= 0:
        record["cpu_pressure_pct"] = round(100 * waited / 1e6 / elapsed, 1)
    if record["floor_p99_ms"] > 0 and record["p99_ms"] > 0:
        record["p99_x_floor"] = round(record["p99_ms"] / record["floor_p99_ms"], 2)
    return record


def excess_over_floor(server: dict[int, int], floor: dict[int, int]) -> list[int]:
    """For each server message: when its last receiver got it, minus the same for
    the floor message sent nearest in time (5 ms away), in µs.  Load that lasts
    longer than that delays both alike and cancels out."""
    times = sorted(floor)
    excess = []
    for sent, arrived in server.items():
        i = bisect.bisect_left(times, sent)
        near = min(times[max(0, i - 1) : i + 1], key=lambda t: abs(t - sent), default=None)
        if near is not None:
            excess.append((arrived - sent) - (floor[near] - near))
    return excess


def cpu_pressure_us() -> int:
    """Microseconds for which some task waited for a CPU since boot; -1 if unknown."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            some = f.readline().split()
    except OSError:
        return -1
    return int(some[-1].partition("=")[2]) if some and some[0] == "some" else -1


def percentile(sorted_us: list[int], q: float) -> float:
    """In ms; -1 when there is nothing to measure."""
    return round(sorted_us[int(q * (len(sorted_us) - 1))] / 1000, 3) if sorted_us else -1.0


def collect(
    socks: list[socket.socket],
    floor: list[socket.socket],
    go: Any,
    expected: tuple[int, int],
    seconds: float,
    tls: Optional[dict[int, TlsReceiver]] = None,
) -> tuple[tuple[list[int], list[int]], tuple[dict[int, int], dict[int, int]]]:
    """Latencies in µs (kernel arrival minus send time in the line), server's and
    floor's; and for each message sent (by its send time) the latest arrival.

    A TLS receiver's line counts as arrived with the segment that completed its
    record: decrypting it here is the reader's time, which is left out."""
    tls = tls or {}
    poller = select.epoll()
    by_fd: dict[int, socket.socket] = {}
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        poller.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    floor_fds = {s.fileno() for s in floor}
    latencies: tuple[list[int], list[int]] = ([], [])
    last: tuple[dict[int, int], dict[int, int]] = ({}, {})  # send time -> latest arrival
    partial: dict[int, bytes] = {}
    ancillary = socket.CMSG_SPACE(TIMESPEC.size)
    want = sum(expected)
    go.set()
    deadline = time.monotonic() + seconds
    try:
        while len(latencies[0]) + len(latencies[1]) < want and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                data, anc, _, _ = by_fd[fd].recvmsg(65536, ancillary)
                arrived = time.time_ns() // 1000
                for _, kind, payload in anc:
                    if kind == SO_TIMESTAMPNS:
                        sec, nsec = TIMESPEC.unpack(payload[: TIMESPEC.size])
                        arrived = (sec * 1_000_000_000 + nsec) // 1000
                if fd in tls:
                    data = decrypt(tls[fd], data)
                *lines, partial[fd] = (partial.get(fd, b"") + data).split(b"\n")
                into, latest = latencies[fd in floor_fds], last[fd in floor_fds]
                for line in lines:
                    at = line.find(b"TS=")
                    if at >= 0:
                        sent = int(line[at + 3 :].split(b" ", 1)[0])
                        into.append(arrived - sent)
                        if arrived > latest.get(sent, 0):
                            latest[sent] = arrived
    finally:
        poller.close()
    return latencies, last


def decrypt(receiver: TlsReceiver, data: bytes) -> bytes:
    """The plaintext of every record that ``data`` completes."""
    obj, incoming = receiver
    incoming.write(data)
    out: list[Union[bytes, bytearray]] = []
    while True:
        try:
            chunk = obj.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            break
        if not chunk:
            break
        out.append(chunk)
    return b"".join(out)


def summary(records: list[dict[str, Any]]) -> str:
    """Medians over the rounds, as a Markdown table."""
    rows = [
        "| target | runs | delivered | p50 ms | p99 ms | floor p50 ms | floor p99 ms"
        " | p99 / floor p99 | last-arrival excess p50 / p90 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in dict.fromkeys(r["target"] for r in records):
        mine = [r for r in records if r["target"] == target and r["status"] == "ok"]
        if not mine:
            rows.append(f"| {target} | 0 | skipped or failed | | | | | | |")
            continue
        delivered = sum(r["delivered"] for r in mine)
        expected = sum(r["expected"] for r in mine)
        figures = [
            _median(r[key] for r in mine)
            for key in (
                "p50_ms",
                "p99_ms",
                "floor_p50_ms",
                "floor_p99_ms",
                "p99_x_floor",
                "last_excess_p50_ms",
                "last_excess_p90_ms",
            )
        ]
        rows.append(
            f"| {target} | {len(mine)} | {delivered:,}/{expected:,} | "
            + " | ".join(map(str, figures[:4]))
            + f" | {figures[4]}x | {figures[5]} / {figures[6]} |"
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
        help=f"default {DEFAULT_TARGETS}; chatsvc:MODULE runs another copy of chatsvc,"
        " importable as MODULE",
    )
    p.add_argument("--receivers", type=int, default=200)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=6.0, help="traffic per run, floor included")
    p.add_argument("--turn", type=int, default=1, help="messages before floor and server swap")
    p.add_argument("--repeat", type=int, default=2, help="rounds over the targets")
    args = p.parse_args(argv)
    records: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for target in (t.strip() for t in args.targets.split(",")):
            if target:
                record = measure(target, args)
                records.append(record)
                print(json.dumps(record), flush=True)
    print("\n" + summary(records), file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in records) else 0


def measure(target: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run as a record with a ``status``: ok, incomplete, skipped (why) or failed (error)."""
    name, _, module = target.partition(":")
    try:
        unavailable = make_target(name, module or "chatsvc").unavailable()
    except ValueError as exc:
        return {"target": target, "status": "failed", "error": str(exc)}
    if unavailable:
        return {"target": target, "status": "skipped", "why": unavailable}
    try:
        record = run(target, args.receivers, args.rate, args.seconds, max(1, args.turn))
    except Exception as exc:  # one failed run must not stop the others
        return {"target": target, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    complete = (record["delivered"], record["floor_delivered"]) == (
        record["expected"],
        record["floor_expected"],
    )
    record["status"] = "ok" if complete and "p99_x_floor" in record else "incomplete"
    return record


if __name__ == "__main__":
    sys.exit(main())
