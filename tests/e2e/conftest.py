"""Fixtures: the real server in-process on a free port, or as a ``chatsvc`` subprocess."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from chatsvc import config, logsetup
from chatsvc.hub import Hub
from chatsvc.server import ChatServer
from tests.e2e.helpers import ServerProcess, write_config

# Tests send faster than people type: the flood limit is opened unless a test
# asks for it (and says so).
TEST_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "flood_rate": 1_000_000.0,
    "flood_burst": 1_000_000,
    "max_clients_per_ip": 0,
    "shutdown_grace": 3.0,
    "level": "warning",
    "format": "json",
}


def _sections(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat overrides (``flood_rate=...``) to config sections, by the schema."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if "." in key:  # "auth.mode": a key name more than one section has
            section, _, field = key.partition(".")
            out.setdefault(section, {})[field] = value
            continue
        section = next((s for s, (_, keys) in config.SCHEMA.items() if key in keys), None)
        if section is None:
            raise KeyError(f"unknown config key {key!r}")
        out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return out


class ServerHandle:
    """An in-process ChatServer running its accept loop in a thread."""

    def __init__(self, cfg: config.Config) -> None:
        logsetup.configure(cfg.logging.level, cfg.logging.format, sys.stderr)
        self.server = ChatServer(cfg)
        self.host, self.port = self.server.address
        self.hub: Hub = self.server.hub
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        assert self.server.started.wait(5)

    def stop(self, reason: str | None = None, timeout: float = 10.0) -> None:
        self.server.request_stop(reason)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "server did not stop in time"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def make(**overrides: Any) -> ServerHandle:
        settings = {**TEST_DEFAULTS, **overrides}
        cfg = config.from_mapping(_sections(settings), "test")
        handle = ServerHandle(cfg)
        handles.append(handle)
        return handle

    yield make
    for h in handles:
        if h.running:
            h.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerHandle]) -> ServerHandle:
    return make_server()


@pytest.fixture
def config_file(tmp_path: Path, short_tmp: Path) -> Callable[..., Path]:
    """Write a test config; each server gets its own admin socket unless told otherwise."""

    def make(**overrides: Any) -> Path:
        settings = {
            **TEST_DEFAULTS,
            "level": "info",
            "socket": str(short_tmp / "admin.sock"),
            **overrides,
        }
        return write_config(tmp_path / "chatsvc.toml", _sections(settings))

    return make


@pytest.fixture
def chatsvc_proc(config_file: Callable[..., Path]) -> Iterator[Callable[..., ServerProcess]]:
    """Start the real entry point with a temp config; returns it once it listens."""
    procs: list[ServerProcess] = []

    def start(*extra: str, **overrides: Any) -> ServerProcess:
        path = config_file(**overrides)
        proc = ServerProcess(["--config", str(path), *extra])
        procs.append(proc)
        proc.wait_started()
        return proc

    yield start
    for p in procs:
        p.kill()
