"""Parent side of the load generator: worker processes and their commands.

Each worker is a separate process (``multiprocessing`` spawn) running
``bench.loadgen.worker_main``; the parent sends every worker the same command
and waits for all replies with a deadline, ticking its samplers meanwhile.
Workers die with the parent (``PR_SET_PDEATHSIG``) and are killed on stop.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Optional, Union

from bench.loadgen import ROLE_ACK, ROLE_SEND, ClientSpec, WorkerPlan, worker_main

Reply = dict[str, Any]


class FleetError(RuntimeError):
    """A worker failed, died or missed a deadline."""


class Fleet:
    def __init__(self, plans: Sequence[WorkerPlan], tick: Callable[[], None]) -> None:
        self.plans = list(plans)
        self.tick = tick
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for plan in self.plans:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child_end, plan, os.getpid()),
                name=f"bench-worker-{plan.index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.conns.append(parent_end)

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs if proc.pid is not None]

    def call(
        self, name: str, args: Union[dict[str, Any], Sequence[dict[str, Any]]], timeout: float
    ) -> list[Reply]:
        """Send ``name`` to every worker; all replies, in worker order."""
        per_worker = [args] * len(self.conns) if isinstance(args, dict) else list(args)
        for conn, worker_args in zip(self.conns, per_worker):
            conn.send((name, worker_args))
        replies: list[Optional[Reply]] = [None] * len(self.conns)
        deadline = time.monotonic() + timeout
        while any(reply is None for reply in replies):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FleetError(f"workers did not finish {name!r} within {timeout:.0f} s")
            waiting: list[Any] = [c for c, r in zip(self.conns, replies) if r is None]
            waiting += [p.sentinel for p, r in zip(self.procs, replies) if r is None]
            ready = wait(waiting, timeout=min(0.1, remaining))
            self.tick()
            for index, conn in enumerate(self.conns):
                if replies[index] is None and conn in ready:
                    try:
                        reply = conn.recv()
                    except (EOFError, OSError) as exc:
                        raise FleetError(f"worker {index} went away during {name!r}") from exc
                    if "error" in reply:
                        raise FleetError(f"worker {index} failed {name!r}: {reply['error']}")
                    replies[index] = reply
            for index, proc in enumerate(self.procs):
                if (
                    replies[index] is None
                    and proc.sentinel in ready
                    and not self.conns[index].poll()
                ):
                    raise FleetError(f"worker {index} died during {name!r} ({proc.exitcode})")
        return [reply for reply in replies if reply is not None]

    def sleep(self, seconds: float) -> None:
        """Wait while ticking the samplers."""
        end = time.monotonic() + seconds
        while True:
            self.tick()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.05, remaining))

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", {}))
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)
        for conn in self.conns:
            conn.close()
        self.procs.clear()
        self.conns.clear()


def distribute(
    clients: Sequence[ClientSpec],
    workers: int,
    host: str,
    port: int,
    dialect: str,
    ack_room: Optional[str] = None,
    pad_bytes: int = 40,
    tls: bool = False,
    tls_resume: bool = False,
) -> list[WorkerPlan]:
    """Deal clients round-robin per role, so every worker gets a similar mix.

    With ``ack_room`` (IRC closed loops), every worker holding a sender also
    gets one acknowledging receiver in that room.
    """
    count = max(1, min(workers, len(clients)) if clients else workers)
    buckets: list[list[ClientSpec]] = [[] for _ in range(count)]
    by_role: dict[str, list[ClientSpec]] = {}
    for spec in clients:
        by_role.setdefault(spec.role, []).append(spec)
    turn = 0
    for specs in by_role.values():
        for spec in specs:
            buckets[turn % count].append(spec)
            turn += 1
    if ack_room is not None:
        for index, bucket in enumerate(buckets):
            if any(spec.role == ROLE_SEND for spec in bucket):
                bucket.append(ClientSpec(ROLE_ACK, f"ack{index}", ack_room))
    return [
        WorkerPlan(index, host, port, dialect, tuple(bucket), pad_bytes, tls, tls_resume)
        for index, bucket in enumerate(buckets)
    ]
