"""Readings of a server process and of TCP sockets from /proc (Linux only)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ProcSample:
    at: float  # time.monotonic()
    rss_kb: int
    threads: int
    fds: int
    cpu_s: float  # user + system CPU time so far


_TICKS = os.sysconf("SC_CLK_TCK")


def read_sample(pid: int) -> Optional[ProcSample]:
    """VmRSS, Threads and the number of open fds of ``pid``; None once it is gone."""
    rss_kb = threads = -1
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # Fields after the command name, which may contain spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return None
    return ProcSample(time.monotonic(), rss_kb, threads, fds, cpu_s)


class ProcWatch:
    """Samples a process at most every ``interval`` seconds when ticked."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[ProcSample] = []
        self._next = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        sample = read_sample(self.pid)
        if sample is not None:
            self.samples.append(sample)

    def now(self) -> ProcSample:
        """A fresh sample (also kept in ``samples``); zeros if the process is gone."""
        sample = read_sample(self.pid)
        if sample is None:
            return ProcSample(time.monotonic(), 0, 0, 0, 0.0)
        self.samples.append(sample)
        return sample

    def max_rss_kb(self, since: float = 0.0) -> int:
        return max((s.rss_kb for s in self.samples if s.at >= since), default=0)

    def rss_at(self, when: float) -> Optional[int]:
        """RSS of the first sample taken at or after ``when``."""
        for sample in self.samples:
            if sample.at >= when:
                return sample.rss_kb
        return None


_TCP_ESTABLISHED = "01"


def server_side_closed(server_port: int, client_port: int) -> bool:
    """True once the server no longer holds an open socket for this client.

    The client in question never reads, so it cannot see the server's FIN (it
    waits behind unread data). The server's end of the connection is visible in
    /proc/net/tcp, though: once the server closes it, the entry leaves
    ESTABLISHED, is orphaned (inode 0) or disappears.
    """
    wanted_local = f":{server_port:04X}"
    wanted_remote = f":{client_port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) < 10:
                    continue
                if (
                    fields[1].endswith(wanted_local)
                    and fields[2].endswith(wanted_remote)
                    and fields[3] == _TCP_ESTABLISHED
                    and fields[9] != "0"
                ):
                    return False
    except OSError:
        return False
    return True


def tcp_counter(name: str) -> int:
    """A system-wide TcpExt counter from /proc/net/netstat (e.g. ListenOverflows)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as netstat:
            rows = netstat.read().splitlines()
    except OSError:
        return 0
    for header, values in zip(rows[::2], rows[1::2]):
        if header.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:]))
            return int(table.get(name, 0))
    return 0
