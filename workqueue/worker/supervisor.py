"""A worker whose handler runs in child processes: the supervisor, the process that talks to
Redis (fetch, settle, heartbeat, recovery, shutdown), runs no handler code.

It is the worker loop of loop.py with the handler's part handed to a ChildPool (pool.py):
messages go to the children as they have room, their results come back as they end, and their
outcomes are settled in batches as before. A child that dies, whatever ended it, costs only the
messages it had started (each gets its attempt); what it had not started goes back untouched;
it is replaced at once. A try past JOB_TIMEOUT is cut in its child where Python can, else its
child is ended: the timed-out message is charged, the others it was running go back.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..logs import write_held_lines
from ..protocol import Fetched
from ..queue import Queue
from .loop import Worker
from .pipeline import ACK_DELAY
from .pool import ChildPool
from .spec import load_handler

TICK = 0.05  # the longest (s) the supervisor waits for children before looking at its timers


def default_processes() -> int:
    """One child per core: CPU-bound handlers (image resizing) use every core, and no more."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Supervisor(Worker):
    """Serves the handler `spec` names (MODULE:ATTR) on `queue` with `processes` children, each
    running up to `concurrency` tries at once. Options as Worker's."""

    def __init__(self, queue: Queue, spec: str, *, processes: int = 0, concurrency: int = 1,
                 log_level: str = "warning", log_format: str = "json", **options: Any) -> None:
        """Raises spec.HandlerNotFound when `spec` names no handler (checked here, run only in
        the children)."""
        handler = load_handler(spec, queue.name)
        super().__init__(queue, handler, **options)
        self.fetch_ahead = False  # the children's room bounds what is taken: see _take_count
        self.pool = ChildPool(spec, processes or default_processes(), concurrency, self.job_timeout, self.prefetch,
                              log_level, log_format, queue.name)
        self._held.elsewhere = self.pool

    def run(self, *, install_signals: bool = True) -> int:
        self.pool.start()
        try:
            return super().run(install_signals=install_signals)
        finally:
            self.pool.close(timeout=0)

    # -- the worker loop's rounds ------------------------------------------------------------

    def _step(self) -> bool:
        if self.shutdown.requested:
            return True
        if self._held:
            self._work()
            return True
        pool, pipeline = self.pool, self._pipeline
        if not pool.busy:
            self._batch = min(pool.room(), self.prefetch)  # what the children can start soon: never more (no hoarding)
            return self._take()
        if pipeline.has_next and (pipeline.read_arrived() or pool.room() >= pool.capacity()):
            self._held.accept(*pipeline.take_next())  # asked for while the children worked
            return True
        self._ask_ahead()
        self._collect(TICK)
        return True

    def _ask_ahead(self) -> None:
        """While the children hold messages: once they can take a quarter of what they may hold,
        ask for more without waiting (settling the outcomes so far), so that it comes while
        they work."""
        pool, pipeline = self.pool, self._pipeline
        room = pool.room()
        if pool.busy and not pipeline.has_next and room >= pool.capacity() / 4:
            write_held_lines()  # the request settles the outcomes so far
            pipeline.ask(min(room, self.prefetch))

    def _busy(self) -> bool:
        return self.pool.busy

    def _wait_for_work(self, fetched: Fetched) -> None:
        if self.pool.busy:  # results come meanwhile; never block in Redis while children work
            self._collect(TICK)
        else:
            super()._wait_for_work(fetched)

    def _work(self) -> None:
        """Send what we hold to the children with room (settling here what needs no handler:
        malformed elements and duplicates), then take in what they finished."""
        held, process = self._held, self._processor.process
        ready = []
        while held:
            item = held.popleft()
            if item.message is None or item.duplicate:
                process(item)
            else:
                ready.append(item)
        held.extend(self.pool.dispatch(ready))  # those no child could take wait here, in order
        if not held:
            self._ask_ahead()
        self._collect(TICK)

    def _collect(self, timeout: float, settle: bool = True) -> None:
        """Wait up to `timeout` for results (less when outcomes wait to be sent), record them,
        end children past JOB_TIMEOUT, and (with `settle`) send the outcomes once the oldest
        waited ACK_DELAY."""
        pipeline = self._pipeline
        if settle and pipeline.outcomes:
            timeout = min(timeout, max(0.0, pipeline.outcomes.first_at + ACK_DELAY - time.monotonic()))
        self._processor.record_all(self.pool.wait(timeout, also=pipeline.fileno()))  # a batch's arrival ends the wait too
        while self.pool.exits:
            how, held = self.pool.exits.pop(0)
            self.log.warning("worker_child_exited", exit=how, held=held)
        self.pool.enforce()
        if settle and pipeline.outcomes and time.monotonic() - pipeline.outcomes.first_at >= ACK_DELAY:
            write_held_lines()  # a message's line is written before Redis hears its outcome
            pipeline.settle()

    def _drain(self) -> None:
        """Stopping: let the tries that started end (the housekeeper's grace bounds this), then
        take back from the children what never started."""
        self.pool.stop_starting()
        deadline = time.monotonic() + self.grace
        while self.pool.running() and time.monotonic() < deadline:  # bounded by the grace
            self._collect(TICK, settle=False)  # leaving settles them, riding out an outage
        time.sleep(TICK)  # a child that was about to start a try has marked it by now
        self._processor.record_all(self.pool.wait(0) + self.pool.take_back())
        write_held_lines()

    def _leave(self) -> None:
        self._drain()
        super()._leave()
