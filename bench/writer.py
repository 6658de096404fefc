"""The writer's CPU cost per member of a fan-out, against a tight send loop, same run.

    python -m bench.writer [--members 200] [--rounds 3000] [--repeat 4]

One process, no threads: a hub with ``--members`` logged-in members on
socketpairs, one ``Hub.say`` per round, then one ``OutboundWriter.step`` —
its CPU time (``time.thread_time``) is what is measured.  The floor is the
same number of ``send`` calls of the same line from a plain loop.  Rounds of
the two alternate, so a busy machine slows both alike; the ratio is the
figure to read (bench/README.md).  The peers are drained between rounds,
outside the timed part.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from typing import Optional

from chatsvc import config
from chatsvc.hub import Hub, Member
from chatsvc.outbound import Link, OutboundWriter

_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)
LINE = "hello world, a line of an ordinary length"


def _drain(peers: list[socket.socket]) -> int:
    """Read what waits at the peers; the byte count."""
    got = 0
    for p in peers:
        try:
            while True:
                data = p.recv(65536)
                if not data:
                    break
                got += len(data)
        except BlockingIOError:
            pass
    return got


def measure(members: int, rounds: int) -> tuple[float, float]:
    """(writer ns per member, floor ns per send) over ``rounds`` broadcasts."""
    hub = Hub(config.Config())
    writer = OutboundWriter(hub)
    socks: list[socket.socket] = []
    peers: list[socket.socket] = []
    joined: list[Member] = []
    try:
        for i in range(members):
            a, b = socket.socketpair()
            b.setblocking(False)
            socks.append(a)
            peers.append(b)
            m = Member(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", i, link=Link(a))
            if hub.add(m) is not None or hub.login(m, f"m{i}") is not None:
                raise RuntimeError("could not admit the bench members")
            joined.append(m)
        writer.step(0)
        _drain(peers)
        rendered = f"[lobby] m0: {LINE}\n".encode()
        spent_writer = spent_floor = 0.0
        delivered = 0
        for _ in range(rounds):
            hub.say(joined[0], LINE)
            t0 = time.thread_time()
            writer.step(0)
            spent_writer += time.thread_time() - t0
            delivered += _drain(peers)
            t0 = time.thread_time()
            for s in socks:
                s.send(rendered, _FLAGS)
            spent_floor += time.thread_time() - t0
            _drain(peers)
        n = rounds * members
        if delivered != n * len(rendered):
            raise RuntimeError(f"the writer delivered {delivered} bytes, not {n * len(rendered)}")
        return spent_writer / n * 1e9, spent_floor / n * 1e9
    finally:
        for s in socks + peers:
            s.close()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.writer", description=__doc__)
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=4)
    args = p.parse_args(argv)
    ratios = []
    for i in range(args.repeat):
        writer_ns, floor_ns = measure(args.members, args.rounds)
        ratios.append(writer_ns / floor_ns)
        print(
            f"run {i + 1}: writer {writer_ns:.0f} ns per member, floor {floor_ns:.0f} ns per "
            f"send, ratio {writer_ns / floor_ns:.2f}"
        )
    print(f"median ratio over {args.repeat} runs: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
