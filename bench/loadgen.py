"""Worker side of the load generator: one asyncio loop driving many clients.

A worker process owns the clients of its ``WorkerPlan`` and runs the commands
the parent (``bench.fleet``) sends over a pipe, one at a time, each bounded by
a deadline given in the command:

- ``login``: connect and log in every client, a limited number in flight;
- ``traffic``: senders send at a fixed rate or keep a window of unacknowledged
  messages, receivers count and time what arrives (optionally with churning
  clients alongside);
- ``drain``: wait until receivers have what was sent, then report counts,
  losses and a latency histogram;
- ``churn``: connect, log in, chat, disconnect, over and over;
- ``close``: drop every connection and exit.

Roles: ``idle`` (logs in, reads), ``recv`` (counted receiver), ``send``,
``ack`` (IRC only: a receiver that acknowledges the local senders' messages,
since IRC does not echo a message to its sender) and ``slow`` (never reads
after login; tiny receive buffer so the server feels it at once).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import socket
import ssl
import struct
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional, Union

from bench import dialects
from bench.stats import Histogram

ROLE_IDLE = "idle"
ROLE_RECV = "recv"
ROLE_SEND = "send"
ROLE_ACK = "ack"
ROLE_SLOW = "slow"
ROLE_CHURN = "churn"

#: Sender ids from here on belong to short-lived churn clients; receivers do
#: not account for them.
CHURN_GID_BASE = 1_000_000
#: A rate sender skips sends while this much is queued in its own transport.
WRITE_QUEUE_LIMIT = 256 * 1024
#: Receive buffer of the slow member; the kernel doubles it.
SLOW_RCVBUF = 4096
SLOW_MAXSEG = 1448
#: A line longer than this from the server means something is badly wrong.
MAX_LINE = 64 * 1024

Reply = dict[str, Any]
Args = dict[str, Any]


@dataclass(frozen=True)
class ClientSpec:
    role: str
    name: str
    room: str = ""  # "" = wherever the server puts a new client (IRC: no channel)
    gid: int = -1  # sender id, for senders


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    host: str
    port: int
    dialect: str
    clients: tuple[ClientSpec, ...]
    pad_bytes: int = 40
    tls: bool = False  # connect with TLS (the chatsvc-tls target; the certificate is not checked)
    tls_resume: bool = False  # offer the session of an earlier connection (TLS resumption)


class Client(asyncio.Protocol):
    """One connection. Reads are always drained (except for the slow role)."""

    def __init__(self, worker: Worker, spec: ClientSpec) -> None:
        self.worker = worker
        self.spec = spec
        self.room = spec.room or dialects.DEFAULT_ROOM
        self.dialect = worker.dialect
        self.transport: Optional[asyncio.Transport] = None
        self.buf = b""
        self.local_port = 0
        loop = asyncio.get_running_loop()
        self.login_waiter: asyncio.Future[None] = loop.create_future()
        self.closed_waiter: asyncio.Future[None] = loop.create_future()
        self.login_error = ""
        self.logged_in = False
        self.closed_at = 0.0
        self.on_line: Callable[[bytes, int], None] = self._line_login
        # receiver accounting (static senders only)
        self.next_seq: dict[int, int] = {}
        self.rx_total = 0
        self.gaps = 0
        self.dups = 0
        # sender state
        self.seq = 0
        self.inflight = 0
        self.phase_sent = 0
        self.blocked = 0
        self.lag_max = 0.0
        self.window = 0
        self.quota: Optional[int] = None
        self.t_end = 0.0
        self.closed_loop = False
        self.done: Optional[asyncio.Future[None]] = None
        self.echo_prefix = self.dialect.echo_prefix(spec.name, self.room)
        self.pending_acks = 0

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_LINE:
            self.fail("line too long from server")
            return
        now = dialects.now_us()
        handler = self.on_line
        for line in lines:
            handler(line, now)
            if handler is not self.on_line:
                handler = self.on_line
        if self.pending_acks:
            acks, self.pending_acks = self.pending_acks, 0
            self.acked(acks)
        if self.spec.role == ROLE_ACK:
            self.worker.flush_acks()

    def eof_received(self) -> Optional[bool]:
        return None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed_at = time.monotonic()
        if not self.login_waiter.done():
            self.login_error = "closed before login" if exc is None else _classify(exc)
            self.login_waiter.set_result(None)
        if not self.closed_waiter.done():
            self.closed_waiter.set_result(None)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- connecting -------------------------------------------------------

    async def connect(self, timeout: float) -> str:
        """Connect and log in; "" on success, else a short reason."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if self.spec.role == ROLE_SLOW:
                # Before connect, so the window and MSS are small from the
                # handshake on; loopback's 64 KiB MSS would hide the problem.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MAXSEG)
            address = (self.worker.plan.host, self.worker.plan.port)
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            self.local_port = sock.getsockname()[1]
            tls = self.worker.tls
            await loop.create_connection(
                lambda: self, sock=sock, ssl=tls, server_hostname="" if tls else None
            )
        except asyncio.TimeoutError:
            sock.close()
            return "connect timeout"
        except OSError as exc:
            sock.close()
            return _classify(exc)
        assert self.transport is not None
        sends = self.spec.role == ROLE_SEND
        self.transport.write(self.dialect.login(self.spec.name, self.spec.room, sends))
        try:
            remaining = max(0.01, deadline - time.monotonic())
            await asyncio.wait_for(asyncio.shield(self.login_waiter), remaining)
        except asyncio.TimeoutError:
            self.abort()
            return "login timeout"
        if self.login_error:
            self.abort()
            return self.login_error
        return ""

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.transport.abort()

    def fail(self, reason: str) -> None:
        if not self.login_waiter.done():
            self.login_error = reason
            self.login_waiter.set_result(None)
        self.abort()

    @property
    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # -- line handlers ----------------------------------------------------

    def _line_login(self, line: bytes, now: int) -> None:
        pong = self.dialect.pong(line)
        if pong is not None:
            self.write(pong)
            return
        more = self.dialect.login_next(line, self.spec.room, self.spec.role == ROLE_SEND)
        if more is not None:
            self.write(more)
        if self.dialect.login_error(line):
            self.login_error = "rejected: " + line[:60].decode("utf-8", "replace").strip()
            if not self.login_waiter.done():
                self.login_waiter.set_result(None)
            return
        if self.dialect.login_done(line, self.spec.room):
            self.logged_in = True
            self.worker.note_tls_session(self.transport)
            role = self.spec.role
            if role == ROLE_RECV:
                self.on_line = self._line_recv
            elif role == ROLE_ACK:
                self.on_line = self._line_ack
            elif role in (ROLE_SEND, ROLE_CHURN):
                self.on_line = self._line_send
            else:
                self.on_line = self._line_idle
            if role == ROLE_SLOW and self.transport is not None:
                self.transport.pause_reading()
            if not self.login_waiter.done():
                self.login_waiter.set_result(None)

    def _line_idle(self, line: bytes, now: int) -> None:
        pong = self.dialect.pong(line)
        if pong is not None:
            self.write(pong)

    def _line_send(self, line: bytes, now: int) -> None:
        if line.startswith(self.echo_prefix):
            self.pending_acks += 1
        elif line[:1] == b"P":
            self._line_idle(line, now)

    def _line_recv(self, line: bytes, now: int) -> None:
        text = self.dialect.chat_text(line)
        if text is None:
            self._line_idle(line, now)
            return
        payload = dialects.parse_text(text)
        if payload is None:
            return
        gid, seq, sent_us = payload
        if gid >= CHURN_GID_BASE:
            return
        expected = self.next_seq.get(gid, 0)
        if seq != expected:
            if seq < expected:
                self.dups += 1
                return
            self.gaps += seq - expected
        self.next_seq[gid] = seq + 1
        self.rx_total += 1
        self.worker.count_delivery(now, now - sent_us)

    def _line_ack(self, line: bytes, now: int) -> None:
        text = self.dialect.chat_text(line)
        if text is None:
            self._line_idle(line, now)
            return
        payload = dialects.parse_text(text)
        if payload is not None:
            self.worker.note_ack(payload[0])

    # -- sending ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, count: int) -> int:
        """Write up to ``count`` messages at once; returns how many went out."""
        if count <= 0 or not self.alive:
            return 0
        if self.quota is not None:
            count = min(count, self.quota - self.phase_sent)
            if count <= 0:
                return 0
        chat = self.dialect.chat
        room = self.room
        gid = self.spec.gid
        pad = self.worker.pad
        seq = self.seq
        chunks = [chat(room, dialects.make_text(gid, seq + i, pad)) for i in range(count)]
        self.seq = seq + count
        self.phase_sent += count
        self.inflight += count
        assert self.transport is not None
        self.transport.write(b"".join(chunks))
        return count

    def start_closed(self, window: int, quota: Optional[int], t_end: float) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.window = window
        self.quota = quota
        self.t_end = t_end
        self.inflight = 0
        self.closed_loop = True
        self.send(window)

    def acked(self, count: int) -> None:
        self.inflight = max(0, self.inflight - count)
        if not self.closed_loop:
            return
        finished = time.monotonic() >= self.t_end or (
            self.quota is not None and self.phase_sent >= self.quota
        )
        if finished:
            self.stop_sending()
            return
        self.send(self.window - self.inflight)

    def stop_sending(self) -> None:
        self.closed_loop = False
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def run_rate(self, start: float, t_end: float, rate: float) -> None:
        """Open loop: message k is due at start + k / rate, until t_end."""
        interval = 1.0 / rate
        while True:
            now = time.monotonic()
            if now >= t_end or not self.alive:
                return
            due = int((now - start) / interval) + 1 if now >= start else 0
            missing = due - self.phase_sent - self.blocked
            if missing > 0:
                assert self.transport is not None
                if self.transport.get_write_buffer_size() > WRITE_QUEUE_LIMIT:
                    self.blocked += missing
                else:
                    self.send(missing)
                    self.lag_max = max(self.lag_max, now - (start + (due - 1) * interval))
            next_at = start + due * interval
            await asyncio.sleep(max(0.0, min(next_at, t_end) - time.monotonic()))


class Worker:
    """Owns the clients of one plan and runs the parent's commands."""

    def __init__(self, plan: WorkerPlan, conn: Connection) -> None:
        self.plan = plan
        self.conn = conn
        self.tls = _client_tls(plan.tls_resume) if plan.tls else None
        self.tls_resumed = 0  # logins whose handshake resumed an earlier session
        self.dialect = dialects.get(plan.dialect)
        self.pad = b"x" * plan.pad_bytes
        self.clients: list[Client] = []
        self.senders: dict[int, Client] = {}
        self.ack_pending: Counter[int] = Counter()
        self.hist = Histogram()
        self.phase_rx = 0
        self.window_rx = 0
        self.window_end_us = 0
        self.churn_stats: dict[str, Any] = {}

    # -- counters used by clients ------------------------------------------

    def count_delivery(self, now_us: int, latency_us: int) -> None:
        self.phase_rx += 1
        if now_us <= self.window_end_us:
            self.window_rx += 1
        self.hist.add(latency_us if latency_us > 0 else 0)

    def note_tls_session(self, transport: Optional[asyncio.Transport]) -> None:
        """After a login over TLS: keep its session for the next connections to offer."""
        if not isinstance(self.tls, ResumingContext) or transport is None:
            return
        obj = transport.get_extra_info("ssl_object")
        if not isinstance(obj, ssl.SSLObject):
            return
        if obj.session_reused:
            self.tls_resumed += 1
        elif obj.session is not None and obj.session.has_ticket:
            # Arrives after the TLS 1.3 handshake; the login's reply came after it.
            self.tls.session = obj.session

    def note_ack(self, gid: int) -> None:
        if gid in self.senders:
            self.ack_pending[gid] += 1

    def flush_acks(self) -> None:
        if not self.ack_pending:
            return
        pending, self.ack_pending = self.ack_pending, Counter()
        for gid, count in pending.items():
            self.senders[gid].acked(count)

    # -- command loop ---------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Args]] = asyncio.Queue()
        fd = self.conn.fileno()

        def readable() -> None:
            try:
                while self.conn.poll():
                    queue.put_nowait(self.conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(fd)
                queue.put_nowait(("close", {"parent_gone": True}))

        loop.add_reader(fd, readable)
        try:
            while True:
                name, args = await queue.get()
                handler = getattr(self, "cmd_" + name, None)
                reply: Reply
                if handler is None:
                    reply = {"error": f"unknown command {name!r}"}
                else:
                    try:
                        reply = await handler(args)
                    except Exception as exc:  # reported to the parent, which stops the run
                        reply = {"error": f"{type(exc).__name__}: {exc}"}
                if not args.get("parent_gone"):
                    try:
                        self.conn.send(reply)
                    except OSError:
                        break
                if name == "close":
                    break
        finally:
            loop.remove_reader(fd)
            for client in self.clients:
                client.abort()

    # -- commands ---------------------------------------------------------------

    async def cmd_login(self, args: Args) -> Reply:
        in_flight = int(args["in_flight"])
        timeout = float(args["timeout"])
        deadline = float(args["deadline"])
        limiter = asyncio.Semaphore(max(1, in_flight))
        hist = Histogram()
        errors: Counter[str] = Counter()
        marks: list[float] = []

        async def one(client: Client) -> None:
            async with limiter:
                start = time.monotonic()
                marks.append(start)
                error = await client.connect(min(timeout, max(0.1, deadline - start)))
                end = time.monotonic()
                if error:
                    errors[error] += 1
                    return
                marks.append(end)
                hist.add(int((end - start) * 1e6))

        fresh = [Client(self, spec) for spec in self.plan.clients]
        self.clients.extend(fresh)
        for client in fresh:
            if client.spec.role == ROLE_SEND:
                self.senders[client.spec.gid] = client
        tasks = [asyncio.ensure_future(one(client)) for client in fresh]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
            for task in pending:
                task.cancel()
            if pending:
                errors["phase deadline"] += len(pending)
                await asyncio.wait(pending, timeout=2.0)
        ok = sum(1 for client in fresh if client.logged_in and client.alive)
        return {
            "ok": ok,
            "failed": len(fresh) - ok,
            "errors": dict(errors),
            "hist": hist.to_wire(),
            "first": min(marks) if marks else None,
            "last": max(marks) if marks else None,
            "slow_ports": [c.local_port for c in fresh if c.spec.role == ROLE_SLOW],
            "tls_resumed": self.tls_resumed,
        }

    async def cmd_traffic(self, args: Args) -> Reply:
        mode = str(args["mode"])
        t0 = float(args["t0"])
        seconds = float(args["seconds"])
        t_end = t0 + seconds
        self.hist = Histogram()
        self.phase_rx = 0
        self.window_rx = 0
        self.window_end_us = int(t_end * 1e6)
        senders = [c for c in self.senders.values() if c.alive]
        for sender in senders:
            sender.phase_sent = 0
            sender.blocked = 0
            sender.lag_max = 0.0
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        waits: list[asyncio.Future[Any]] = []
        if mode == "rate":
            rate = float(args["rate"])
            spread = int(args.get("spread") or len(senders) or 1)
            for sender in senders:
                # Spread the senders' schedules evenly over one interval.
                offset = (sender.spec.gid % spread) / (rate * spread)
                waits.append(asyncio.ensure_future(sender.run_rate(t0 + offset, t_end, rate)))
        elif mode == "closed":
            window = int(args["window"])
            quota = args.get("quota")
            for sender in senders:
                sender.start_closed(window, None if quota is None else int(quota), t_end)
                assert sender.done is not None
                waits.append(sender.done)
        else:
            raise ValueError(f"unknown traffic mode {mode!r}")
        churn = args.get("churn")
        churn_task: Optional[asyncio.Future[Reply]] = None
        if churn:
            churn_args = dict(churn)
            churn_args["deadline"] = t_end
            churn_task = asyncio.ensure_future(self.cmd_churn(churn_args))
            waits.append(churn_task)
        if waits:
            await asyncio.wait(waits, timeout=max(0.0, t_end - time.monotonic()) + 2.0)
        for sender in senders:
            sender.stop_sending()
        for wait in waits:
            if not wait.done():
                wait.cancel()
        reply: Reply = {
            "seq": {gid: c.seq for gid, c in self.senders.items()},
            "phase_sent": sum(c.phase_sent for c in senders),
            "blocked": sum(c.blocked for c in senders),
            "lag_max_ms": round(max((c.lag_max for c in senders), default=0.0) * 1000, 3),
            "senders_alive": sum(1 for c in senders if c.alive),
        }
        if churn_task is not None and churn_task.done() and not churn_task.cancelled():
            reply["churn"] = churn_task.result()
        return reply

    async def cmd_drain(self, args: Args) -> Reply:
        sent: dict[int, int] = {int(k): int(v) for k, v in args["seq"].items()}
        rooms: dict[int, str] = {int(k): str(v) for k, v in args["rooms"].items()}
        deadline = float(args["deadline"])
        expected: Counter[str] = Counter()
        for gid, total in sent.items():
            expected[rooms[gid]] += total
        receivers = [c for c in self.clients if c.spec.role == ROLE_RECV]

        def complete() -> bool:
            return all(r.rx_total + r.gaps >= expected[r.room] for r in receivers if r.alive)

        while not complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        missing = 0
        dups = 0
        alive = 0
        for receiver in receivers:
            if not receiver.alive:
                continue
            alive += 1
            dups += receiver.dups
            missing += receiver.gaps
            for gid, total in sent.items():
                if rooms[gid] == receiver.room:
                    missing += max(0, total - receiver.next_seq.get(gid, 0))
        return {
            "phase_rx": self.phase_rx,
            "window_rx": self.window_rx,
            "hist": self.hist.to_wire(),
            "missing": missing,
            "dups": dups,
            "receivers_alive": alive,
            "receivers_dead": len(receivers) - alive,
            "complete": complete(),
            "slow_closed_at": [c.closed_at for c in self.clients if c.spec.role == ROLE_SLOW],
        }

    async def cmd_churn(self, args: Args) -> Reply:
        cycles = int(args["cycles"])
        concurrency = max(1, int(args["concurrency"]))
        deadline = float(args["deadline"])
        rooms: list[str] = list(args.get("rooms") or [dialects.DEFAULT_ROOM])
        timeout = float(args.get("timeout", 10.0))
        hist = Histogram()
        errors: Counter[str] = Counter()
        done = {"ok": 0, "failed": 0, "issued": 0}
        started = time.monotonic()

        async def cycle(number: int) -> str:
            room = rooms[number % len(rooms)]
            name = f"h{self.plan.index}x{number}"
            gid = CHURN_GID_BASE + self.plan.index * 1_000_000 + number
            client = Client(self, ClientSpec(ROLE_CHURN, name, room, gid))
            try:
                return await churn_once(client, number % 3)
            finally:
                client.abort()

        async def churn_once(client: Client, how: int) -> str:
            error = await client.connect(timeout)
            if error:
                return error
            client.start_closed(1, 1, time.monotonic() + timeout)
            if self.dialect.echoes:
                assert client.done is not None
                try:
                    await asyncio.wait_for(asyncio.shield(client.done), timeout)
                except asyncio.TimeoutError:
                    return "no echo"
            if how == 0:
                client.write(self.dialect.quit())
                try:
                    await asyncio.wait_for(asyncio.shield(client.closed_waiter), timeout)
                except asyncio.TimeoutError:
                    return "quit not answered"
            elif how == 1:
                if client.transport is not None:
                    client.transport.close()
            else:
                client.reset()
            return ""

        async def loop_body() -> None:
            while done["issued"] < cycles and time.monotonic() < deadline:
                number = done["issued"]
                done["issued"] += 1
                start = time.monotonic()
                try:
                    error = await asyncio.wait_for(
                        cycle(number), max(0.1, deadline - start + timeout)
                    )
                except asyncio.TimeoutError:
                    error = "cycle timeout"
                if error:
                    done["failed"] += 1
                    errors[error] += 1
                else:
                    done["ok"] += 1
                    hist.add(int((time.monotonic() - start) * 1e6))

        bodies = [asyncio.ensure_future(loop_body()) for _ in range(concurrency)]
        await asyncio.wait(bodies, timeout=max(0.1, deadline - time.monotonic()) + timeout + 2)
        for body in bodies:
            body.cancel()
        return {
            "ok": done["ok"],
            "failed": done["failed"],
            "errors": dict(errors),
            "hist": hist.to_wire(),
            "seconds": time.monotonic() - started,
        }

    async def cmd_close(self, args: Args) -> Reply:
        count = 0
        for client in self.clients:
            if client.alive:
                count += 1
            client.abort()
        await asyncio.sleep(0.05)
        return {"closed": count}

    async def cmd_alive(self, args: Args) -> Reply:
        return {"alive": sum(1 for c in self.clients if c.alive)}


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return type(exc).__name__


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(wanted, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ResumingContext(ssl.SSLContext):
    """A client context whose connections offer ``session`` (from an earlier one)."""

    session: Optional[ssl.SSLSession] = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: Union[str, bytes, None] = None,
        session: Optional[ssl.SSLSession] = None,
    ) -> ssl.SSLObject:
        # asyncio wraps every connection with wrap_bio and passes no session.
        return super().wrap_bio(
            incoming, outgoing, server_side, server_hostname, session or self.session
        )


def _client_tls(resume: bool = False) -> ssl.SSLContext:
    """The load's TLS: a throw-away certificate, so no verification."""
    ctx = (
        ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
        if resume
        else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    )
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def worker_main(conn: Connection, plan: WorkerPlan, parent_pid: int) -> None:
    die_with_parent()
    if os.getppid() != parent_pid:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    raise_fd_limit()
    try:
        asyncio.run(Worker(plan, conn).serve())
    finally:
        conn.close()
