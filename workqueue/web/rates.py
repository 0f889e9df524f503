"""Completed and failed messages per second over the last minutes, from the queue counters
sampled every few seconds into a ring kept in this process's memory.

Redis keeps only running totals, so rates are differences between samples: they start empty
when the dashboard starts (the first rate appears after the second sample) and are lost when
it stops; several dashboards each keep their own.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SAMPLE_SECONDS = 5.0
KEPT_SAMPLES = 120  # ten minutes at SAMPLE_SECONDS
FAILED = ("retried", "dead_lettered")  # a failed try goes one of these two ways


@dataclass(frozen=True)
class Sample:
    """The counters of one queue at one moment (`at`: time.time(), `mono`: time.monotonic())."""

    at: float
    mono: float
    counters: dict[str, int]


@dataclass(frozen=True)
class Rate:
    """Messages per second between two samples, at the time of the later one."""

    at: float
    completed: float
    failed: float


class RateRing:
    """The recent samples of every queue, and the rates between them; thread-safe."""

    def __init__(self, kept: int = KEPT_SAMPLES) -> None:
        self._kept = kept
        self._samples: dict[str, deque[Sample]] = {}
        self._lock = threading.Lock()

    def add(self, queue: str, counters: dict[str, int], at: float | None = None, mono: float | None = None) -> None:
        sample = Sample(time.time() if at is None else at, time.monotonic() if mono is None else mono, counters)
        with self._lock:
            self._samples.setdefault(queue, deque(maxlen=self._kept)).append(sample)

    def rates(self, queue: str) -> list[Rate]:
        """Oldest first; a counter that went down (its hash deleted by hand) counts as 0."""
        with self._lock:
            samples = list(self._samples.get(queue, ()))
        found = []
        for before, now in itertools.pairwise(samples):
            seconds = now.mono - before.mono
            if seconds <= 0:
                continue

            def grown(names: Iterable[str], before: Sample = before, now: Sample = now) -> int:
                return max(0, sum(now.counters.get(n, 0) - before.counters.get(n, 0) for n in names))

            found.append(Rate(now.at, grown(["completed"]) / seconds, grown(FAILED) / seconds))
        return found


class Sampler:
    """A daemon thread that adds every queue's counters to the ring every `interval` seconds
    until stop(); a queue that cannot be read this time (Redis down) is skipped this time."""

    def __init__(self, ring: RateRing, read_all: Callable[[], dict[str, dict[str, int]]], interval: float = SAMPLE_SECONDS) -> None:
        self.ring = ring
        self.read_all = read_all
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workqueue-web-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self) -> None:
        for queue, counters in self.read_all().items():
            self.ring.add(queue, counters)

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # an outage, or anything else, must not end sampling: the pages show Redis errors themselves
                pass
            if self._stop.wait(self.interval):
                return


@dataclass(frozen=True)
class Chart:
    """Two lines of an SVG chart (`points` attributes of polylines) and the peak they scale to."""

    completed: str
    failed: str
    peak: float
    seconds: float  # the time the chart spans


def chart(rates: list[Rate], width: int = 240, height: int = 48) -> Chart | None:
    """The rates as two polylines in a width x height box, time left to right; None before
    there are two rates to draw."""
    if len(rates) < 2:
        return None
    start, span = rates[0].at, max(rates[-1].at - rates[0].at, 1e-9)
    peak = max(max(r.completed, r.failed) for r in rates) or 1.0

    def line(values: list[float]) -> str:
        return " ".join(f"{(r.at - start) / span * width:.1f},{height - v / peak * height:.1f}" for r, v in zip(rates, values, strict=True))

    return Chart(line([r.completed for r in rates]), line([r.failed for r in rates]), peak, span)
