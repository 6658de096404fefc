"""A pytest plugin for tests/irctest/run.sh --jobs: keep every SHARDS-th test, from SHARD.

Deterministic (by position in the collected order), so N processes with
SHARD=0..N-1 run each test exactly once.  It also restores SIGINT, which a
shell ignores in background jobs: run.sh forwards an interrupt to its shards,
and pytest then ends as on Ctrl-C (stopping the servers at exit).
"""

from __future__ import annotations

import os
import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shards = int(os.environ.get("SHARDS", "1"))
    shard = int(os.environ.get("SHARD", "0"))
    if shards > 1:
        kept = [item for i, item in enumerate(items) if i % shards == shard]
        deselected = [item for i, item in enumerate(items) if i % shards != shard]
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
