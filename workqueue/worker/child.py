"""A child process of a supervised worker: it runs the handler, and nothing else.

The supervisor (pool.py) sends it messages over a pipe, each in a numbered slot, and reads back
what became of them. Before a try starts, the child writes its start time into the slot's place
in an array shared with the supervisor, and a finished try's mark after it: memory the child's
death cannot take back, so whatever ends the child (os._exit, a segfault, a kill at JOB_TIMEOUT)
the supervisor knows which messages had started, which had finished, and which never began.
A failed try's error is sent before its mark is written, so it is never lost either.

Frames, supervisor to child: for each message, its slot (2 bytes), its length (4 bytes) and its
stored bytes; an empty frame asks the child to finish what it has and exit. Child to
supervisor: a JSON object {"done": [[slot, seconds], ...], "failed": [[slot, error, traceback, timed_out], ...]};
a done try that emitted follow-ups is [slot, seconds, [[queue, id, message], ...]], and its
mark is EMITTED, not DONE: a child dying before it sent that puts the message back untouched
(its follow-ups died with it), so a follow-up is never lost while its try counts as done, and a
completed try is never charged for another try's crash.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import mmap
import os
import queue
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import orjson

from .. import message
from ..logs import configure_logging
from ..message import Emitted, Message
from ..shutdown import die_with_parent
from .handlers import Handler, HandlerRunner, JobTimeout, describe
from .spec import HandlerNotFound, load_handler

COUNT = struct.Struct("<I")  # how many messages a frame carries
DONE = -1.0  # a slot's mark once its try succeeded (a start time is positive; 0: not started)
FAILED = -2.0  # once its failure was sent
# Once its try succeeded having emitted follow-ups, whose result carries them: should the child
# die before sending it, the message goes back untouched, to run again. Never turned into DONE
# after the send: by then the supervisor may have put another message in the slot, whose mark
# that would overwrite (it reads the pipe before the marks, so a result sent is never missed).
EMITTED = -3.0
# The array's last place: the supervisor writes 1 there to ask that no more tries start.
FLUSH_AFTER = 0.005  # a finished try's result waits at most this long (s) to be sent
WATCH_TICK = 0.05  # how often (s) the watchdog looks for tries past JOB_TIMEOUT


def pack(slots: Sequence[int], raws: Sequence[bytes]) -> bytes:
    """A frame of messages for a child: their count, their slots (2 bytes each), their lengths
    (4 bytes each), then their stored bytes one after another."""
    count = len(raws)
    return struct.pack(f"<I{count}H{count}I", count, *slots, *map(len, raws)) + b"".join(raws)


def unpack(frame: bytes) -> Iterator[tuple[int, bytes]]:
    """The (slot, stored bytes) of each message of a frame, in order."""
    (count,) = COUNT.unpack_from(frame)
    slots = struct.unpack_from(f"<{count}H", frame, COUNT.size)
    sizes = struct.unpack_from(f"<{count}I", frame, COUNT.size + 2 * count)
    at = COUNT.size + 6 * count
    for slot, size in zip(slots, sizes, strict=True):
        yield slot, frame[at : at + size]
        at += size


class Results:
    """What finished and was not sent yet; sent in one frame at most FLUSH_AFTER after the oldest."""

    def __init__(self, conn: Any, marks: Any) -> None:
        self.conn = conn
        self.marks = marks
        self.done: list[tuple[Any, ...]] = []
        self.running = 0  # tries started and not ended
        self.first_at = 0.0
        self.lock = threading.Lock()

    def started(self, slot: int) -> float:
        """Mark the try in `slot` started; returns when."""
        with self.lock:
            self.running += 1
        self.marks[slot] = now = time.monotonic()
        return now

    def succeeded(self, slot: int, seconds: float, emitted: list[Emitted] | None = None) -> None:
        if emitted:
            try:  # the handler may have put anything in the list
                follow_ups = [[queue, message_id, raw.decode()] for queue, message_id, raw in emitted]
            except Exception as error:
                self.failed(slot, f"emit refused: the follow-ups were changed after emit() ({describe(error)})", "", False)
                return
            self.marks[slot] = EMITTED
            with self.lock:
                self.running -= 1
                if not self.done:
                    self.first_at = time.monotonic()
                self.done.append((slot, seconds, follow_ups))
            return
        self.marks[slot] = DONE
        with self.lock:
            self.running -= 1
            if not self.done:
                self.first_at = time.monotonic()
            self.done.append((slot, seconds))

    def failed(self, slot: int, error: str, trace: str, timed_out: bool) -> None:
        with self.lock:  # sent at once, before its mark: a death right after cannot lose it
            self.running -= 1
            self._send([[slot, error, trace, timed_out]])
        self.marks[slot] = FAILED

    def flush(self, force: bool = False) -> None:
        with self.lock:
            if self.done and (force or time.monotonic() - self.first_at >= FLUSH_AFTER):
                self._send([])

    def _send(self, failed: list[list[Any]]) -> None:
        done, self.done = self.done, []
        self.conn.send_bytes(orjson.dumps({"done": done, "failed": failed}))


def _try(run: Any, raw: bytes, slot: int, marks: Any, results: Results, job_timeout: float) -> None:
    """One try of the handler on the message stored as `raw`, in slot `slot` (none once the
    supervisor asked that no more start: it puts the message back)."""
    msg: Message = message.decode(raw)  # the supervisor decoded it already: it is a message
    if marks[len(marks) - 1]:
        return
    started = results.started(slot)
    try:
        run(msg)
    except JobTimeout:
        results.failed(slot, f"job timeout after {job_timeout:g} s", traceback.format_exc(), True)
    except BaseException as error:  # the handler is user code: whatever it raises fails its try
        results.failed(slot, describe(error), traceback.format_exc(), False)
    else:
        results.succeeded(slot, time.monotonic() - started, msg.emitted)


def _flush_now_and_then(results: Results) -> None:
    """Send what finished at most FLUSH_AFTER after it did, while other tries run on."""
    while True:  # a daemon thread: it ends with the process
        time.sleep(FLUSH_AFTER)
        results.flush()


def _watch(runners: list[HandlerRunner]) -> None:
    """Interrupt each try past JOB_TIMEOUT where Python can; one stuck beyond reach is ended by
    the supervisor, which kills this process."""
    while True:  # a daemon thread: it ends with the process
        time.sleep(WATCH_TICK)
        for runner in runners:
            runner.enforce()


def _serve_in_threads(handler: Handler, conn: Any, marks: Any, concurrency: int, job_timeout: float) -> None:
    """Plain handlers: `concurrency` threads (the main thread alone when it is 1) take messages
    in the order they came."""
    results = Results(conn, marks)
    runners = [HandlerRunner(handler, job_timeout) for _ in range(concurrency)]
    if job_timeout:
        runners[0].install()  # the main thread's blocking calls are cut too (SIGUSR2)
        threading.Thread(target=_watch, args=(runners,), daemon=True).start()
    if concurrency == 1:
        while frame := conn.recv_bytes():
            for slot, raw in unpack(frame):
                _try(runners[0], raw, slot, marks, results, job_timeout)
                results.flush()
            results.flush(force=True)
        return
    waiting: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()

    def work(runner: HandlerRunner) -> None:
        while (item := waiting.get()) is not None:
            _try(runner, item[1], item[0], marks, results, job_timeout)
            results.flush(force=waiting.empty() and not results.running)

    threading.Thread(target=_flush_now_and_then, args=(results,), daemon=True).start()
    threads = [threading.Thread(target=work, args=(runner,), daemon=True) for runner in runners]
    for thread in threads:
        thread.start()
    while frame := conn.recv_bytes():
        for item in unpack(frame):
            waiting.put(item)
    for _ in threads:
        waiting.put(None)
    for thread in threads:
        thread.join()
    results.flush(force=True)


def _serve_async(handler: Handler, conn: Any, marks: Any, concurrency: int, job_timeout: float) -> None:
    """Async handlers: `concurrency` tasks on one event loop, each taking the next message as it
    ends the last (no task made per message); a try past JOB_TIMEOUT is cancelled."""
    results = Results(conn, marks)
    loop = asyncio.new_event_loop()
    arrived: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()

    def read() -> None:  # the loop reads the pipe when it is readable: a frame is written whole
        try:
            frame = conn.recv_bytes()
        except EOFError:  # the supervisor is gone
            frame = b""
        if not frame:
            loop.remove_reader(conn.fileno())
            for _ in range(concurrency):
                arrived.put_nowait(None)
            return
        for item in unpack(frame):
            arrived.put_nowait(item)

    async def one(slot: int, raw: bytes) -> None:
        msg = message.decode(raw)
        if marks[len(marks) - 1]:  # no more tries start: the supervisor puts it back
            return
        started = results.started(slot)
        if not job_timeout:  # awaited right here: no task of its own to make and watch
            try:
                await handler(msg)
            except BaseException as error:  # the handler is user code: whatever it raises fails its try
                results.failed(slot, describe(error), "".join(traceback.format_exception(error)), False)
            else:
                results.succeeded(slot, time.monotonic() - started, msg.emitted)
            return
        task = asyncio.ensure_future(handler(msg))
        done, _ = await asyncio.wait({task}, timeout=job_timeout)  # not wait_for: the handler's own TimeoutError stays its own
        if not done:
            task.cancel()
            await asyncio.wait({task})
            results.failed(slot, f"job timeout after {job_timeout:g} s", "", True)
        elif task.cancelled():
            results.failed(slot, "CancelledError: the handler was cancelled", "", False)
        elif (raised := task.exception()) is not None:
            results.failed(slot, describe(raised), "".join(traceback.format_exception(raised)), False)
        else:
            results.succeeded(slot, time.monotonic() - started, msg.emitted)

    # What finished is sent once nothing more runs, else FLUSH_AFTER after the first of it, by a
    # timer of the loop's own: a thread of ours waking for it would take the GIL from the loop
    # and make every try's wake-up later.
    flush_timer: list[asyncio.TimerHandle] = []

    def flush_due() -> None:
        flush_timer.clear()
        results.flush(force=True)

    async def work() -> None:
        while (item := await arrived.get()) is not None:
            await one(*item)
            if arrived.empty() and not results.running:
                results.flush(force=True)
            elif results.done and not flush_timer:
                flush_timer.append(loop.call_later(FLUSH_AFTER, flush_due))

    async def serve() -> None:
        loop.add_reader(conn.fileno(), read)
        await asyncio.gather(*(work() for _ in range(concurrency)))
        results.flush(force=True)

    loop.run_until_complete(serve())


def _yield_to_the_supervisor() -> None:
    """Run as a batch process (Linux): the same share of the CPU, but a child that wakes does not
    preempt the supervisor or a local Redis, which feed it. Needs no privilege; elsewhere
    nothing changes."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def main(argv: Sequence[str]) -> None:
    """The child's life: load the handler, serve messages until the supervisor says stop.
    `argv`: the handler's MODULE:ATTR, the descriptors of its socket and of the marks' file,
    the concurrency, JOB_TIMEOUT, the log level and format, and the queue (which handler of a
    dict of queues)."""
    spec, conn_fd, marks_fd, concurrency_text, job_timeout_text, log_level, log_format, queue = argv
    concurrency, job_timeout = int(concurrency_text), float(job_timeout_text)
    conn = Connection(int(conn_fd))
    marks = memoryview(mmap.mmap(int(marks_fd), 0)).cast("d")
    os.close(int(marks_fd))  # the mapping stays
    # Ended with its supervisor, so that a handler stuck in C code never outlives it (elsewhere
    # than Linux the pipe's end does it, later).
    die_with_parent(signal.SIGKILL, os.getppid())
    _yield_to_the_supervisor()
    configure_logging(log_level, log_format)  # for the handler's own log lines
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's: it drains, then stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        handler = load_handler(spec, queue)
    except HandlerNotFound as error:  # it loaded in the supervisor: something differs here
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(2)
    serve = _serve_async if inspect.iscoroutinefunction(handler) else _serve_in_threads
    gc.freeze()  # start-up's objects, the handler's module included, out of the collector's sight
    try:
        serve(handler, conn, marks, concurrency, job_timeout)
    except EOFError:  # the supervisor is gone
        pass
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a thread still in the handler must not hold the exit up


if __name__ == "__main__":
    main(sys.argv[1:])
