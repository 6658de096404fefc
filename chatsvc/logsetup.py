"""Structured logging: one JSON object per line, or a console format on a TTY.

Every module logs through the module attribute ``log`` (``logsetup.log.info(...)``)
so that ``configure`` -- called at start and again on reload -- takes effect
everywhere at once without a lookup per call.  Event names are stable; the list
is in docs/logging.md.

The calls are structlog's (``log.info("client_login", name=...)``,
``log.exception(...)``); the wrapper class is our own, as structlog's
performance notes suggest, and structlog renders tracebacks.

Who does what.  The thread that logs only filters (a call below the level
returns at once), takes the time, renders a traceback if there is one
(``exc_info`` means *this* thread's exception) and appends the event to one
bounded FIFO queue.  One thread, ``chatsvc-log``, takes what is queued,
renders it, writes it with one ``write`` per batch and then lingers
(``LINGER``) so that the next batch is larger.  When 10,000 reader threads
rendered and wrote their own lines, under a lock, a login at info cost ~1.6
times the CPU of one at warning and 4 KB more RSS: see bench/README.md.

- Order: one queue, so events of one thread are written in the order logged.
- Bound: ``QUEUE_EVENTS`` events; a thread that logs into a full queue waits
  for room (events are never dropped).
- Loss: ``flush()`` runs at interpreter exit and before every ``fork``; a
  SIGKILL or ``os._exit`` loses what was queued -- at most ``QUEUE_EVENTS``
  events plus the batch being written (``BATCH_EVENTS``).
- Fork: the logging thread is stopped before ``os.fork`` (python-daemon forks
  twice) and started again lazily by the next event, in parent and child.
- Values are rendered later, on the logging thread: pass values that are not
  changed afterwards (strings, numbers, fresh lists), as every caller does.

A stream opened with ``open_file`` (``--log-file``) is always written as JSON,
whatever ``format`` a later ``configure`` (a reload) asks for.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
import time
from typing import IO, Any, Callable, Optional, Union

import structlog
from structlog.typing import EventDict

from chatsvc.wakeup import block_process_signals

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# 4,096 events of a few hundred bytes: ~1-2 MB at worst, and a second of
# logins at the highest rate measured (idle N=10,000) before anyone waits.
QUEUE_EVENTS = 4096
BATCH_EVENTS = 256  # rendered and written with one write()
# After a batch that was not full the logging thread waits this long before the
# next: fewer, larger batches wake it (and move the GIL to it) less often.
LINGER = 0.01
FLUSH_TIMEOUT = 5.0  # flush() gives up after this (a stream that blocks for good)

Render = Callable[[str, str, EventDict], str]
# (render, level, timestamp, event dict): what a logging thread hands over.
Record = tuple[Render, str, float, EventDict]


_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _iso(ts: float) -> str:
    """``2026-01-01T00:00:00.123456Z`` (UTC); the part up to the second is formatted once."""
    global _second
    sec = int(ts)
    cached, prefix = _second
    if sec != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second = (sec, prefix)
    return f"{prefix}.{int((ts - sec) * 1e6):06d}Z"


def _fallback(obj: Any) -> Any:
    """What ``json`` cannot encode is logged as its repr (structlog's JSONRenderer does so)."""
    structlog_repr = getattr(obj, "__structlog__", None)
    return structlog_repr() if callable(structlog_repr) else repr(obj)


_encode = json.JSONEncoder(default=_fallback).encode


def render_json(ts: str, level: str, event: EventDict) -> str:
    """timestamp, level, event first: easier to read in ``journalctl -o cat``."""
    name = event.pop("event", None)
    event.pop("timestamp", None)
    event.pop("level", None)
    head = f'{{"timestamp": "{ts}", "level": "{level}", "event": {_encode(name)}'
    return f"{head}, {_encode(event)[1:]}" if event else head + "}"


def render_console(ts: str, level: str, event: EventDict) -> str:
    """``2026-01-01T00:00:00Z info    server_started: Server started on ... port=6321``."""
    name = event.pop("event", "")
    message = event.pop("message", None)
    exception = event.pop("exception", None)
    head = f"{ts} {level:<7} {name}"
    if message:
        head += f": {message}"
    tail = " ".join(f"{k}={v}" for k, v in event.items())
    line = f"{head} {tail}" if tail else head
    return f"{line}\n{exception.rstrip()}" if exception else line


class _Marker:
    """Queued by ``flush``/``stop``: set once everything queued before it is written."""

    def __init__(self, stop: bool = False) -> None:
        self.done = threading.Event()
        self.stop = stop


class LogSink:
    """The bounded queue and the one thread that renders and writes.

    ``submit`` is called by any thread; everything else in here runs on the
    logging thread, except ``flush``, ``set_stream`` and the fork hooks, which
    wait for it.
    """

    def __init__(self, stream: IO[str], max_events: int = QUEUE_EVENTS) -> None:
        self.stream = stream
        self.max_events = max_events
        self._reset()

    def _reset(self) -> None:
        """Fresh queue, locks and no thread: at construction and in a forked child."""
        self._queue: queue.SimpleQueue[Union[Record, _Marker]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._room = threading.Condition(threading.Lock())
        self._waiting = 0  # producers waiting for room, guarded by _room

    # --- any thread --------------------------------------------------------------

    def submit(self, record: Union[Record, _Marker]) -> None:
        q = self._queue
        if q.qsize() >= self.max_events:
            self._wait_for_room()
        q.put(record)
        if self._thread is None:
            self._start()

    def queued(self) -> int:
        """Events (and markers) waiting for the logging thread."""
        return self._queue.qsize()

    def _wait_for_room(self) -> None:
        if threading.current_thread() is self._thread:
            return  # never wait for ourselves
        if self._thread is None:
            self._start()
        with self._room:
            self._waiting += 1
            try:
                while self._queue.qsize() >= self.max_events:
                    # the timeout only guards against a missed notify
                    self._room.wait(0.5)
            finally:
                self._waiting -= 1

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="chatsvc-log", daemon=True)
                self._thread = thread
                thread.start()

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until everything logged before this call is written; False on timeout."""
        if self._thread is None and self._queue.empty():
            return True
        if threading.current_thread() is self._thread:
            return False
        marker = _Marker()
        self.submit(marker)
        return marker.done.wait(timeout)

    def set_stream(self, stream: IO[str]) -> None:
        """Events logged so far go to the old stream, later ones to ``stream``."""
        self.flush()
        self.stream = stream

    # --- fork: no thread may be running across it -------------------------------

    def stop(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write what is queued and end the thread; the next event starts another."""
        thread = self._thread
        if thread is None or threading.current_thread() is thread:
            return
        marker = _Marker(stop=True)
        self.submit(marker)
        if marker.done.wait(timeout):
            thread.join(timeout)

    def before_fork(self) -> None:
        self.stop()

    def after_fork_in_parent(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        if self._thread is None and not self._queue.empty():
            self._start()  # a thread logged between the stop and the fork

    def after_fork_in_child(self) -> None:
        # What is still queued belongs to the parent, which writes it.
        self._reset()

    # --- the logging thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            block_process_signals()  # the main thread's to handle
            self._loop()
        finally:
            self._thread = None  # the next event starts another ...
            if not self._queue.empty():
                self._start()  # ... or one queued while this one was ending

    def _loop(self) -> None:
        q = self._queue
        while True:
            batch = [q.get()]
            for _ in range(min(q.qsize(), BATCH_EVENTS - 1)):
                batch.append(q.get_nowait())
            lines: list[str] = []
            stopping = False
            for item in batch:
                if isinstance(item, _Marker):
                    self._write(lines)
                    lines = []
                    item.done.set()
                    stopping = stopping or item.stop
                else:
                    lines.append(self._render(item))
            self._write(lines)
            if self._waiting:
                with self._room:
                    self._room.notify_all()
            if stopping:
                return
            if len(batch) < BATCH_EVENTS:
                time.sleep(LINGER)

    @staticmethod
    def _render(record: Record) -> str:
        render, level, ts, event = record
        try:
            return render(_iso(ts), level, event) + "\n"
        except Exception as exc:  # a value whose repr raised: still say what happened
            return (
                _encode(
                    {
                        "timestamp": _iso(ts),
                        "level": level,
                        "event": str(event.get("event")),
                        "render_error": repr(exc),
                    }
                )
                + "\n"
            )

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log stream: nobody left to tell


class Logger:
    """What ``log`` and ``lifecycle`` are: ``debug`` ... ``exception``, as structlog's.

    A wrapper class of our own, as structlog's performance notes suggest: a
    call below the level returns at once, any other builds one tuple and
    queues it.  structlog's bound logger and processor chain cost ~9 of the
    ~10 us a call took on the calling thread (see bench/README.md).
    """

    __slots__ = ("_min", "_render", "_submit")

    def __init__(self, level: str, render: Render, sink: LogSink) -> None:
        self._min = _LEVELS[level]
        self._render = render
        self._submit = sink.submit

    def debug(self, event: str, **kw: Any) -> None:
        if self._min <= logging.DEBUG:
            self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        if self._min <= logging.INFO:
            self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        if self._min <= logging.WARNING:
            self._emit("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        if self._min <= logging.ERROR:
            self._emit("error", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._emit("critical", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        """``error`` with the traceback of the exception being handled."""
        if self._min <= logging.ERROR:
            kw.setdefault("exc_info", True)
            self._emit("error", event, kw)

    def _emit(self, level: str, event: str, kw: EventDict) -> None:
        kw["event"] = event
        if "exc_info" in kw:  # this thread's exception: render it here, now
            kw = _format_exc_info(None, level, kw)
        self._submit((self._render, level, time.time(), kw))


_format_exc_info = structlog.processors.format_exc_info


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def build(level: str, fmt: str, sink: LogSink, to_file: bool = False) -> Logger:
    """A logger for ``level`` that hands its events to ``sink``."""
    use_json = to_file or fmt == "json" or (fmt == "auto" and not _isatty(sink.stream))
    return Logger(level, render_json if use_json else render_console, sink)


_sink = LogSink(sys.stderr)
_to_file = False  # the stream came from open_file: JSON whatever the format
_settings = ("info", "auto")
log: Logger = build("info", "auto", _sink)
# Start, stop and reload are rare and say what state the service is in: they are
# logged at info whatever the configured level.
lifecycle: Logger = log


def configure(level: str = "info", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """(Re)build the loggers; ``stream`` defaults to the one used last (stderr at first).

    Events logged before the call are written with the old settings.
    """
    global log, lifecycle, _to_file, _settings
    if stream is not None:
        _sink.set_stream(stream)
        _to_file = False
    else:
        _sink.flush()
    _settings = (level, fmt)
    log = build(level, fmt, _sink, _to_file)
    lifecycle = log if level in ("debug", "info") else build("info", fmt, _sink, _to_file)


def open_file(path: str) -> IO[str]:
    """Log to ``path`` (appending) from now on, always as JSON; raises OSError."""
    global _to_file
    stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    _sink.set_stream(stream)
    _to_file = True
    configure(*_settings)
    return stream


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Wait until every event logged so far is written (False if that took too long)."""
    return _sink.flush(timeout)


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: an exception that ended a thread, as one JSON event."""
    if args.exc_type is SystemExit:
        return  # as the default hook: a thread that exits says nothing
    thread = args.thread.name if args.thread is not None else None
    log.error(
        "thread_exception",
        thread=thread,
        exc_info=args.exc_value if args.exc_value is not None else True,
    )


def log_unraisable(args: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook``: also what a bare ``_thread`` thread's exception reaches."""
    log.error(
        "unraisable_exception",
        message=args.err_msg or "Exception ignored in",
        object=repr(args.object) if args.object is not None else None,
        exc_info=args.exc_value if args.exc_value is not None else True,
    )


def install_excepthooks() -> None:
    """Route escaped thread (and unraisable) exceptions through the log, as JSON."""
    threading.excepthook = log_thread_exception
    sys.unraisablehook = log_unraisable


atexit.register(flush)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_sink.before_fork,
        after_in_parent=_sink.after_fork_in_parent,
        after_in_child=_sink.after_fork_in_child,
    )
