"""What the system tests do as an operator: systemctl, journalctl, chat clients."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any, Optional, Union

from tests.system.sandbox import Sandbox, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_README = ROOT / "deploy" / "README.md"
# The interpreter deploy/README.md tells operators to build the venv from.
SYSTEM_PYTHON = "/usr/bin/python3"
CHECKOUT = "/usr/local/src/chatsvc"  # where the operator's checkout is, inside
PORT = 6321
UNIT = "chatsvc.service"
CONFIG = "/etc/chatsvc/chatsvc.toml"
Pattern = Union[str, "re.Pattern[str]"]


def readme_block(heading: str, readme: Path = DEPLOY_README) -> str:
    """The first ```sh block under the section ``heading`` of a README."""
    text = readme.read_text()
    section = re.search(rf"^##+ {re.escape(heading)}\n(.*?)(?=^##+ |\Z)", text, re.M | re.S)
    assert section, f"no section {heading!r} in {readme}"
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, f"no ```sh block in section {heading!r} of {readme}"
    return block.group(1)


def readme_commands(heading: str) -> list[str]:
    """The command lines of that block (continuations joined, comments dropped)."""
    commands: list[str] = []
    pending = ""
    for raw in readme_block(heading).splitlines():
        line = pending + raw
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


class Client:
    """A chat client on a socket made inside the sandbox; every read has a deadline."""

    def __init__(self, sock: socket.socket, timeout: float = 15.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    @classmethod
    def login(cls, box: Sandbox, name: str) -> Client:
        client = cls(box.connect(PORT))
        client.expect("please enter your name")
        client.send(name)
        client.expect(f"* hello {name}, you are in lobby")
        return client

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read_line(self, deadline: float) -> Optional[str]:
        """The next line; None at EOF; TimeoutError after ``deadline`` (monotonic)."""
        while b"\n" not in self.buf:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete line in time; have {self.buf[:200]!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            self.eof = not data
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    def expect(self, pattern: Pattern, timeout: Optional[float] = None) -> str:
        """Read lines until one contains ``pattern`` (str) or matches it (regex)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen: list[str] = []
        while True:
            try:
                line = self.read_line(deadline)
            except TimeoutError:
                raise AssertionError(f"expected {pattern!r}; got {seen[-20:]!r}") from None
            if line is None:
                raise AssertionError(f"EOF while expecting {pattern!r}; got {seen[-20:]!r}")
            if pattern in line if isinstance(pattern, str) else pattern.search(line):
                return line
            seen.append(line)

    def lines_until_eof(self, timeout: Optional[float] = None) -> list[str]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines: list[str] = []
        while (line := self.read_line(deadline)) is not None:
            lines.append(line)
        return lines

    def close(self) -> None:
        self.sock.close()


def show(box: Sandbox, unit: str = UNIT) -> dict[str, str]:
    """``systemctl show`` of a unit, as a dict."""
    out = box.run(["systemctl", "show", unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main_pid(box: Sandbox) -> int:
    return int(show(box)["MainPID"])


def wait_active(box: Sandbox, timeout: float = 20.0) -> dict[str, str]:
    def active() -> Optional[dict[str, str]]:
        props = show(box)
        ok = props["ActiveState"] == "active" and props["SubState"] == "running"
        return props if ok else None

    return wait_for("chatsvc.service to be active (running)", active, timeout)


def admin(box: Sandbox, *args: str, user: str = "", groups: str = "") -> tuple[int, str, str]:
    """``chatsvc-admin ARGS`` inside: as root, as ``user`` (a login's groups), or as
    ``user`` with exactly the supplementary ``groups``; (status, stdout, stderr)."""
    argv = ["chatsvc-admin", *args]
    if user and groups:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", f"--groups={groups}", *argv]
    elif user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = box.run(argv, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def journal_lines(box: Sandbox, *matches: str) -> list[str]:
    """What the service wrote to the journal (``-o cat``), oldest first."""
    argv = ["journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_UNIT={UNIT}", *matches]
    return box.run(argv).stdout.splitlines()


def events(box: Sandbox, event: str, **fields: Any) -> list[dict[str, Any]]:
    """The service's JSON log events named ``event`` with these field values."""
    found = []
    for line in journal_lines(box):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == event and all(obj.get(k) == v for k, v in fields.items()):
            found.append(obj)
    return found


def wait_event(
    box: Sandbox, event: str, after: int = 0, timeout: float = 20.0, **fields: Any
) -> dict[str, Any]:
    """The next such event once ``after`` of them were there (``len(events(...))``)."""

    def more() -> Optional[dict[str, Any]]:
        found = events(box, event, **fields)
        return found[after] if len(found) > after else None

    return wait_for(f"a {event} event with {fields} in the journal", more, timeout, 0.1)
