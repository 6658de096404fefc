"""Cluster mode against the embedded mode, in one run: ``python -m bench.cluster``.

Starts a real ``redis-server`` (a Unix socket, AOF with ``appendfsync always``
unless told otherwise) and real chatsvc processes, and measures, each against
its baseline in the same run:

* **fanout**: R receivers (half on each of two nodes) and one sender at a
  fixed rate; send-to-arrival latency from kernel timestamps (SO_TIMESTAMPNS),
  p50/p99, against one embedded node with all R receivers;
* **sequencing**: 20 senders spread over both nodes and the four rooms, each
  keeping 64 lines in flight (it waits for its own echoes); lines sequenced
  per second, read from the rooms' sequence counters in Redis;
* **saturate**: S senders, each W in flight, R receivers split over two nodes,
  lines delivered per second against one embedded node.

Loopback only; every phase is bounded by ``--seconds`` plus a drain limit.

``--soak SECONDS`` runs the soak instead (bench/soak.py): every room busy on
2-3 nodes while a nemesis kills, pauses and cuts, then a history check.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("qq")
START_TIMEOUT = 15.0


def started_port(proc: subprocess.Popen[bytes], name: str) -> int:
    """The port of a chatsvc node's ``server_started`` line on its stderr (a pipe);
    then the pipe is kept drained.  SystemExit if it ends or is silent too long."""
    assert proc.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start")
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"{name} exited at start")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "server_started":
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep it drained
            return int(event["port"])


@contextmanager
def redis_server(work: Path, appendfsync: str) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    sock = str(work / "redis.sock")
    argv = [exe, "--port", "0", "--unixsocket", sock, "--dir", str(work), "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", appendfsync]
    argv += ["--maxmemory-policy", "noeviction"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)
        yield sock
    finally:
        proc.kill()
        proc.wait(10)


@contextmanager
def chatsvc_node(work: Path, name: str, redis_sock: Optional[str]) -> Iterator[int]:
    """A chatsvc process (cluster node when ``redis_sock`` is given); yields its port."""
    lines = [
        "[server]",
        "port = 0",
        "max_clients_per_ip = 0",
        "[limits]",
        "flood_rate = 1000000.0",
        "flood_burst = 1000000",
        "send_queue_bytes = 16777216",
        "[logging]",
        'level = "warning"',
        'format = "json"',
        "[admin]",
        f'socket = "{work}/{name}.admin"',
    ]
    if redis_sock:
        lines += ["[cluster]", f'backend = "unix://{redis_sock}"', f'node_id = "{name}"']
    cfg = work / f"{name}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsvc", "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield started_port(proc, name)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def login(port: int, name: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(name.encode() + b"\n")
    buf = b""
    while b"* hello " not in buf:
        data = s.recv(65536)
        if not data:
            raise SystemExit(f"{name}: refused: {buf!r}")
        buf += data
    return s


def fanout(ports: list[int], receivers: int, rate: float, seconds: float) -> dict[str, Any]:
    """p50/p99 send-to-arrival over receivers spread evenly over ``ports``."""
    socks = [login(ports[i % len(ports)], f"r{i}") for i in range(receivers)]
    sender = login(ports[0], "sender")
    time.sleep(0.5)  # let join announcements pass before timing starts
    poller = select.epoll()
    by_fd: dict[int, socket.socket] = {}
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        while True:
            try:
                s.recv(65536)
            except BlockingIOError:
                break
        poller.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    total = int(rate * seconds)
    expected = total * receivers
    latencies: list[int] = []
    partial: dict[int, bytes] = {}
    t0 = time.monotonic()
    k = 0
    deadline = t0 + seconds + 10
    while len(latencies) < expected and time.monotonic() < deadline:
        now = time.monotonic()
        if k < total and now >= t0 + k / rate:
            sender.sendall(f"TS={time.time_ns() // 1000} x\n".encode())
            k += 1
            continue
        wait = (t0 + k / rate - now) if k < total else 0.5
        for fd, _ in poller.poll(max(0.0, min(wait, 0.5))):
            data, anc, _, _ = by_fd[fd].recvmsg(65536, socket.CMSG_SPACE(TIMESPEC.size))
            arrived = time.time_ns() // 1000
            for _, kind, payload in anc:
                if kind == SO_TIMESTAMPNS:
                    sec, nsec = TIMESPEC.unpack(payload[: TIMESPEC.size])
                    arrived = (sec * 1_000_000_000 + nsec) // 1000
            *done, partial[fd] = (partial.get(fd, b"") + data).split(b"\n")
            for line in done:
                at = line.find(b"TS=")
                if at >= 0:
                    latencies.append(arrived - int(line[at + 3 :].split(b" ", 1)[0]))
    for s in [*socks, sender]:
        s.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[int(q * (len(latencies) - 1))] / 1000, 3) if latencies else -1.0

    return {
        "delivered": len(latencies),
        "expected": expected,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


def _windowed_sender(
    port: int, name: str, window: int, stop: threading.Event, room: str = "lobby"
) -> None:
    s = login(port, name)
    if room != "lobby":
        s.sendall(f"/join {room}\n".encode())
        buf = b""
        while b"* you are now in " not in buf:
            buf += s.recv(65536)
    prefix = f"[{room}] {name}: ".encode()
    in_flight = 0
    buf = b""
    n = 0
    s.settimeout(5)
    while not stop.is_set():
        while in_flight < window:
            s.sendall(f"{n} payload of a typical chat line\n".encode())
            n += 1
            in_flight += 1
        try:
            data = s.recv(262144)
        except socket.timeout:
            break
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        in_flight -= sum(1 for x in lines if x.startswith(prefix))
    s.close()


def _counting_reader(s: socket.socket, counts: list[int], i: int, stop: threading.Event) -> None:
    s.settimeout(0.5)
    while not stop.is_set():
        try:
            data = s.recv(262144)
        except socket.timeout:
            continue
        except OSError:
            return
        if not data:
            return
        counts[i] += data.count(b"\n[lobby] ") + (1 if data.startswith(b"[lobby] ") else 0)


def saturate(
    ports: list[int], receivers: int, senders: int, window: int, seconds: float
) -> dict[str, Any]:
    """Lines delivered per second to receivers spread over ``ports``."""
    socks = [login(ports[i % len(ports)], f"sr{i}") for i in range(receivers)]
    counts = [0] * receivers
    stop = threading.Event()
    readers = [
        threading.Thread(target=_counting_reader, args=(s, counts, i, stop), daemon=True)
        for i, s in enumerate(socks)
    ]
    for t in readers:
        t.start()
    time.sleep(0.5)
    base = sum(counts)
    workers = [
        threading.Thread(
            target=_windowed_sender,
            args=(ports[i % len(ports)], f"ss{i}", window, stop),
            daemon=True,
        )
        for i in range(senders)
    ]
    t0 = time.monotonic()
    for t in workers:
        t.start()
    time.sleep(seconds)
    got = sum(counts) - base
    elapsed = time.monotonic() - t0
    stop.set()
    for t in workers + readers:
        t.join(10)
    for s in socks:
        s.close()
    return {"delivered_per_s": round(got / elapsed)}


def sequencing(
    ports: list[int], redis_sock: str, senders: int, window: int, seconds: float
) -> dict[str, Any]:
    import redis

    r = redis.Redis(unix_socket_path=redis_sock, decode_responses=True)
    stop = threading.Event()
    # Senders spread over the four rooms: a line then fans out to a few members,
    # so what is measured is sequencing, not one room's fan-out.
    rooms = ("lobby", "work", "support", "team")
    workers = [
        threading.Thread(
            target=_windowed_sender,
            args=(ports[i % len(ports)], f"q{i}", window, stop, rooms[i % len(rooms)]),
            daemon=True,
        )
        for i in range(senders)
    ]
    for t in workers:
        t.start()
    time.sleep(1.0)

    def sequenced() -> int:
        return sum(int(r.get(f"chatsvc:q:{room}") or 0) for room in rooms)

    before, t0 = sequenced(), time.monotonic()
    time.sleep(seconds)
    after, t1 = sequenced(), time.monotonic()
    stop.set()
    for t in workers:
        t.join(10)
    return {"sequenced_per_s": round((after - before) / (t1 - t0))}


def fanout_rounds(args: argparse.Namespace) -> int:
    """Alternate embedded and cluster fan-out on the same processes; ratios per round."""
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cs-bc-", dir="/tmp") as tmp:
        work = Path(tmp)
        with (
            chatsvc_node(work, "solo", None) as solo,
            redis_server(work, args.appendfsync) as rs,
            chatsvc_node(work, "a", rs) as a,
            chatsvc_node(work, "b", rs) as b,
        ):
            for i in range(args.fanout_repeat):
                single = fanout([solo], args.receivers, args.rate, args.seconds)
                cluster = fanout([a, b], args.receivers, args.rate, args.seconds)
                ratio = (
                    round(cluster["p99_ms"] / single["p99_ms"], 2) if single["p99_ms"] > 0 else -1
                )
                rounds.append({"single": single, "cluster": cluster, "p99_ratio": ratio})
                print(
                    f"round {i + 1}: p99 single {single['p99_ms']} ms,"
                    f" cluster {cluster['p99_ms']} ms, ratio {ratio};"
                    f" p50 {single['p50_ms']} / {cluster['p50_ms']} ms",
                    file=sys.stderr,
                    flush=True,
                )
    ratios = sorted(r["p99_ratio"] for r in rounds)
    print(
        json.dumps(
            {
                "appendfsync": args.appendfsync,
                "rounds": rounds,
                "p99_ratios": ratios,
                "median_p99_ratio": ratios[len(ratios) // 2],
            },
            indent=2,
        )
    )
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--receivers", type=int, default=200)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--senders", type=int, default=5)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--saturate-receivers", type=int, default=50)
    p.add_argument("--appendfsync", default="always", choices=["always", "everysec", "no"])
    soak = p.add_argument_group("soak (bench/soak.py): chat under a nemesis, then a history check")
    soak.add_argument("--soak", type=float, metavar="SECONDS", help="run the soak instead")
    soak.add_argument("--soak-nodes", type=int, default=3, choices=[2, 3])
    soak.add_argument("--soak-rate", type=float, default=4.0, help="lines/s per client")
    soak.add_argument("--soak-gap", type=float, default=3.0, help="quiet seconds between faults")
    p.add_argument(
        "--fanout-repeat",
        type=int,
        metavar="N",
        help="only the fan-out: N rounds alternating embedded and cluster, on the same"
        " processes; each round's p99 ratio and their median",
    )
    args = p.parse_args(argv)
    if args.fanout_repeat is not None:
        if not 1 <= args.fanout_repeat <= 50:
            p.error("--fanout-repeat: between 1 and 50")
        return fanout_rounds(args)
    if args.soak is not None:
        from bench import soak as soak_run

        if not 5 <= args.soak <= 3600:
            p.error("--soak: between 5 and 3600 seconds")
        result = soak_run.soak(
            args.soak, nodes_n=args.soak_nodes, rate=args.soak_rate, gap=args.soak_gap
        )
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    out: dict[str, Any] = {"appendfsync": args.appendfsync}
    with tempfile.TemporaryDirectory(prefix="cs-bc-", dir="/tmp") as tmp:
        work = Path(tmp)
        with chatsvc_node(work, "solo", None) as solo:
            out["single_fanout"] = fanout([solo], args.receivers, args.rate, args.seconds)
            out["single_saturate"] = saturate(
                [solo], args.saturate_receivers, args.senders, args.window, args.seconds
            )
        with (
            redis_server(work, args.appendfsync) as rs,
            chatsvc_node(work, "a", rs) as a,
            chatsvc_node(work, "b", rs) as b,
        ):
            out["cluster_fanout"] = fanout([a, b], args.receivers, args.rate, args.seconds)
            out["cluster_saturate"] = saturate(
                [a, b], args.saturate_receivers, args.senders, args.window, args.seconds
            )
            out["cluster_sequencing"] = sequencing([a, b], rs, 20, 64, args.seconds)
    single, cluster = out["single_fanout"], out["cluster_fanout"]
    if single["p99_ms"] > 0:
        out["fanout_p99_ratio"] = round(cluster["p99_ms"] / single["p99_ms"], 2)
    s1 = out["single_saturate"]["delivered_per_s"]
    if s1:
        out["saturate_ratio"] = round(out["cluster_saturate"]["delivered_per_s"] / s1, 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
