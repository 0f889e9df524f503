"""Handlers of the worker-command measurements (bench/command.py), and the jobs the peers run.

    python -m workqueue worker handlers:async_sleep_10ms --processes 1 --concurrency 50   # run in bench/

workqueue's worker command imports this module from bench/ (its current folder); the peers' job
functions in command.py and taskiq_app.py call the same jobs underneath, so every system runs
the same code. Only redis-py is needed (every virtualenv of the benchmark has it). The Redis is
BENCH_REDIS_URL, the benchmark's own server.

What the jobs report, under keys of that Redis:
- bench:timings  "start end" (epoch seconds) of each sleeping or busy job, sent by a thread of
  the worker process every 50 ms (an RPUSH per job would add a round trip to every job timed);
- bench:ran      the id of each job run with crash=True, pushed before the job returns (so a
  job the system counts as done has said so: what a SIGKILL loses is the system's doing);
- bench:first / bench:last / bench:done   the no-op drain's first and last job (as systems.py),
  or the pipeline's: stage one's first job and stage two's last;
- bench:latency  the push-to-start delay of a pickup job.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from typing import Any

import redis
import redis.asyncio

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")
WORKER_SECONDS = 900  # the flushing thread ends after this long, as the bench's workers do
stamps = redis.Redis.from_url(URL, socket_timeout=10)


class Timings:
    """(start, end) pairs gathered in a worker process and sent to bench:timings by a daemon
    thread every 50 ms."""

    def __init__(self) -> None:
        self.pending: collections.deque[str] = collections.deque()  # append/popleft are thread-safe
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def add(self, start: float, end: float) -> None:
        self.pending.append(f"{start!r} {end!r}")
        if self.thread is None:
            with self.lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._flush, daemon=True)
                    self.thread.start()

    def _flush(self) -> None:
        deadline = time.monotonic() + WORKER_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
            batch = []
            while self.pending:
                batch.append(self.pending.popleft())
            if batch:
                stamps.rpush("bench:timings", *batch)


timings = Timings()
_async_clients: dict[int, Any] = {}  # an asyncio client per event loop (its connections belong to that loop)


def _async_client() -> Any:
    loop = id(asyncio.get_running_loop())
    if loop not in _async_clients:
        _async_clients[loop] = redis.asyncio.Redis.from_url(URL, socket_timeout=10)
    return _async_clients[loop]


# -- the jobs, whatever the system ------------------------------------------------------------


def sleep_job(i: int, seconds: float, crash: bool = False) -> None:
    """I/O-like: wait `seconds` without the CPU (time.sleep: a thread waits)."""
    start = time.time()
    time.sleep(seconds)
    if crash:
        stamps.rpush("bench:ran", i)
    else:
        timings.add(start, time.time())


async def async_sleep_job(i: int, seconds: float, crash: bool = False) -> None:
    """I/O-like on an event loop: asyncio.sleep."""
    start = time.time()
    await asyncio.sleep(seconds)
    if crash:
        await _async_client().rpush("bench:ran", i)
    else:
        timings.add(start, time.time())


def busy_job(seconds: float) -> None:
    """CPU-bound: busy-wait `seconds` (a perf_counter loop, holding the GIL)."""
    start, began = time.time(), time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        pass
    timings.add(start, start + time.perf_counter() - began)


# -- workqueue's handlers: a message whose body is {"i": ..., "crash": ...} or as said ---------


def _args(message: Any) -> tuple[int, bool]:
    body = message.body
    return body["i"], bool(body.get("crash"))


def sleep_10ms(message: Any) -> None:
    i, crash = _args(message)
    sleep_job(i, 0.01, crash)


def sleep_50ms(message: Any) -> None:
    i, crash = _args(message)
    sleep_job(i, 0.05, crash)


async def async_sleep_10ms(message: Any) -> None:
    i, crash = _args(message)
    await async_sleep_job(i, 0.01, crash)


async def async_sleep_50ms(message: Any) -> None:
    i, crash = _args(message)
    await async_sleep_job(i, 0.05, crash)


def busy_1ms(message: Any) -> None:
    busy_job(0.001)


def noop(message: Any) -> None:
    """The no-op drain's job ({"i": i, "n": n}): nothing, but the first and last say when they ran."""
    body = message.body
    if body["i"] == 0:
        stamps.set("bench:first", repr(time.time()))
    if body["i"] == body["n"] - 1:
        stamps.set("bench:last", repr(time.time()))
        stamps.rpush("bench:done", 1)


# The two-stage pipeline (command.py pipeline): `workqueue worker handlers:STAGES` serves both
# queues. Its time runs from stage one's job 0 to stage two's job n − 1, as the no-op drain's.
STAGE_ONE, STAGE_TWO = "bench-one", "bench-two"


def stage_one(message: Any) -> None:
    """Stage one ({"i": i, "n": n}): one follow-up to stage two with the same body; its jobs 0
    and n − 1 say when they ran (bench:first, bench:one-last, then bench:one-done)."""
    body = message.body
    if body["i"] == 0:
        stamps.set("bench:first", repr(time.time()))
    if body["i"] == body["n"] - 1:
        stamps.set("bench:one-last", repr(time.time()))
        stamps.rpush("bench:one-done", 1)
    message.emit(STAGE_TWO, body)


def stage_two(message: Any) -> None:
    """Stage two: a no-op, but its jobs 0 and n − 1 say when they ran (bench:two-first,
    bench:last, then bench:done: the pipeline is through)."""
    body = message.body
    if body["i"] == 0:
        stamps.set("bench:two-first", repr(time.time()))
    if body["i"] == body["n"] - 1:
        stamps.set("bench:last", repr(time.time()))
        stamps.rpush("bench:done", 1)


STAGES = {STAGE_ONE: stage_one, STAGE_TWO: stage_two}


def pickup(message: Any) -> None:
    """Say how long after its push ({"sent": epoch seconds}) this job started."""
    stamps.rpush("bench:latency", repr(time.time() - message.body["sent"]))


HANDLERS = {  # (kind, handler seconds) -> the handler's name here
    ("async", 0.01): "async_sleep_10ms", ("async", 0.05): "async_sleep_50ms",
    ("threads", 0.01): "sleep_10ms", ("threads", 0.05): "sleep_50ms",
}
