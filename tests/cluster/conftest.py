"""Fixtures for cluster mode: a real redis-server per test, real chatsvc nodes.

Skips (with the reason) where ``redis-server`` or the ``redis`` package is
missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.e2e.conftest import TEST_DEFAULTS, _sections, chatsvc_proc, config_file
from tests.e2e.helpers import ServerProcess, wait_until, write_config

REDIS = shutil.which("redis-server")

pytestmark = pytest.mark.cluster


def _redis_missing() -> Optional[str]:
    if REDIS is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install 'chatsvc[cluster]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a Unix socket in a private directory."""

    def __init__(
        self, workdir: Path, appendfsync: str = "always", password: Optional[str] = None
    ) -> None:
        self.password = password
        self.port = _free_port()  # TCP too, for the fault proxy
        self.dir = workdir
        self.sock = str(workdir / "redis.sock")
        self.appendfsync = appendfsync
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self, keep_data: bool = True) -> None:
        if not keep_data:
            for f in self.dir.glob("appendonly*"):
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink()
        self.proc = subprocess.Popen(
            [
                str(REDIS),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--unixsocket",
                self.sock,
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--maxmemory-policy",
                "noeviction",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=10, what="redis-server answers")

    def save_data(self, dest: Path) -> None:
        """Copy the data directory's AOF files (Redis stopped) to ``dest``."""
        assert self.proc is None or self.proc.poll() is not None, "stop redis-server first"
        shutil.copytree(self.dir / "appendonlydir", dest)

    def restore_data(self, src: Path) -> None:
        """Put an older copy of the AOF files back (Redis stopped): lost writes."""
        assert self.proc is None or self.proc.poll() is not None, "stop redis-server first"
        shutil.rmtree(self.dir / "appendonlydir")
        shutil.copytree(src, self.dir / "appendonlydir")

    def ping(self) -> bool:
        import redis

        try:
            conn = redis.Redis(unix_socket_path=self.sock, socket_timeout=1, password=self.password)
            return bool(conn.ping())
        except redis.RedisError:
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        if os.path.exists(self.sock):
            os.unlink(self.sock)

    def client(self) -> Any:
        import redis

        return redis.Redis(
            unix_socket_path=self.sock,
            socket_timeout=5,
            decode_responses=True,
            password=self.password,
        )


@pytest.fixture
def redis_server(short_tmp: Path) -> Iterator[RedisServer]:
    why = _redis_missing()
    if why:
        pytest.skip(why)
    server = RedisServer(short_tmp)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def node(
    redis_server: RedisServer, tmp_path: Path, short_tmp: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Start a chatsvc node of the test's cluster; returns it once it listens."""
    procs: list[ServerProcess] = []

    def start(name: str, **overrides: Any) -> ServerProcess:
        settings = {
            **TEST_DEFAULTS,
            "level": "info",
            "socket": str(short_tmp / f"{name}.sock"),
            "backend": redis_server.url,
            "node_id": name,
            "lease": 2.0,
            "heartbeat": 0.25,
            "unavailable_after": 2.0,
            **overrides,
        }
        dotted = {k: settings.pop(k) for k in [k for k in settings if "." in k]}
        sections = _sections(settings)
        for key, value in dotted.items():  # "irc.port": keys more than one section has
            section, _, field = key.partition(".")
            sections.setdefault(section, {})[field] = value
        path = write_config(tmp_path / f"{name}.toml", sections)
        proc = ServerProcess(["--config", str(path)])
        procs.append(proc)
        proc.wait_started()
        return proc

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGCONT)
        p.kill()


def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    wait_until(cond, timeout=timeout, what=what)


__all__ = ["RedisServer", "chatsvc_proc", "config_file", "time", "until"]
