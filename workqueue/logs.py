"""Logging setup: structlog, one line per event, JSON for machines or console for people.

Only the entry scripts call configure_logging. Below the configured level a log call returns at
once, so a quiet worker spends nothing formatting INFO events. At INFO a worker writes a line
per message, so the JSON path is structlog's documented fast one, made leaner where measurement
showed it paid: a filtering bound logger written as one static class per level
(bound_logger.py), one processor (level, timestamp, a traceback when there is one, orjson rendering), and bytes
to a buffer of our own on stderr. A worker's message_processed lines wait in that buffer
(info_held) until the next line written or until the worker sends outcomes to Redis
(write_held_lines): a flush per line was a large part of the line's cost, and a message that Redis
counts as processed still has its line written.
"""

from __future__ import annotations

import io
import json
import logging
import select
import sys
import time
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from .bound_logger import FILTERING_LOGGERS

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _std_dumps(event: EventDict) -> bytes:
    """A line from the standard library, for what orjson refuses (a lone surrogate in an error
    text, an integer beyond 64 bits), so that no event is ever lost to its own content."""
    return json.dumps(event, default=repr).encode() + b"\n"


_DIGITS3 = [f"{n:03d}" for n in range(1000)]


def printable(text: str) -> str:
    """`text` safe to show on a terminal: every character that is not printable (escape and
    other control characters, C1 controls, direction overrides, lone surrogates) written as its
    Python escape, so text from Redis can neither move the cursor, retitle the window, write the
    clipboard, nor hide what follows it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", errors="backslashreplace").decode() for c in text)


def _printable_values(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    """The console renderer's guard: every text value made printable (JSON lines escape it)."""
    return {key: printable(value) if isinstance(value, str) else value for key, value in event.items()}


class IsoTimestamp:
    """`timestamp` as ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso",
    utc=True) writes it, with everything up to the millisecond cached (a worker at INFO writes
    many lines a millisecond; datetime formatting per event costs more than the rest of the
    line). The cache is one tuple, swapped whole: thread-safe."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def now(self) -> str:
        millisecond, micros = divmod(time.time_ns() // 1000, 1000)
        cached = self._cached
        if cached[0] != millisecond:
            second, milli = divmod(millisecond, 1000)
            cached = self._cached = (millisecond, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)) + _DIGITS3[milli])
        return cached[1] + _DIGITS3[micros] + "Z"  # the digits cached: an f-string's "03d" costs more

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        event["timestamp"] = self.now()
        return event


class JsonLine:
    """The JSON path's one processor: structlog's add_log_level, IsoTimestamp, format_exc_info
    (only for an event that carries exc_info) and JSONRenderer with orjson, in one call; the
    line comes with its newline (orjson appends it as it writes). The level is the method's
    name: FilteringLogger calls processors with a level's own name (never "warn" or "exception")."""

    def __init__(self) -> None:
        self._timestamp = IsoTimestamp()

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> bytes:
        event["level"] = name
        event["timestamp"] = self._timestamp.now()
        if "exc_info" in event:
            event = structlog.processors.format_exc_info(logger, name, event)
        try:
            return orjson.dumps(event, default=repr, option=orjson.OPT_APPEND_NEWLINE)  # repr: as JSONRenderer
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            return _std_dumps(event)


def _dropped_line(count: int) -> bytes:
    """The line that says `count` lines could not be written (the sink failed)."""
    return orjson.dumps({"event": "log_lines_dropped", "count": count, "level": "warning", "timestamp": IsoTimestamp().now()},
                        option=orjson.OPT_APPEND_NEWLINE)


class LineWriter:
    """A structlog logger writing each rendered line (bytes) whole to a binary file and flushing
    it: BytesLogger without its lock, which a buffered file's own lock makes redundant. A line
    given to hold() waits in the buffer until the next line written by any thread, a full
    buffer or write_held_lines().

    A sink that fails (a reader gone: EPIPE) never stops the work: the lines that could not be
    written are counted and dropped with the buffer, and the next line written at once that
    gets through is preceded by `log_lines_dropped` with their count."""

    def __init__(self, open_file: Any) -> None:
        """`open_file()` gives a fresh buffered binary file on the sink (after a failure too)."""
        self._open = open_file
        self._write, self._flush = self._fresh()
        self._unflushed = 0  # lines written since the last flush that went through
        self.dropped = 0

    def _fresh(self) -> tuple[Any, Any]:
        file = self._open()
        return file.write, file.flush

    def msg(self, line: bytes) -> None:
        dropped = self.dropped
        try:
            if dropped:
                self._write(_dropped_line(dropped))
            self._write(line)  # JsonLine ends it with a newline
            self._flush()
        except OSError:
            self._failed(1)
            return
        self._unflushed = 0
        self.dropped -= dropped

    def hold(self, line: bytes) -> None:
        try:
            self._write(line)
        except OSError:
            self._failed(1)
            return
        self._unflushed += 1

    def flush(self) -> None:
        try:
            self._flush()
        except OSError:
            self._failed(0)
            return
        self._unflushed = 0

    def _failed(self, lines: int) -> None:
        """Count what the buffer held and `lines` more as dropped; start again on a fresh buffer."""
        self.dropped += self._unflushed + lines
        self._unflushed = 0
        try:
            self._write, self._flush = self._fresh()
        except OSError:  # the descriptor itself is gone: keep the old buffer, and its errors
            pass

    log = debug = info = warn = warning = err = error = critical = exception = failure = fatal = msg


_writer: LineWriter | None = None  # configure_logging's, when it writes JSON lines to stderr


def write_held_lines() -> None:
    """Write the lines that info_held() left waiting (none unless configure_logging writes JSON
    lines). A worker calls it when a batch ends and before it sends outcomes mid-batch, so no
    message is settled before its line is written."""
    if _writer is not None:
        _writer.flush()


def _stderr_file() -> BinaryIO | None:
    """A buffered binary file of our own on stderr's descriptor (never closing it), or None
    when stderr has none (a StringIO put in its place). Our own, because with PYTHONUNBUFFERED
    (as our Dockerfile sets) sys.stderr's binary layer is unbuffered: every write a system
    call, and no line could be held. Its buffer is PIPE_BUF bytes and it writes whole lines, so
    each write reaches a pipe whole: lines of processes sharing one never interleave."""
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return None
    return io.BufferedWriter(io.FileIO(descriptor, "wb", closefd=False), buffer_size=select.PIPE_BUF)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send structured events to stderr at `level` and above, rendered as `fmt`."""
    global _writer
    processors: list[Any] = [structlog.processors.add_log_level, IsoTimestamp(), structlog.processors.format_exc_info]
    factory: Any = structlog.WriteLoggerFactory(file=sys.stderr)
    _writer = None
    if fmt == "json" and _stderr_file() is not None:
        writer = _writer = LineWriter(_stderr_file)
        processors, factory = [JsonLine()], lambda *args: writer  # structlog asks its factory for each logger
    elif fmt == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors += [_printable_values, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=FILTERING_LOGGERS[LEVELS[level]],
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
