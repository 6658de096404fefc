"""Fan-out latency measured at the kernel: ``python -m bench.probe``.

The main ``fanout`` scenario times a line when the load generator's event loop
gets to it, so on a 2-core machine its figures include the generator's own
queueing (both chatsvc and ngIRCd show p99 near 5 ms there).  This probe asks
the kernel for the arrival time of every segment (``SO_TIMESTAMPNS``), so what
it reports is send-to-arrival time: the server plus loopback TCP, not the
reader.  One sender process sends at a fixed rate; one process with epoll
reads all receivers.  Bounded: ``--seconds`` of traffic plus a 10 s drain.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import select
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.targets import make_target

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; not exported by 3.9
TIMESPEC = struct.Struct("qq")


def login(port: int, name: str, irc: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if irc:
        s.sendall(f"NICK {name}\r\nUSER {name} 0 * :{name}\r\nJOIN #lobby\r\n".encode())
        done = b" 366 "  # end of NAMES: joined
    else:
        s.sendall(name.encode() + b"\n")
        done = b"* hello "
    buf = b""
    deadline = time.monotonic() + 10
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


def run(target: str, receivers: int, rate: float, seconds: float) -> dict[str, Any]:
    irc = target == "ngircd"
    with tempfile.TemporaryDirectory() as work, make_target(target).running(Path(work)) as ep:
        socks = [login(ep.port, f"probe{i}", irc) for i in range(receivers)]
        poller = select.epoll()
        by_fd: dict[int, socket.socket] = {}
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setblocking(False)
            poller.register(s.fileno(), select.EPOLLIN)
            by_fd[s.fileno()] = s
        go = multiprocessing.Event()
        proc = multiprocessing.Process(target=sender, args=(ep.port, irc, rate, seconds, go))
        proc.start()
        expected = int(rate * seconds) * receivers
        latencies: list[int] = []
        partial: dict[int, bytes] = {}
        go.set()
        deadline = time.monotonic() + seconds + 10
        while len(latencies) < expected and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                data, anc, _, _ = by_fd[fd].recvmsg(65536, socket.CMSG_SPACE(TIMESPEC.size))
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
        proc.join(10)
        for s in socks:
            s.close()
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    p.add_argument("--targets", default="chatsvc,ngircd")
    p.add_argument("--receivers", type=int, default=200)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=2, help="alternate the targets this often")
    args = p.parse_args(argv)
    for _ in range(args.repeat):
        for target in args.targets.split(","):
            unavailable = make_target(target).unavailable()
            if unavailable:
                print(json.dumps({"target": target, "status": "skipped", "why": unavailable}))
                continue
            print(json.dumps(run(target, args.receivers, args.rate, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
