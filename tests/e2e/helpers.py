"""Test helpers: a raw line client with deadlines, condition waiting, subprocess server."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

Pattern = Union[str, "re.Pattern[str]"]
DEFAULT_TIMEOUT = 5.0


def wait_until(
    cond: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RawClient:
    """A line-oriented TCP client whose every read has a deadline."""

    def __init__(
        self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT, source: Optional[str] = None
    ) -> None:
        """``source``: the local address to connect from (another loopback address)."""
        bind = (source, 0) if source is not None else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=bind)
        self.timeout = timeout
        self._buf = b""
        self.eof = False
        self.seen: list[str] = []

    # --- writing -----------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, line: str) -> None:
        self.send_raw(line.encode() + b"\n")

    # --- reading -----------------------------------------------------------------------

    def read_line(self, timeout: Optional[float] = None) -> Optional[str]:
        """The next line (without newline); None at EOF; raises on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete line in time; have {self._buf[:200]!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode("utf-8", "replace")
        self.seen.append(text)
        return text

    def expect(self, pattern: Pattern, timeout: Optional[float] = None) -> str:
        """Read lines until one contains ``pattern`` (str) or matches it (regex)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        skipped: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.read_line(max(remaining, 0.0))
            except TimeoutError:
                raise AssertionError(f"expected {pattern!r}; got {skipped[-20:]!r}") from None
            if line is None:
                raise AssertionError(f"EOF while expecting {pattern!r}; got {skipped[-20:]!r}")
            if isinstance(pattern, str) and pattern in line:
                return line
            if not isinstance(pattern, str) and pattern.search(line):
                return line
            skipped.append(line)

    def lines_until_eof(self, timeout: Optional[float] = None) -> list[str]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[str] = []
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.0))
            if line is None:
                return out
            out.append(line)

    def expect_eof(self, timeout: Optional[float] = None) -> list[str]:
        return self.lines_until_eof(timeout)

    def login(self, name: str) -> str:
        self.expect("please enter your name")
        self.send(name)
        return self.expect(re.compile(r"^(\* hello |! )"))

    def login_again(self, name: str) -> str:
        """Another name after a refusal (the server waits for one)."""
        self.send(name)
        return self.expect(re.compile(r"^(\* hello |! )"))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def logged_in(host: str, port: int, name: str) -> RawClient:
    c = RawClient(host, port)
    reply = c.login(name)
    assert reply.startswith("* hello"), reply
    return c


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config from plain data (strings, numbers, bools, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class ServerProcess:
    """The real ``chatsvc`` entry point in a subprocess, JSON logs captured."""

    def __init__(self, args: list[str], env: Optional[dict[str, str]] = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatsvc", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self.events: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self.host = ""
        self.port = 0
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw in self.proc.stderr:
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        except (ValueError, OSError):  # closed by kill() while a daemon child held it open
            pass
        self._lines.put(None)

    def read_event(self, timeout: float = DEFAULT_TIMEOUT) -> Optional[dict[str, Any]]:
        """The next JSON log event from stderr (None at EOF)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no log event in time")
            try:
                text = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if text is None:
                self._lines.put(None)  # stay at EOF for later readers
                return None
            self.raw_lines.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            self.events.append(event)
            return dict(event)

    def wait_event(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        for event in self.iter_events(timeout):
            if event.get("event") == name:
                return event
        raise AssertionError(f"no {name!r} event; saw {self.raw_lines[-20:]!r}")

    def iter_events(self, timeout: float) -> Iterator[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                event = self.read_event(remaining)
            except TimeoutError:
                return
            if event is None:
                return
            yield event

    def wait_started(self, timeout: float = 10.0) -> tuple[str, int]:
        event = self.wait_event("server_started", timeout)
        self.host, self.port = str(event["host"]), int(event["port"])
        return self.host, self.port

    def wait_exit(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout)
        # collect what is left of the log
        list(self.iter_events(1.0))
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        # EOF ends the pump; closing the stream under its read would break that read
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def abort(conn: Union[RawClient, socket.socket]) -> None:
    """Close with SO_LINGER 0: the peer gets a reset (RST) instead of an orderly FIN."""
    sock = conn.sock if isinstance(conn, RawClient) else conn
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed
    sock.close()


def process_threads() -> int:
    """OS threads of this process, bare ``_thread`` threads included."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError("no Threads: line in /proc/self/status")


def open_fds() -> int:
    """File descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


def blocked_signals(pid: int) -> dict[int, set[int]]:
    """For each live thread of ``pid``: the signal numbers it blocks (SigBlk in procfs).

    A thread that ends while we look (an admin connection, say) is left out.
    """
    blocked: dict[int, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        line = next(ln for ln in status.splitlines() if ln.startswith("SigBlk:"))
        mask = int(line.split()[1], 16)
        blocked[int(tid)] = {n for n in range(1, 65) if mask >> (n - 1) & 1}
    return blocked
