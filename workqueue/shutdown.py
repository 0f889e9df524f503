"""Shutdown requests from signals, and the one interruptible sleep. Signal handlers only record
the signal; loops check the flag."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

NAP = 0.05  # how often (s) an interruptible sleep checks whether to stop


def sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep up to `seconds`, returning early (within NAP) once stop() is true."""
    deadline = time.monotonic() + seconds
    while not stop() and (left := deadline - time.monotonic()) > 0:  # bounded by the deadline
        time.sleep(min(NAP, left))


class Shutdown:
    """Counts SIGTERM/SIGINT: the first asks for a graceful stop, the second for an immediate one."""

    def __init__(self) -> None:
        self.signals = 0
        self.signum = 0

    @property
    def requested(self) -> bool:
        return self.signals > 0

    @property
    def forced(self) -> bool:
        return self.signals > 1

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if a stop is requested meanwhile."""
        sleep(seconds, lambda: self.requested)

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop, as a signal would (also for code that embeds a worker)."""
        self.signum = signum
        self.signals += 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)

    def install(self) -> None:
        """Route SIGTERM and SIGINT here; only possible (and only done) in the main thread."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)


def die_with_parent(signum: int, parent: int) -> bool:
    """Ask Linux to send `signum` to this process when its parent ends (PR_SET_PDEATHSIG);
    returns False when the parent, whose pid is `parent`, has ended already (or True where
    there is no such call: elsewhere the parent's end goes unnoticed)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)
    except (OSError, AttributeError):
        return True
    return os.getppid() == parent
