"""Logging setup: structlog, one line per event, JSON for machines or console for people.

Only the entry scripts call configure_logging. Below the configured level a log call is a no-op
(make_filtering_bound_logger), so a quiet worker spends nothing formatting INFO events. At INFO
a worker writes a line per message, so the JSON path is structlog's documented fast one: bytes
straight to stderr's buffer, orjson as the serializer, and a timestamp whose formatted second is
cached (per-event datetime formatting is the next biggest cost). One processor does all of it
(level, timestamp, a traceback when there is one, rendering): every further processor costs a
call per event, and the message_processed line is the hot path of an INFO worker.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _dumps(event: EventDict, default: Callable[[Any], Any] | None = None) -> bytes:
    """One line: orjson, or the standard library for what orjson refuses (a lone surrogate in an
    error text, an integer beyond 64 bits), so that no event is ever lost to its own content."""
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(event, default=default).encode() + b"\n"


_DIGITS3 = [f"{n:03d}" for n in range(1000)]


class IsoTimestamp:
    """`timestamp` as ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso",
    utc=True) writes it, with the formatted second cached (datetime formatting per event costs
    more than the rest of the line). The cache is one tuple, swapped whole: thread-safe."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        micros = time.time_ns() // 1000
        second = micros // 1_000_000
        cached = self._cached
        if cached[0] != second:
            cached = self._cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
        fraction = micros - second * 1_000_000
        # Joined from cached three-digit strings: an f-string's "06d" costs twice as much, per line.
        event["timestamp"] = "".join((cached[1], _DIGITS3[fraction // 1000], _DIGITS3[fraction % 1000], "Z"))
        return event


class JsonLine:
    """The JSON path's one processor: structlog's add_log_level, IsoTimestamp, format_exc_info
    (only for an event that carries exc_info) and JSONRenderer with orjson, in one call; the
    line comes with its newline (orjson appends it as it writes)."""

    def __init__(self) -> None:
        self._timestamp = IsoTimestamp()
        self._level = {"exception": "error", "warn": "warning"}  # method name -> level, as add_log_level

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> bytes:
        event["level"] = self._level.get(name, name)
        self._timestamp(logger, name, event)
        if "exc_info" in event:
            event = structlog.processors.format_exc_info(logger, name, event)
        return _dumps(event)


class LineWriter:
    """A structlog logger writing each rendered line (bytes) whole to a binary file and flushing
    it: BytesLogger without its lock, which a buffered file's own lock makes redundant."""

    def __init__(self, file: Any) -> None:
        self._write, self._flush = file.write, file.flush

    def msg(self, line: bytes) -> None:
        self._write(line)  # JsonLine ends it with a newline
        self._flush()

    log = debug = info = warn = warning = err = error = critical = exception = failure = fatal = msg


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send structured events to stderr at `level` and above, rendered as `fmt`."""
    binary = getattr(sys.stderr, "buffer", None)  # a StringIO put in its place (embedding) has none
    processors: list[Any] = [structlog.processors.add_log_level, IsoTimestamp(), structlog.processors.format_exc_info]
    factory: Any = structlog.WriteLoggerFactory(file=sys.stderr)
    if fmt == "json" and binary is not None:
        writer = LineWriter(binary)
        processors, factory = [JsonLine()], lambda *args: writer  # structlog asks its factory for each logger
    elif fmt == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )

