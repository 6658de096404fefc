"""The cluster soak: chat in every room while a nemesis breaks things, then check.

``python -m bench.cluster --soak SECONDS`` runs N chatsvc nodes (default 3)
on one real ``redis-server`` (AOF, ``appendfsync always``), each node talking
to Redis through its own ``FaultProxy``.  Clients on every node in every room
send at a bounded rate (lines ``SEAT:SESSION:K``, unique) and log everything
they receive.  Meanwhile a bounded nemesis schedule runs, one fault at a
time with a quiet gap between:

* a node paused (SIGSTOP) shorter than its lease, then SIGCONT;
* a node killed (SIGKILL) and started again;
* Redis paused (SIGSTOP / SIGCONT);
* every connection of one node to Redis cut (the proxy);
* Redis killed and started again from its AOF;
* a node paused longer than its lease: it is reaped, and fences itself when
  it resumes (its members are told and disconnected).

A client whose connection ends (its node killed or fenced) reconnects as a new
session under a new name.  At the end the faults are undone, the lines drain
(bounded), and ``bench.nemesis.check`` counts lost, duplicated and reordered
lines over every session; lines the docs allow to be missing with an explicit
notice are counted apart (``excused``).  Loopback only, everything bounded.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from bench.cluster import started_port
from bench.nemesis import FaultProxy, LoggingClient, Session, check, session_of

ROOMS = ("lobby", "work", "support", "team")
START_TIMEOUT = 15.0
LEASE, HEARTBEAT = 2.0, 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A real redis-server on loopback TCP with AOF ``always``; killed, paused, restarted."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.dir = work
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        argv = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


class Node:
    """A chatsvc cluster node (a subprocess) that can be killed, paused and restarted."""

    def __init__(self, work: Path, name: str, backend: str, unavailable_after: float) -> None:
        self.name = name
        self.cfg = work / f"{name}.toml"
        self.cfg.write_text(
            "\n".join(
                [
                    "[server]",
                    "port = 0",
                    "max_clients_per_ip = 0",
                    "[limits]",
                    "flood_rate = 1000000.0",
                    "flood_burst = 1000000",
                    "[logging]",
                    'level = "warning"',
                    'format = "json"',
                    "[admin]",
                    f'socket = "{work}/{name}.admin"',
                    "[cluster]",
                    f'backend = "{backend}"',
                    f'node_id = "{name}"',
                    f"lease = {LEASE}",
                    f"heartbeat = {HEARTBEAT}",
                    f"unavailable_after = {unavailable_after}",
                ]
            )
            + "\n"
        )
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        self.starts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatsvc", "--config", str(self.cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.port = started_port(self.proc, f"node {self.name}")
        self.starts += 1

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.port > 0

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.port = 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Seat:
    """One chatting client of a node in a room; a new session after each disconnect."""

    def __init__(self, node: Node, room: str, index: int) -> None:
        self.node = node
        self.room = room
        self.tag = f"{node.name}{room[:2]}{index}"
        self.client: Optional[LoggingClient] = None
        self.sessions: list[LoggingClient] = []
        self.k = 0
        self.next_try = 0.0

    def connect(self) -> bool:
        now = time.monotonic()
        if now < self.next_try or not self.node.up:
            return False
        self.next_try = now + 0.5
        name = f"{self.tag}s{len(self.sessions)}"
        try:
            c = LoggingClient("127.0.0.1", self.node.port, name, timeout=3.0)
        except (OSError, ConnectionError):
            return False
        self.sessions.append(c)  # even if the join fails: it is a session
        if self.room != "lobby":
            c.send(f"/join {self.room}", record=False)
            if not c.wait_for(f"* you are now in {self.room}", timeout=3.0):
                c.close()
                return False
        self.client = c
        return True

    def tick(self) -> None:
        c = self.client
        if c is None or c.ended.is_set():
            self.client = None
            if not self.connect():
                return
            c = self.client
            assert c is not None
        text = f"{c.name}:{self.k}"
        if c.send(text):
            self.k += 1


def _faults(
    nodes: list[Node], redis: Redis, proxies: list[FaultProxy]
) -> list[tuple[str, Callable[[], None], float, Callable[[], None]]]:
    """(name, do, hold seconds, undo): one round of the nemesis."""
    n = len(nodes)
    b, c = nodes[1 % n], nodes[2 % n]

    def restart_node() -> None:
        c.start()

    def restart_redis() -> None:
        redis.start()

    return [
        (
            "node_pause_short",
            lambda: b.signal(signal.SIGSTOP),
            LEASE / 2,
            lambda: b.signal(signal.SIGCONT),
        ),
        ("node_kill_restart", c.kill, 1.0, restart_node),
        (
            "redis_pause",
            lambda: redis.signal(signal.SIGSTOP),
            1.5,
            lambda: redis.signal(signal.SIGCONT),
        ),
        ("proxy_cut", proxies[0].cut, 0.0, lambda: None),
        ("redis_kill_restart", redis.kill, 0.5, restart_redis),
        (
            "node_pause_past_lease",
            lambda: b.signal(signal.SIGSTOP),
            LEASE + 1.5,
            lambda: b.signal(signal.SIGCONT),
        ),
    ]


def soak(
    seconds: float,
    nodes_n: int = 3,
    per_room: int = 1,
    rate: float = 4.0,
    gap: float = 3.0,
    unavailable_after: float = 8.0,
    work: Optional[Path] = None,
) -> dict[str, Any]:
    """Run the soak; returns the figures (``ok`` says whether the history checked)."""
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="cs-soak-", dir="/tmp") if work is None else None
    base = Path(tmp.name) if tmp is not None else Path(work or ".")
    redis = Redis(base)
    proxies: list[FaultProxy] = []
    nodes: list[Node] = []
    seats: list[Seat] = []
    done: Counter[str] = Counter()
    try:
        redis.start()
        for i in range(nodes_n):
            proxies.append(FaultProxy(("127.0.0.1", redis.port)))
            name = "abcdefgh"[i]
            nodes.append(
                Node(base, name, f"redis://127.0.0.1:{proxies[-1].port}/0", unavailable_after)
            )
            nodes[-1].start()
        seats = [Seat(n, room, i) for n in nodes for room in ROOMS for i in range(per_room)]
        for s in seats:
            s.connect()
        faults = _faults(nodes, redis, proxies)
        t0 = time.monotonic()
        end = t0 + seconds
        period = 1.0 / rate
        next_send = t0
        next_fault = t0 + gap
        fault_i = 0
        undo: Optional[tuple[float, Callable[[], None]]] = None
        while time.monotonic() < end:
            now = time.monotonic()
            if undo is not None and now >= undo[0]:
                undo[1]()
                undo = None
                next_fault = time.monotonic() + gap
            elif undo is None and now >= next_fault and now + 2 * gap < end:
                name, do, hold, then = faults[fault_i % len(faults)]
                fault_i += 1
                do()
                done[name] += 1
                undo = (time.monotonic() + hold, then)
            if now >= next_send:
                for s in seats:
                    s.tick()
                next_send += period
            time.sleep(min(0.02, max(0.0, next_send - time.monotonic())))
        if undo is not None:
            undo[1]()
        elapsed = time.monotonic() - t0
        # Drain: every open session sees its own lines back or was refused (bounded).
        deadline = time.monotonic() + max(20.0, unavailable_after + 10)

        def settled() -> bool:
            for s in seats:
                c = s.client
                if c is None or c.ended.is_set():
                    continue
                echoed = set(c.chat(s.room))
                missing = sum(1 for t in c.sent if t not in echoed)
                if missing > c.refusals():
                    return False
            return True

        while not settled() and time.monotonic() < deadline:
            time.sleep(0.05)
        stable_since, last = time.monotonic(), -1
        while time.monotonic() - stable_since < 1.0 and time.monotonic() < deadline + 5:
            total = sum(len(c.lines) for s in seats for c in s.sessions)
            if total != last:
                last, stable_since = total, time.monotonic()
            time.sleep(0.1)
        sessions: list[Session] = []
        for s in seats:
            for c in s.sessions:
                sessions.append(session_of(c, ended=c is not s.client))
        verdict = check(sessions)
        return {
            "scenario": "soak",
            "seconds": round(elapsed, 1),
            "nodes": nodes_n,
            "clients": len(seats),
            "rate_per_client": rate,
            "sessions": len(sessions),
            "faults": dict(done),
            "node_starts": {n.name: n.starts for n in nodes},
            **verdict.summary(),
            "ok": verdict.ok,
            "details": verdict.details[:20],
        }
    finally:
        for s in seats:
            for c in s.sessions:
                c.close()
        for n in nodes:
            n.stop()
        redis.kill()
        for p in proxies:
            p.close()
        if tmp is not None:
            tmp.cleanup()
