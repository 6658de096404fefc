"""The servers under test, each started fresh for one run and stopped after it.

- ``chatsvc``: ``python -m chatsvc --config <tmp>/bench.toml --port 0``.
- ``chatsvc-tls``: the same over TLS only (``[server] plain = false``), with a
  self-signed ECDSA P-256 certificate made by the ``openssl`` command; the load
  connects with TLS and does not verify it.
- ``chatsvc-tls-resume``: ``chatsvc-tls`` with load that resumes TLS sessions.
- ``seed``: ``python -m bench.seed_server --port 0``, the naive baseline.
- ``chatsvc-irc``: the same chatsvc with its IRC listener on, spoken to in IRC.
- ``ngircd``: ngIRCd in the foreground with a generated config, spoken to in IRC.
- ``inspircd``: InspIRCd in the foreground with a generated config, spoken to in IRC.

Every server gets a high RLIMIT_NOFILE, loopback only, and its output in a
log file under the run's temporary directory. chatsvc logs at its default
level, ``info`` (``--log-level`` changes it, to compare), so logging is part of
what is measured. The listening port is taken from the ``server_started`` log
line when there is one, else from the process's own listening socket in /proc;
a target that needs its port chosen for it (the IRC servers) is ready when
that port shows up among the process's listening sockets.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.loadgen import die_with_parent

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SERVER_NOFILE = 65536
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
# chatsvc's own default: the cost of logging is part of what a deployment pays.
DEFAULT_LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error")

CHATSVC_CONFIG = """\
# Written by the benchmark: limits opened for load; logging as a deployment has it.
[server]
host = "127.0.0.1"
port = 0
max_clients = 20000
max_clients_per_ip = 0
listen_backlog = 4096

[rooms]
names = ["lobby", "work", "support", "team"]
default = "lobby"
announce_limit = 100

[limits]
max_line_bytes = 2048
name_max_length = 32
send_queue_bytes = 65536
flood_rate = 1000000000.0
flood_burst = 1000000000
flood_strikes = 0
idle_timeout = 0
login_timeout = 60

[admin]
# Its own socket: the default path is one per user, shared by every chatsvc
# running (or still stopping) on the machine.
socket = {admin_socket}

[logging]
level = "{log_level}"
format = "json"
log_messages = false
"""

NGIRCD_CONFIG = """\
# Written by the benchmark: loopback only, limits opened as far as ngIRCd allows.
[Global]
Name = bench.localhost
Info = chatsvc benchmark baseline
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
AdminInfo1 = bench
AdminInfo2 = bench
AdminEMail = bench@localhost

[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 31
# 0 disables penalty times (command throttling) altogether.
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
# A backstop should the benchmark die without stopping it: ngIRCd switches to
# "nobody", which clears the parent-death signal; it exits once idle this long.
IdleTimeout = 30

[Operator]
# Bench clients that send become operators only to set user mode +F
# ("relaxed flood protection": 10 instead of 3 commands per loop, no throttling).
Name = bench
Password = bench

[Options]
DNS = no
Ident = no
PAM = no
IncludeDir = {include_dir}
"""


# Appended to CHATSVC_CONFIG for chatsvc-irc; the line-protocol listener stays.
CHATSVC_IRC_CONFIG = """
[irc]
enabled = true
host = "127.0.0.1"
port = {port}
"""

INSPIRCD_CONFIG = """\
# Written by the benchmark: loopback only, limits opened for load.
<server name="bench.localhost" description="chatsvc benchmark baseline" network="bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="{port}" type="clients">
# Command throttling off (threshold and rate far above any load), no fake lag,
# no per-address limit, no DNS or ident look-ups, PINGs an hour apart.
<connect name="bench" allow="*" timeout="60" pingfreq="3600"
         threshold="1000000000" commandrate="1000000000" fakelag="no"
         localmax="100000" globalmax="100000" maxconnwarn="no" limit="100000"
         hardsendq="1M" softsendq="10240" recvq="1M"
         resolvehostnames="no" useident="no" maxchans="20">
<performance netbuffersize="10240" somaxconn="4096" softlimit="{softlimit}"
             clonesonconnect="no" quietbursts="yes">
<channels users="20" opers="60">
<dns timeout="1">
<security userstats="Pu" maxtargets="20">
<options syntaxhints="no" announcets="no">
<limits maxnick="31">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{log}">
"""


class TargetUnavailable(RuntimeError):
    """The target cannot run here (not installed, did not start)."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int
    pid: int
    dialect: str
    tls: bool = False
    tls_resume: bool = False


class Target:
    name = ""
    dialect = "chat"
    tls = False
    tls_resume = False
    #: The field of the ``server_started`` log line that holds the port to use.
    port_field = "port"

    def unavailable(self) -> Optional[str]:
        """Why this target cannot run here, or None."""
        return None

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        """argv, and the port if the target needs one chosen for it."""
        raise NotImplementedError

    @contextlib.contextmanager
    def running(self, workdir: Path) -> Iterator[Endpoint]:
        reason = self.unavailable()
        if reason:
            raise TargetUnavailable(reason)
        workdir.mkdir(parents=True, exist_ok=True)
        argv, port = self.command(workdir)
        log_path = workdir / f"{self.name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO_ROOT),
                env=_server_env(),
                preexec_fn=_server_preexec,
            )
        try:
            found = _wait_listening(proc, log_path, port, self.port_field)
            yield Endpoint(
                self.name, HOST, found, proc.pid, self.dialect, self.tls, self.tls_resume
            )
        finally:
            stop(proc)


class ChatsvcTarget(Target):
    name = "chatsvc"

    def __init__(self, module: str = "chatsvc", log_level: str = DEFAULT_LOG_LEVEL) -> None:
        self.module = module
        self.log_level = log_level

    def unavailable(self) -> Optional[str]:
        sys.path.insert(0, str(REPO_ROOT))
        try:
            found = importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        return None if found else f"python module {self.module!r} not found"

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        config = workdir / "bench.toml"
        text = CHATSVC_CONFIG.format(
            log_level=self.log_level,
            admin_socket=json.dumps(str(workdir / "admin.sock")),  # a TOML basic string
        )
        config.write_text(text, encoding="utf-8")
        argv = [sys.executable, "-m", self.module, "--config", str(config), "--port", "0"]
        return argv, None


CHATSVC_TLS_CONFIG = """
# Over TLS only: the line protocol on the TLS listener (the port in server_started).
[tls]
port = 0
cert = {cert}
key = {key}
"""


class ChatsvcTlsTarget(ChatsvcTarget):
    """chatsvc with only its TLS listener; what TLS costs, next to ``chatsvc``."""

    name = "chatsvc-tls"
    tls = True

    def unavailable(self) -> Optional[str]:
        if shutil.which("openssl") is None:
            return "the openssl command is not installed (it makes the certificate)"
        return super().unavailable()

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        argv, port = super().command(workdir)
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key),
             "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        config = workdir / "bench.toml"
        text = config.read_text(encoding="utf-8").replace(
            "listen_backlog = 4096", "listen_backlog = 4096\nplain = false"
        )
        text += CHATSVC_TLS_CONFIG.format(cert=json.dumps(str(cert)), key=json.dumps(str(key)))
        config.write_text(text, encoding="utf-8")
        return argv, port


class ChatsvcTlsResumeTarget(ChatsvcTlsTarget):
    """``chatsvc-tls`` with load that resumes TLS sessions (TLS 1.3 tickets): each
    load process's first login makes a full handshake, later ones offer its session."""

    name = "chatsvc-tls-resume"
    tls_resume = True


class ChatsvcIrcTarget(ChatsvcTarget):
    """chatsvc spoken to over its IRC listener (a port chosen here: at ``warning``
    the ``server_started`` line that would name it is not logged)."""

    name = "chatsvc-irc"
    dialect = "irc"
    port_field = "irc_port"

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        argv, _ = super().command(workdir)
        port = free_port()
        config = workdir / "bench.toml"
        with open(config, "a", encoding="utf-8") as out:
            out.write(CHATSVC_IRC_CONFIG.format(port=port))
        return argv, port


class SeedTarget(Target):
    name = "seed"

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        return [sys.executable, "-m", "bench.seed_server", "--host", HOST, "--port", "0"], None


class NgircdTarget(Target):
    name = "ngircd"
    dialect = "irc-oper"

    def __init__(self, binary: Optional[str] = None) -> None:
        self.binary = binary or find_ngircd()

    def unavailable(self) -> Optional[str]:
        if not self.binary:
            return "ngircd is not installed (apt-get install ngircd)"
        return None

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        assert self.binary is not None
        port = free_port()
        include_dir = workdir / "ngircd.conf.d"
        include_dir.mkdir(exist_ok=True)
        config = workdir / "ngircd.conf"
        config.write_text(
            NGIRCD_CONFIG.format(port=port, include_dir=include_dir), encoding="utf-8"
        )
        # ngIRCd drops root for "nobody"; let it read what it needs on rehash.
        for path in (workdir, include_dir, config):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return [self.binary, "--nodaemon", "--config", str(config)], port


class InspircdTarget(Target):
    name = "inspircd"
    dialect = "irc"

    def __init__(self, binary: Optional[str] = None) -> None:
        self.binary = binary or _find_binary("inspircd")

    def unavailable(self) -> Optional[str]:
        if not self.binary:
            return "inspircd is not installed (apt-get install inspircd)"
        return None

    def command(self, workdir: Path) -> tuple[list[str], Optional[int]]:
        assert self.binary is not None
        port = free_port()
        config = workdir / "inspircd.conf"
        text = INSPIRCD_CONFIG.format(
            port=port, softlimit=SERVER_NOFILE - 100, log=workdir / "inspircd-ircd.log"
        )
        config.write_text(text, encoding="utf-8")
        argv = [self.binary, "--nofork", "--nopid", "--config", str(config)]
        if os.geteuid() == 0:
            argv.append("--runasroot")  # it refuses root otherwise; it never drops it
        return argv, port


def find_ngircd() -> Optional[str]:
    return _find_binary("ngircd")


def _find_binary(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    for candidate in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def make_target(
    name: str, chatsvc_module: str = "chatsvc", log_level: str = DEFAULT_LOG_LEVEL
) -> Target:
    if name == "chatsvc":
        return ChatsvcTarget(chatsvc_module, log_level)
    if name == "chatsvc-tls":
        return ChatsvcTlsTarget(chatsvc_module, log_level)
    if name == "chatsvc-tls-resume":
        return ChatsvcTlsResumeTarget(chatsvc_module, log_level)
    if name == "chatsvc-irc":
        return ChatsvcIrcTarget(chatsvc_module, log_level)
    if name == "seed":
        return SeedTarget()
    if name == "ngircd":
        return NgircdTarget()
    if name == "inspircd":
        return InspircdTarget()
    raise ValueError(f"unknown target {name!r} ({', '.join(TARGET_NAMES)})")


TARGET_NAMES = (
    "chatsvc",
    "chatsvc-tls",
    "chatsvc-tls-resume",
    "chatsvc-irc",
    "seed",
    "ngircd",
    "inspircd",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def _server_preexec() -> None:
    die_with_parent()
    for limit in (SERVER_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1]):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            break
        except (ValueError, OSError):
            continue


def _wait_listening(
    proc: subprocess.Popen[bytes], log_path: Path, port: Optional[int], field: str = "port"
) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetUnavailable(
                f"exited with status {proc.returncode} at start: {_tail(log_path)}"
            )
        found: Optional[int] = None
        if port is not None:
            # Chosen here: listening on it is what counts (a log may name others).
            found = port if port in listening_ports(proc.pid) else None
        else:
            found = _port_from_log(log_path, field)
            if found is None:
                ports = listening_ports(proc.pid)
                found = min(ports) if ports else None
        if found is not None:
            return found
        time.sleep(0.05)
    raise TargetUnavailable(f"not listening after {START_TIMEOUT:.0f} s: {_tail(log_path)}")


def _port_from_log(log_path: Path, field: str = "port") -> Optional[int]:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "server_started" not in line:
            continue
        with contextlib.suppress(ValueError, TypeError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == "server_started":
                return int(record[field])
        for word in line.split():
            if word.startswith(field + "="):
                with contextlib.suppress(ValueError):
                    return int(word[len(field) + 1 :])
    return None


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process ``pid`` listens on (IPv4)."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        with open("/proc/net/tcp", encoding="ascii") as table:
            next(table, None)
            rows = [line.split() for line in table]
    except OSError:
        return set()
    listen = "0A"
    return {
        int(row[1].rsplit(":", 1)[1], 16)
        for row in rows
        if len(row) > 9 and row[3] == listen and row[9] in inodes
    }


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"
