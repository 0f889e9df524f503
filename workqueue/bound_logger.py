"""structlog's filtering bound logger, as static classes: one per level, each a plain return
for the levels below its own, as make_filtering_bound_logger's (which structlog makes at run
time). configure_logging picks one (FILTERING_LOGGERS)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import structlog
from structlog.exceptions import DropEvent

DEBUG, INFO, WARNING, ERROR, CRITICAL = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL
_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error", CRITICAL: "critical"}


class FilteringLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, as static classes that do less per call.

    This one writes every level; each subclass below drops the levels under its own, whose
    methods then return at once, as in make_filtering_bound_logger's classes (which structlog
    makes at run time). A call that writes passes the bound context, the keywords and the event
    through the processors and the line to the logger in one frame; structlog's methods pack
    the keywords three times over three calls, then check what the last processor returned,
    a cost a worker at INFO pays once per message.
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
        """info(), whose line may wait in stderr's buffer until logs.write_held_lines() or the
        next line written: a worker's line per message, which a flush each would make much
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
