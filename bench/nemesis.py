"""Fault injection and a history checker for cluster mode (stdlib only).

Shared by the cluster tests (tests/cluster) and the soak benchmark
(``python -m bench.cluster --soak SECONDS``):

* ``FaultProxy``: a TCP proxy between a node and Redis that can pause, cut
  and refuse connections;
* ``LoggingClient``: a line-protocol client whose reader thread logs every
  line it receives, and what it sent;
* ``check``: a Jepsen-style check of what every client received, per room:
  one total order, no duplicates, every sender's lines in the order sent, and
  no line missing silently.  A line may be missing only where the member was
  told (``* ... may be lost``, ``* N lines in ROOM were missed``), where its
  sender was told (``! cluster unavailable``), or where it was in flight when
  its sender's connection ended (a node killed or fenced); those are counted
  apart as ``excused``.
"""

from __future__ import annotations

import bisect
import heapq
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


class FaultProxy:
    """A small TCP proxy between a node and Redis that can pause and cut.

    ``pause()`` stops forwarding in both directions (bytes wait in the kernel,
    as on a stalled network path); ``resume()`` forwards them; ``cut()``
    closes every proxied connection (as a reset middlebox would);
    ``refuse(True)`` makes new connections fail at once.  One thread;
    everything bounded by the caller's own deadlines.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._paused = threading.Event()
        self._refusing = False
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # --- the controls --------------------------------------------------------------

    def pause(self) -> None:
        self._paused.set()
        self._wake()

    def resume(self) -> None:
        self._paused.clear()
        self._wake()

    def cut(self) -> None:
        self._cut.set()
        self._wake()

    def refuse(self, on: bool) -> None:
        self._refusing = on

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)
        self.listener.close()

    @property
    def connections(self) -> int:
        return len(self._pairs) // 2

    # --- the thread ----------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._cut.is_set():
                self._cut.clear()
                for s in list(self._pairs):
                    self._drop(s)
            for key, _ in self._sel.select(0.2):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                elif key.fileobj is self.listener:
                    self._accept()
                elif not self._paused.is_set():
                    self._pump(key.fileobj)  # type: ignore[arg-type]
            if self._paused.is_set():
                # stop reading: unregister the pairs until resumed
                for s in list(self._pairs):
                    try:
                        self._sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
            else:
                for s in list(self._pairs):
                    try:
                        self._sel.get_key(s)
                    except KeyError:
                        self._sel.register(s, selectors.EVENT_READ, "pipe")
        for s in list(self._pairs):
            self._drop(s)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self._refusing:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setblocking(True)
            s.settimeout(2)
        self._pairs[client] = server
        self._pairs[server] = client
        if not self._paused.is_set():
            self._sel.register(client, selectors.EVENT_READ, "pipe")
            self._sel.register(server, selectors.EVENT_READ, "pipe")

    def _pump(self, s: socket.socket) -> None:
        peer: Optional[socket.socket] = self._pairs.get(s)
        if peer is None:
            return
        try:
            data = s.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        peer = self._pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._pairs.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            except OSError:
                pass
            x.close()


REFUSED = "! cluster unavailable"


def is_notice(line: str) -> bool:
    """A server line telling the member that lines may be missing."""
    return line.startswith("* ") and (line.endswith("may be lost") or line.endswith("were missed"))


class LoggingClient:
    """One session of a line-protocol client: every line received is logged.

    ``sent`` lists the texts this session sent, in order; a session ends at
    EOF (``ended``).  A client that reconnects is a new session (another name).
    """

    def __init__(self, host: str, port: int, name: str, timeout: float = 10.0) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.lines: list[str] = []
        self.sent: list[str] = []
        self.ended = threading.Event()
        self._buf = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.sock.sendall(name.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while not any(x.startswith("* hello ") for x in self.lines):
            if self.ended.is_set() or time.monotonic() > deadline:
                self.close()
                raise ConnectionError(f"{name}: no login: {self.lines[-3:]}")
            self.ended.wait(0.01)

    def _read(self) -> None:
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self._buf += data
                *done, self._buf = self._buf.split(b"\n")
                self.lines.extend(x.decode("utf-8", "replace") for x in done)
        finally:
            self.ended.set()

    def send(self, text: str, record: bool = True) -> bool:
        """Send one line (``record``: a chat line the checker follows); False if gone."""
        with self._lock:
            try:
                self.sock.sendall(text.encode() + b"\n")
            except OSError:
                return False
            if record:
                self.sent.append(text)
            return True

    def wait_for(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not any(text in x for x in self.lines):
            if self.ended.is_set() or time.monotonic() > deadline:
                return False
            self.ended.wait(0.01)
        return True

    def chat(self, room: str = "lobby") -> list[str]:
        """The texts of ``room``'s chat lines received (``[room] sender: text``)."""
        prefix = f"[{room}] "
        return [x.split(": ", 1)[1] for x in list(self.lines) if x.startswith(prefix)]

    def refusals(self) -> int:
        return sum(1 for x in list(self.lines) if x == REFUSED)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Verdict:
    """What ``check`` found; the first five must be 0."""

    lost: int = 0  # a line missing silently (nobody was told it may be)
    duplicated: int = 0  # a line received twice by one session
    reordered: int = 0  # lines a session received out of the room's one order
    fifo_broken: int = 0  # a sender's lines received out of the order sent
    cycles: int = 0  # rooms whose sessions disagree on the order (no one total order)
    delivered: int = 0  # distinct lines received by somebody
    receptions: int = 0  # lines received, over every session
    sent: int = 0
    excused: int = 0  # missing where the member or the sender was told, or in flight at a cut
    refused: int = 0  # `! cluster unavailable` answers
    notices: int = 0  # `* ... may be lost` / `* ... were missed` lines
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.reordered or self.fifo_broken or self.cycles
        )

    def summary(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in (
                "sent",
                "delivered",
                "receptions",
                "lost",
                "duplicated",
                "reordered",
                "fifo_broken",
                "cycles",
                "excused",
                "refused",
                "notices",
            )
        }


@dataclass
class Session:
    """What one session sent and received (the checker's input)."""

    name: str
    lines: Sequence[str]  # every line received, in order
    sent: Sequence[str]  # texts sent, in order (each unique across the run)
    ended: bool  # the connection ended (EOF) before the run did


def session_of(c: LoggingClient, ended: Optional[bool] = None) -> Session:
    return Session(
        c.name, list(c.lines), list(c.sent), c.ended.is_set() if ended is None else ended
    )


def _room_of(line: str) -> Optional[str]:
    if line.startswith("[") and "] " in line:
        return line[1 : line.index("] ")]
    return None


def _lis(xs: Sequence[int]) -> int:
    """Length of the longest increasing subsequence."""
    tails: list[int] = []
    for x in xs:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def _order(histories: Iterable[list[str]]) -> tuple[list[str], bool]:
    """One order of the room consistent with every history; False if there is none."""
    succ: dict[str, set[str]] = {}
    indeg: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for h in histories:
        for i, x in enumerate(h):
            indeg.setdefault(x, 0)
            succ.setdefault(x, set())
            first_seen.setdefault(x, len(first_seen))
            if i and x != h[i - 1] and x not in succ[h[i - 1]]:
                succ[h[i - 1]].add(x)
                indeg[x] += 1
    ready = [(first_seen[x], x) for x, d in indeg.items() if d == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, x = heapq.heappop(ready)
        out.append(x)
        for y in succ[x]:
            indeg[y] -= 1
            if indeg[y] == 0:
                heapq.heappush(ready, (first_seen[y], y))
    if len(out) < len(indeg):  # a cycle: append the rest as first seen
        done = set(out)
        out += sorted((x for x in indeg if x not in done), key=first_seen.__getitem__)
        return out, False
    return out, True


def check(sessions: Sequence[Session]) -> Verdict:
    """Check every room's histories (see the module docstring)."""
    v = Verdict()
    sender_of: dict[str, Session] = {}
    for s in sessions:
        v.sent += len(s.sent)
        v.refused += sum(1 for x in s.lines if x == REFUSED)
        v.notices += sum(1 for x in s.lines if is_notice(x))
        for text in s.sent:
            sender_of[text] = s
    # Per session and room: the chat texts received, and how many notices the
    # session had had when each came (a notice between two lines excuses what
    # is missing between them).
    per_room: dict[str, list[tuple[Session, list[str], list[int]]]] = {}
    for s in sessions:
        rooms: dict[str, tuple[list[str], list[int]]] = {}
        notices = 0
        for line in s.lines:
            if is_notice(line):
                notices += 1
                continue
            room = _room_of(line)
            if room is None or ": " not in line:
                continue
            texts, counts = rooms.setdefault(room, ([], []))
            texts.append(line.split(": ", 1)[1])
            counts.append(notices)
        for room, (texts, counts) in rooms.items():
            per_room.setdefault(room, []).append((s, texts, counts))
    seen_anywhere: set[str] = set()
    for room, entries in per_room.items():
        histories = [texts for _, texts, _ in entries]
        order, consistent = _order(histories)
        if not consistent:
            v.cycles += 1
            v.details.append(f"{room}: the sessions disagree on the order")
        pos = {x: i for i, x in enumerate(order)}
        seen_anywhere.update(order)
        for s, texts, counts in entries:
            v.receptions += len(texts)
            dup = len(texts) - len(set(texts))
            if dup:
                v.duplicated += dup
                v.details.append(f"{s.name} in {room}: {dup} lines twice")
            unique = list(dict.fromkeys(texts))
            notices_at = dict(zip(reversed(texts), reversed(counts)))  # first reception
            positions = [pos[x] for x in unique]
            out_of_order = len(positions) - _lis(positions)
            if out_of_order:
                v.reordered += out_of_order
                v.details.append(f"{s.name} in {room}: {out_of_order} lines out of order")
            by_sender: dict[str, list[str]] = {}
            for x in unique:
                src = sender_of.get(x)
                if src is not None:
                    by_sender.setdefault(src.name, []).append(x)
            for name, got in by_sender.items():
                sent_order = {t: i for i, t in enumerate(sender_of[got[0]].sent)}
                if [sent_order[x] for x in got] != sorted(sent_order[x] for x in got):
                    v.fifo_broken += 1
                    v.details.append(f"{s.name} in {room}: {name}'s lines out of the order sent")
            # Silent gaps: lines of the room's order inside this session's window
            # that it did not receive, with no notice between its neighbours.
            have = set(unique)
            for i in range(1, len(unique)):
                a, b = pos[unique[i - 1]], pos[unique[i]]
                if b <= a + 1:
                    continue
                missing = [x for x in order[a + 1 : b] if x not in have]
                if not missing:
                    continue
                if notices_at[unique[i]] > notices_at[unique[i - 1]]:
                    v.excused += len(missing)
                else:
                    v.lost += len(missing)
                    v.details.append(f"{s.name} in {room}: {len(missing)} lines missing silently")
    # Lines nobody received: told to the sender, or in flight when it was cut?
    for s in sessions:
        refused = sum(1 for x in s.lines if x == REFUSED)
        told = any(is_notice(x) for x in s.lines)
        echoed = {x.split(": ", 1)[1] for x in s.lines if ": " in x and _room_of(x)}
        last_echo = max((i for i, t in enumerate(s.sent) if t in echoed), default=-1)
        for i, text in enumerate(s.sent):
            if text in seen_anywhere:
                continue
            if refused > 0:
                refused -= 1
                v.excused += 1
            elif told or (s.ended and i > last_echo):
                v.excused += 1
            else:
                v.lost += 1
                v.details.append(f"{s.name}: {text!r} reached nobody, unexplained")
    v.delivered = len(seen_anywhere)
    return v
