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
import os
import select
import stat
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
            line = orjson.dumps(event, default=repr, option=orjson.OPT_APPEND_NEWLINE)  # repr: as JSONRenderer
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            line = _std_dumps(event)
        return line if len(line) <= ATOMIC else fitted(event)


# What one write to a pipe carries whole: lines up to this long (newline included) from processes
# sharing a pipe never interleave. A longer line is cut to fit (fitted()).
ATOMIC = select.PIPE_BUF


def fitted(event: EventDict) -> bytes:
    """A line of `event` that fits in ATOMIC bytes: its text values (other values as their JSON
    text) cut shorter and shorter, each to its head and tail (a traceback's end says most), and
    `cut` true; at worst only its event, level and timestamp."""
    for keep in (1024, 256, 64, 16):
        shorter: dict[str, Any] = {}
        for key, value in event.items():
            if value is not None and not isinstance(value, (str, int, float, bool)):
                value = _std_dumps({"": value})[6:-2].decode()  # {"": v}\n -> v, as JSON text
            if isinstance(value, str) and len(value) > keep:
                value = value[: keep // 2] + " … " + value[-(keep // 2):]
            shorter[key] = value
        shorter["cut"] = True
        line = _std_dumps(shorter)
        if len(line) <= ATOMIC:
            return line
    return _std_dumps({"event": str(event.get("event"))[:100], "level": event.get("level"), "timestamp": event.get("timestamp"), "cut": True})


def _dropped_line(count: int) -> bytes:
    """The line that says `count` lines could not be written (the sink failed)."""
    return orjson.dumps({"event": "log_lines_dropped", "count": count, "level": "warning", "timestamp": IsoTimestamp().now()},
                        option=orjson.OPT_APPEND_NEWLINE)


class PipeSink(io.RawIOBase):
    """Stderr's descriptor as the writer's sink, written so that a reader that stops reading
    never stops us: what it cannot take within PATIENCE seconds (none, once it failed to, until
    it takes something again) is dropped and counted in `dropped`, lines of it. On a pipe the
    writes go through a descriptor of our own opened without blocking (other processes sharing
    the pipe keep theirs as they were); on anything else a write waits for poll() to say it
    can be taken. Writes of whole lines up to ATOMIC bytes: each reaches a pipe whole or not at all."""

    PATIENCE = 0.1

    def __init__(self, descriptor: int) -> None:
        super().__init__()
        self.dropped = 0
        self._descriptor = descriptor
        if stat.S_ISFIFO(os.fstat(descriptor).st_mode):
            try:  # a new open file description of the same pipe (Linux): O_NONBLOCK is ours alone
                self._descriptor = os.open(f"/proc/self/fd/{descriptor}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                pass
        self._poll = select.poll()
        self._poll.register(self._descriptor, select.POLLOUT)
        self._patient = True

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        size, done = len(view), 0
        for _ in range(8):  # a write taken in part (not on a pipe, for lines up to ATOMIC) goes on
            try:
                if not self._poll.poll(self.PATIENCE * 1000 if self._patient else 0):
                    break
                done += os.write(self._descriptor, view[done:])
            except BlockingIOError:  # another writer filled the pipe since poll() said it had room
                continue
            except OSError:  # the reader went away (EPIPE), the device failed: drop
                break
            if done >= size:
                self._patient = True
                return size
        self._patient = False
        self.dropped += bytes(view[done:]).count(b"\n")
        return size  # as if written: the buffer must not keep what the sink will not take


class LineWriter:
    """A structlog logger writing each rendered line (bytes) whole to a binary file and flushing
    it: BytesLogger without its lock, which a buffered file's own lock makes redundant. A line
    given to hold() waits in the buffer until the next line written by any thread, a full
    buffer or write_held_lines().

    A sink that fails (a reader gone: EPIPE) never stops the work: the lines that could not be
    written are counted and dropped with the buffer, and the next line written at once that
    gets through is preceded by `log_lines_dropped` with their count."""

    def __init__(self, open_file: Any) -> None:
        """`open_file()` gives a fresh buffered binary file on the sink (after a failure too);
        over a PipeSink, the lines it dropped are reported as well."""
        self._open = open_file
        self._sink: Any = None
        self._write, self._flush = self._fresh()
        self._unflushed = 0  # lines written since the last flush that went through
        self.dropped = 0

    def _fresh(self) -> tuple[Any, Any]:
        file = self._open()
        sink = getattr(file, "raw", None)
        self._sink = sink if isinstance(sink, PipeSink) else _NO_SINK
        return file.write, file.flush

    def msg(self, line: bytes) -> None:
        sink = self._sink
        sink_dropped = sink.dropped
        dropped = self.dropped + sink_dropped
        try:
            if dropped:
                self._write(_dropped_line(dropped))
            self._write(line)  # JsonLine ends it with a newline
            self._flush()
        except OSError:
            self._failed(1)
            return
        self._unflushed = 0
        if dropped and sink.dropped == sink_dropped:  # the report went through
            self.dropped -= dropped - sink_dropped
            sink.dropped -= sink_dropped

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


class _NoSink:
    dropped = 0


_NO_SINK = _NoSink()  # a file that is no PipeSink's: it never drops lines itself
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
    call, and no line could be held. Its buffer is ATOMIC bytes and it writes whole lines of at
    most that, so each write reaches a pipe whole: lines of processes sharing one never
    interleave. Its sink (PipeSink) drops what a stalled reader does not take."""
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return None
    return io.BufferedWriter(PipeSink(descriptor), buffer_size=ATOMIC)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send structured events to stderr at `level` and above, rendered as `fmt`."""
    global _writer
    processors: list[Any] = [structlog.processors.add_log_level, IsoTimestamp(), structlog.processors.format_exc_info]
    factory: Any = structlog.WriteLoggerFactory(file=sys.stderr)
    _writer = None
    stderr_file = _stderr_file() if fmt == "json" else None
    if stderr_file is not None:
        writer = _writer = LineWriter(lambda: stderr_file)  # its sink never fails: never opened again
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
