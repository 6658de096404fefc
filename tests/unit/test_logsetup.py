"""The logging hand-off: threads queue events, one thread renders and writes them.

Order per thread, nothing dropped when the queue is full, flush, fork, tracebacks
taken in the thread that logged, and escaped thread exceptions as JSON events.
"""

from __future__ import annotations

import _thread
import datetime
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from chatsvc import logsetup

Event = dict[str, Any]


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def parse(text: str) -> list[Event]:
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture
def tap() -> Iterator[io.StringIO]:
    """The module's loggers writing JSON into memory, stderr again afterwards."""
    buf = io.StringIO()
    logsetup.configure("info", "json", buf)
    try:
        yield buf
    finally:
        logsetup.configure("info", "auto", sys.stderr)


def written(buf: io.StringIO) -> list[Event]:
    assert logsetup.flush(), "the logging thread did not write in time"
    return parse(buf.getvalue())


class GatedStream(io.StringIO):
    """A stream whose writes wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write(self, s: str) -> int:
        self.writing.set()
        assert self.gate.wait(20), "gate never opened"
        return super().write(s)


# --- the hand-off --------------------------------------------------------------------


def test_events_of_each_thread_are_written_in_order_and_none_is_lost(tap: io.StringIO) -> None:
    threads, per_thread = 8, 400

    def produce(t: int) -> None:
        for seq in range(per_thread):
            logsetup.log.info("tick", t=t, seq=seq)

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(20)
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    for e in written(tap):
        assert list(e)[:3] == ["timestamp", "level", "event"]
        seen[e["t"]].append(e["seq"])
    assert seen == {t: list(range(per_thread)) for t in range(threads)}


def test_flush_returns_once_everything_logged_before_it_is_written(tap: io.StringIO) -> None:
    for i in range(1000):
        logsetup.log.info("burst", i=i)
    assert logsetup.flush()
    assert [e["i"] for e in parse(tap.getvalue())] == list(range(1000))


def test_timestamp_is_utc_with_microseconds_and_odd_values_are_their_repr(
    tap: io.StringIO,
) -> None:
    before = time.time()
    logsetup.log.warning("odd", value=object(), text="é\n", count=3, rooms=["lobby"])
    (event,) = written(tap)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    stamp = datetime.datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    logged = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    assert before - 1e-6 <= logged <= time.time()
    assert event["level"] == "warning"
    assert event["value"].startswith("<object object at ")
    assert (event["text"], event["count"], event["rooms"]) == ("é\n", 3, ["lobby"])


def test_a_disabled_level_costs_no_queueing() -> None:
    sink = logsetup.LogSink(io.StringIO())
    quiet = logsetup.build("warning", "json", sink)
    quiet.info("client_login", name="alice")
    quiet.debug("message", text="hi")
    assert sink.queued() == 0
    assert sink.flush()  # no thread was ever started for nothing


def test_a_full_queue_makes_the_logger_wait_and_drops_nothing() -> None:
    stream = GatedStream()
    sink = logsetup.LogSink(stream, max_events=8)
    logger = logsetup.build("info", "json", sink)
    done = threading.Event()

    def produce() -> None:
        for seq in range(50):
            logger.info("tick", seq=seq)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert stream.writing.wait(10)  # the logging thread is stuck in its first write
        wait_for(lambda: sink.queued() >= 8, what="a full queue")
        assert not done.is_set()  # the producer waits for room ...
        assert sink.queued() <= 8  # ... and the queue stays within its bound
    finally:
        stream.gate.set()
    producer.join(20)
    assert done.is_set()
    sink.stop()
    assert [e["seq"] for e in parse(stream.getvalue())] == list(range(50))


def test_configure_writes_earlier_events_to_the_old_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    try:
        logsetup.configure("info", "json", first)
        for i in range(200):
            logsetup.log.info("early", i=i)
        logsetup.configure("info", "json", second)
        logsetup.log.info("late")
        assert logsetup.flush()
    finally:
        logsetup.configure("info", "auto", sys.stderr)
    assert [e["i"] for e in parse(first.getvalue())] == list(range(200))
    assert [e["event"] for e in parse(second.getvalue())] == ["late"]


def test_lifecycle_events_are_written_at_warning_level(tap: io.StringIO) -> None:
    logsetup.configure("warning", "json")
    logsetup.log.info("client_login")
    logsetup.lifecycle.info("server_stopped", clients_at_stop=0)
    assert [e["event"] for e in written(tap)] == ["server_stopped"]


def test_events_queued_at_exit_are_written() -> None:
    code = (
        "from chatsvc import logsetup\n"
        "logsetup.configure('info', 'json')\n"
        "for i in range(3000):\n"
        "    logsetup.log.info('bye', i=i)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert [e["i"] for e in parse(proc.stderr)] == list(range(3000))


# --- fork -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_writes_each_event_once_and_the_child_logs_too(tmp_path: Path) -> None:
    path = tmp_path / "fork.log"
    try:
        stream = logsetup.open_file(str(path))
        for i in range(500):  # likely still queued when the fork comes
            logsetup.log.info("before_fork", i=i)
        pid = os.fork()
        if pid == 0:  # the child: log through a thread of its own, then leave at once
            status = 1
            try:
                logsetup.log.info("in_child", pid=os.getpid())
                status = 0 if logsetup.flush() else 2
            finally:
                os._exit(status)
        logsetup.log.info("after_fork")
        assert logsetup.flush()
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the forked child did not exit"
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        logsetup.configure("info", "auto", sys.stderr)
        stream.close()
    events = parse(path.read_text())
    assert [e["i"] for e in events if e["event"] == "before_fork"] == list(range(500))
    assert [e["pid"] for e in events if e["event"] == "in_child"] == [pid]
    assert [e["event"] for e in events].count("after_fork") == 1


# --- exceptions -----------------------------------------------------------------------


def test_log_exception_takes_the_traceback_in_the_calling_thread(tap: io.StringIO) -> None:
    def session() -> None:
        try:
            raise ValueError("boom in a session")
        except ValueError:
            logsetup.log.exception("session_error", name="alice")

    worker = threading.Thread(target=session)
    worker.start()
    worker.join(10)
    (event,) = written(tap)
    assert event["event"] == "session_error" and event["level"] == "error"
    assert event["name"] == "alice"
    assert event["exception"].startswith("Traceback (most recent call last):")
    assert "in session" in event["exception"]
    assert event["exception"].rstrip().endswith("ValueError: boom in a session")
    assert "exc_info" not in event


def boom() -> None:
    raise RuntimeError("escaped")


def test_an_escaped_thread_exception_is_one_json_event(tap: io.StringIO) -> None:
    old = threading.excepthook
    threading.excepthook = logsetup.log_thread_exception
    try:
        worker = threading.Thread(target=boom, name="worker-7")
        worker.start()
        worker.join(10)
    finally:
        threading.excepthook = old
    (event,) = written(tap)
    assert event["event"] == "thread_exception" and event["level"] == "error"
    assert event["thread"] == "worker-7"
    assert "in boom" in event["exception"]
    assert event["exception"].rstrip().endswith("RuntimeError: escaped")


def test_an_escaped_exception_of_a_bare_thread_is_one_json_event(tap: io.StringIO) -> None:
    old = sys.unraisablehook
    sys.unraisablehook = logsetup.log_unraisable
    try:
        _thread.start_new_thread(boom, ())  # as the server starts its reader threads
        found = wait_for(
            lambda: [e for e in written(tap) if e["event"] == "unraisable_exception"],
            what="the unraisable_exception event",
        )
    finally:
        sys.unraisablehook = old
    (event,) = found
    assert event["level"] == "error"
    # "Exception ignored in thread started by" names the function in the
    # object (up to Python 3.12) or in the message itself (3.13)
    assert "boom" in f"{event['message']} {event['object']}"
    assert event["exception"].rstrip().endswith("RuntimeError: escaped")


def test_the_server_installs_the_hooks_so_stderr_stays_json() -> None:
    code = (
        "import threading\n"
        "from chatsvc import logsetup\n"
        "logsetup.install_excepthooks()\n"
        "logsetup.configure('info', 'json')\n"
        "def boom():\n"
        "    raise KeyError('k')\n"
        "t = threading.Thread(target=boom, name='t1')\n"
        "t.start()\n"
        "t.join()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    (event,) = parse(proc.stderr)  # every line is JSON: no bare traceback
    assert event["event"] == "thread_exception" and event["thread"] == "t1"
    assert "KeyError: 'k'" in event["exception"]


# --- --log-file means JSON ------------------------------------------------------------


def test_log_file_stays_json_when_a_reload_asks_for_console() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chatsvc.log"
        stream = logsetup.open_file(str(path))
        try:
            logsetup.configure("info", "console")  # what server.reload calls on SIGHUP
            logsetup.log.info("config_reloaded", source="chatsvc.toml")
            logsetup.configure("debug", "auto")
            logsetup.log.debug("message", room="lobby")
            assert logsetup.flush()
        finally:
            logsetup.configure("info", "auto", sys.stderr)
            stream.close()
        events = parse(path.read_text())
    assert [e["event"] for e in events] == ["config_reloaded", "message"]


def test_console_format_keeps_the_traceback() -> None:
    buf = io.StringIO()
    try:
        logsetup.configure("info", "console", buf)
        try:
            raise OSError("disk on fire")
        except OSError:
            logsetup.log.exception("session_error", name="bob")
        assert logsetup.flush()
    finally:
        logsetup.configure("info", "auto", sys.stderr)
    head, *rest = buf.getvalue().splitlines()
    assert " error   session_error name=bob" in head
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "OSError: disk on fire"
