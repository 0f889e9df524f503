"""Shutdown requests from signals. Handlers only record the signal; loops check the flag."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType


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
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.05, seconds))

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
