"""Logging setup: structlog, one line per event, JSON for machines or console for people.

Only the entry scripts call configure_logging. Below the configured level a log call returns at
once, so a quiet worker spends nothing formatting INFO events. At INFO a worker writes a line
per message, so the JSON path is structlog's documented fast one, made leaner where measurement
showed it paid: a filtering bound logger written as one static class (FilteringLogger), one
processor (level, timestamp, a traceback when there is one, orjson rendering), and bytes
to a buffer of our own on stderr. A worker's message_processed lines wait in that buffer
(info_held) until the next line written or until the worker sends outcomes to Redis
(write_held_lines): a flush per line was a third of the line's cost, and a message that Redis
counts as processed still has its line written.
"""

from __future__ import annotations

import io
import json
import logging
import select
import sys
import time
from typing import Any, BinaryIO, ClassVar

import orjson
import structlog
from structlog.exceptions import DropEvent
from structlog.typing import EventDict, WrappedLogger

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _std_dumps(event: EventDict) -> bytes:
    """A line from the standard library, for what orjson refuses (a lone surrogate in an error
    text, an integer beyond 64 bits), so that no event is ever lost to its own content."""
    return json.dumps(event, default=repr).encode() + b"\n"


_DIGITS3 = [f"{n:03d}" for n in range(1000)]


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


DEBUG, INFO, WARNING, ERROR, CRITICAL = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL
_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error", CRITICAL: "critical"}


class FilteringLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, as static classes that do less per call.

    This one writes every level; each subclass below drops the levels under its own, whose
    methods then return at once, as in make_filtering_bound_logger's classes (which structlog
    makes at run time). A call that writes passes the bound context, the keywords and the event
    through the processors and the line to the logger in one frame; structlog's methods pack
    the keywords three times over three calls, then check what the last processor returned,
    which was a third of an INFO line's cost (a worker at INFO writes a line per message).
    Custom wrapper classes are a documented structlog extension point; a processor may still
    drop an event (DropEvent), as structlog.testing.capture_logs does. Not provided: the async
    methods and %-style positional arguments, which workqueue does not use."""

    min_level: ClassVar[int] = DEBUG

    def _line(self, name: str, event: str, kw: dict[str, Any]) -> Any:
        """The event as the processors render it (for configure_logging's chains, a line), or
        None when one of them dropped it."""
        event_dict: Any = self._context.copy()
        event_dict.update(kw)
        event_dict["event"] = event
        try:
            for processor in self._processors:
                event_dict = processor(self._logger, name, event_dict)
        except DropEvent:
            return None
        return event_dict

    def _write(self, name: str, event: str, kw: dict[str, Any]) -> None:
        if (line := self._line(name, event, kw)) is not None:
            getattr(self._logger, name)(line)

    def info(self, event: str, **kw: Any) -> None:
        """Written out, not through _write(): the level most lines are written at."""
        if (line := self._line("info", event, kw)) is not None:
            self._logger.info(line)

    msg = info

    def info_held(self, event: str, **kw: Any) -> None:
        """info(), whose line may wait in stderr's buffer until write_held_lines() or the next
        line written: a worker's line per message, which a flush each would make a third
        dearer. With a logger that cannot hold a line (other formats), it is written at once."""
        if (line := self._line("info", event, kw)) is not None:
            try:  # not getattr with a default, which would be built on every call
                hold = self._logger.hold
            except AttributeError:
                hold = self._logger.info
            hold(line)

    def debug(self, event: str, **kw: Any) -> None:
        self._write("debug", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._write("warning", event, kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        self._write("error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        """An error with the traceback being handled, as structlog's exception()."""
        kw.setdefault("exc_info", True)
        self._write("error", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._write("critical", event, kw)

    fatal = critical

    def log(self, level: int, event: str, **kw: Any) -> None:
        if level >= self.min_level:
            self._write(_NAMES[level], event, kw)

    def is_enabled_for(self, level: int) -> bool:
        return level >= self.min_level

    def get_effective_level(self) -> int:
        return self.min_level


def _below_level(self: Any, event: str, **kw: Any) -> None:
    """A call below the configured level: nothing to do."""


class FilteringFromInfo(FilteringLogger):
    min_level = INFO
    debug = _below_level


class FilteringFromWarning(FilteringFromInfo):
    min_level = WARNING
    info = msg = info_held = _below_level


class FilteringFromError(FilteringFromWarning):
    min_level = ERROR
    warning = warn = _below_level


FILTERING_LOGGERS: dict[int, type[FilteringLogger]] = {
    DEBUG: FilteringLogger, INFO: FilteringFromInfo, WARNING: FilteringFromWarning, ERROR: FilteringFromError,
}


class LineWriter:
    """A structlog logger writing each rendered line (bytes) whole to a binary file and flushing
    it: BytesLogger without its lock, which a buffered file's own lock makes redundant. A line
    given to hold() waits in the buffer until the next line written by any thread, a full
    buffer or write_held_lines()."""

    def __init__(self, file: Any) -> None:
        self._write, self._flush = file.write, file.flush

    def msg(self, line: bytes) -> None:
        self._write(line)  # JsonLine ends it with a newline
        self._flush()

    def hold(self, line: bytes) -> None:
        self._write(line)

    def flush(self) -> None:
        self._flush()

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
    if fmt == "json" and (binary := _stderr_file()) is not None:
        writer = _writer = LineWriter(binary)
        processors, factory = [JsonLine()], lambda *args: writer  # structlog asks its factory for each logger
    elif fmt == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=FILTERING_LOGGERS[LEVELS[level]],
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
