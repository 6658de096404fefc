"""structlog configuration: one JSON object per line, or a console format on a TTY.

Every module logs through the module attribute ``log`` (``logsetup.log.info(...)``)
so that ``configure`` -- called at start and again on reload -- takes effect
everywhere at once without a lookup per call.  Event names are stable; the list
is in docs/logging.md.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _console(_: WrappedLogger, __: str, event: EventDict) -> str:
    """``2026-01-01T00:00:00Z info  server_started: Server started on ... port=6321``."""
    ts = event.pop("timestamp", "")
    level = event.pop("level", "")
    name = event.pop("event", "")
    message = event.pop("message", None)
    head = f"{ts} {level:<7} {name}"
    if message:
        head += f": {message}"
    tail = " ".join(f"{k}={v}" for k, v in event.items())
    return f"{head} {tail}" if tail else head


def _order(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """timestamp, level, event first: easier to read in ``journalctl -o cat``."""
    head = {k: event.pop(k) for k in ("timestamp", "level", "event") if k in event}
    head.update(event)
    return head


def _build(level: str, fmt: str, stream: IO[str]) -> FilteringBoundLogger:
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [_order, structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors.append(_console)
    logger: FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(cast(TextIO, stream)),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    )
    return logger


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


log: FilteringBoundLogger = _build("info", "auto", sys.stderr)
# Start, stop and reload are rare and say what state the service is in: they are
# logged at info whatever the configured level.
lifecycle: FilteringBoundLogger = log
_stream: IO[str] = sys.stderr


def configure(level: str = "info", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """(Re)build the logger; ``stream`` defaults to the one used last (stderr at first)."""
    global log, lifecycle, _stream
    if stream is not None:
        _stream = stream
    log = _build(level, fmt, _stream)
    lifecycle = log if level in ("debug", "info") else _build("info", fmt, _stream)
