"""`workqueue top`: a live view of one queue, redrawn every second with plain ANSI codes.

`q` or Ctrl-C quits. When stdout is not a terminal it prints one snapshot and returns, so the
command can be piped or run from a script.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from dataclasses import dataclass

from ..figures import show
from ..logs import printable
from ..queue import Queue
from ..store.stats import Snapshot

ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"  # alternate screen, cursor hidden
HOME_CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class Reading:
    """A snapshot and when it was taken (time.monotonic())."""

    at: float
    snapshot: Snapshot


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def rate(now: Reading, before: Reading | None, *names: str) -> str:
    """Per second, the growth of the sum of these counters since the previous reading."""
    if before is None or now.at <= before.at:
        return "-"
    grown = sum(_count(now.snapshot.stats[n]) - _count(before.snapshot.stats[n]) for n in names)
    return f"{max(0, grown) / (now.at - before.at):.1f}"


def frame(queue: Queue, now: Reading, before: Reading | None, interactive: bool) -> list[str]:
    """The lines of one screen."""
    s = now.snapshot.stats
    lines = [
        f"workqueue top: queue {queue.name} at {queue.location}  {time.strftime('%H:%M:%S')}" + ("  (q quits)" if interactive else ""),
        "",
        f"pending     {show(s['pending']):>10}   oldest pending age (s) {show(s['oldest_pending_age_seconds']):>10}",
        f"delayed     {show(s['delayed']):>10}   paused                 {show(s['paused']):>10}",
        f"dead        {show(s['dead']):>10}   unaccounted            {show(s['unaccounted']):>10}",
        f"processed/s {rate(now, before, 'completed'):>10}   failed/s               {rate(now, before, 'retried', 'dead_lettered'):>10}",
        "",
        f"{'WORKER':<40} {'IN FLIGHT':>9}  STATE",
    ]
    for worker in sorted(now.snapshot.workers, key=lambda w: w.id):
        state = "alive" if worker.alive else "silent (to be recovered)"
        lines.append(f"{printable(worker.id.decode(errors='backslashreplace')):<40} {worker.in_flight:>9}  {state}")
    if not now.snapshot.workers:
        lines.append("(no registered workers)")
    return lines


def run(queue: Queue, interval: float = 1.0) -> None:
    """Show the view until `q` or Ctrl-C; one snapshot when stdout is not a terminal."""
    reading = Reading(time.monotonic(), queue.snapshot())
    if not sys.stdout.isatty():
        print("\n".join(frame(queue, reading, None, interactive=False)))
        return
    keys = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(keys) if keys is not None else None
    before: Reading | None = None
    try:
        if keys is not None:
            tty.setcbreak(keys)  # keys arrive one at a time, unechoed; Ctrl-C still interrupts
        sys.stdout.write(ENTER)
        while True:
            sys.stdout.write(HOME_CLEAR + "\n".join(frame(queue, reading, before, keys is not None)) + "\n")
            sys.stdout.flush()
            if _quit_pressed(keys, reading.at + interval):
                return
            before, reading = reading, Reading(time.monotonic(), queue.snapshot())
    except KeyboardInterrupt:
        return
    finally:
        sys.stdout.write(LEAVE)
        sys.stdout.flush()
        if keys is not None and saved is not None:
            termios.tcsetattr(keys, termios.TCSADRAIN, saved)


def _quit_pressed(keys: int | None, until: float) -> bool:
    """Wait until `until` (time.monotonic()); whether `q` was pressed meanwhile."""
    while (left := until - time.monotonic()) > 0:
        if keys is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([keys], [], [], left)
        if ready and b"q" in os.read(keys, 32).lower():
            return True
    return False
