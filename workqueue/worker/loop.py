"""The worker loop: take messages, run the handler, settle the outcomes in batches.

The loop runs in the calling thread; a Housekeeper thread keeps the heartbeat alive (so a long
handler keeps its messages), recovers dead workers' messages, and watches the time limits.
MessageProcessor runs each message and records its outcome; RequestPipeline keeps the requests
that overlap the work in order; Session joins Redis at start-up and after every error, and leaves
at the end. The loop returns an exit code or raises RedisRefused; ending the process is the entry
script's business.
"""

from __future__ import annotations

import gc
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from ..logs import write_held_lines
from ..protocol import Delivery, Fetched
from ..queue import Queue
from ..settings import Settings
from ..shutdown import Shutdown
from ..store.cluster import cluster_of
from ..store.outages import Outage, RedisRefused, is_closed_by_server, is_fenced, is_outage, raise_if_refused
from .handlers import Handler, HandlerRunner, LoopAbort, WorkerAborted, check_handler
from .held import Holdings
from .housekeeper import Housekeeper
from .pipeline import ACK_DELAY, RequestPipeline
from .processing import FollowUpRules, MessageProcessor
from .session import SessionKeeper

if TYPE_CHECKING:  # metrics.py needs prometheus-client, an optional extra
    from ..metrics import WorkerMetrics

BATCH_SECONDS = 0.05  # take as many messages as the handler gets through in about this long
PAUSE_POLL = 0.5  # how often (s) a worker asks whether its paused queue was resumed
_DEFAULTS = Settings()  # the one home of defaults


class Worker:
    """Runs `handler` on each message of `queue` until stopped (or, with burst, until empty)."""

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        *,
        delivery: Delivery | str = _DEFAULTS.delivery,
        prefetch: int = _DEFAULTS.prefetch,
        burst: bool = False,
        grace: float = _DEFAULTS.grace,
        worker_timeout: float = _DEFAULTS.worker_timeout,
        job_timeout: float = _DEFAULTS.job_timeout,
        worker_id: str | None = None,
        shutdown: Shutdown | None = None,
        abort: Callable[[int], None] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """`abort(code)` is called from the housekeeping thread when the worker must end now
        (grace over, a second signal, a try stuck past JOB_TIMEOUT); entry scripts pass
        os._exit. Without it, WorkerAborted is raised in the loop and run() returns the code.
        `metrics` is told every outcome (off, the cost is one `if` on the rarer paths)."""
        if not 1 <= prefetch <= 1000:  # the Lua scripts unpack() up to this many values
            raise ValueError("prefetch must be from 1 to 1000")
        check_handler(handler)
        self.queue = queue
        self.handler = handler
        self.delivery = Delivery(delivery)
        self.prefetch = prefetch
        self.burst = burst
        # With burst, the queues that must all be done before we stop: ours, and those of the
        # workers beside us in one command, whose follow-ups may still come our way.
        self.burst_queues = [queue]
        self.grace = grace
        self.worker_timeout = worker_timeout
        self.job_timeout = job_timeout
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.shutdown = shutdown or Shutdown()
        self.log = structlog.get_logger().bind(queue=queue.name, worker=self.id)
        self.consumer = queue.consumer(self.id, self.delivery, worker_timeout)
        self._runner = HandlerRunner(handler, job_timeout)
        self.metrics = metrics
        self._pipeline = RequestPipeline(self.consumer)
        follow_ups = FollowUpRules(queue.policy, queue.keys.pending, lambda: cluster_of(queue.client, ask=False) is not None)
        self._processor = MessageProcessor(self._runner, queue.retry, self._pipeline, self.log, metrics, queue.store.clock,
                                           follow_ups)
        self._held = Holdings(queue.policy)  # the queue's size limit and signing keys
        self._batch = 1  # grows while handlers are quick, so slow jobs are spread across workers
        self.fetch_ahead = True  # ask for the next batch while this one runs (quick handlers)
        self._outage = Outage(self.log)
        self._session = SessionKeeper(queue, self.consumer, self._pipeline, self._held, self._outage, self.log)
        self._fenced = False  # the last request was refused as of an ended session
        self._loop_abort = LoopAbort(self._runner)
        self._housekeeper = Housekeeper(
            self.consumer, queue.retry, self.log, self.shutdown, self._runner,
            grace=grace, abort=abort or self._loop_abort, resyncing=lambda: self._session.needed, metrics=metrics,
        )

    @classmethod
    def from_settings(cls, settings: Settings, handler: Handler, *, burst: bool = False, queue: Queue | None = None,
                      abort: Callable[[int], None] | None = None, metrics: WorkerMetrics | None = None) -> Worker:
        return cls(queue or Queue.from_settings(settings), handler, delivery=settings.delivery, prefetch=settings.prefetch,
                   burst=burst, grace=settings.grace, worker_timeout=settings.worker_timeout, job_timeout=settings.job_timeout,
                   abort=abort, metrics=metrics)

    def run(self, *, install_signals: bool = True) -> int:
        """Work until SIGTERM/SIGINT or shutdown.request() (or, with burst, an empty queue);
        returns the exit code. Raises RedisRefused when Redis refuses us in a way no wait will
        change. Signal handlers are installed only in the main thread, and only if asked."""
        if install_signals:  # both install only in the main thread
            self.shutdown.install()
            self._runner.install()
        self.log.info("worker_started", redis=self.queue.location, delivery=self.delivery.value, prefetch=self.prefetch, burst=self.burst)
        self._loop_abort.open()
        self._housekeeper.start()
        # What exists by now (modules, settings, the handler's own) will outlive the run: out of
        # the garbage collector's sight while it lasts, a collection walks only what the work makes.
        gc.freeze()
        code = 1
        try:
            self._loop()
            self._leave()
            code = 0
        except WorkerAborted:
            pass
        finally:
            gc.unfreeze()
            self._loop_abort.close()
            self._housekeeper.stop()
            self._runner.close()
            self.consumer.close()
        return code if self._loop_abort.code is None else self._loop_abort.code

    # -- main loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.shutdown.requested:
            if self._housekeeper.refused is not None:
                raise self._housekeeper.refused
            try:
                if self._session.needed:
                    self._session.sync()
                more = self._step()
                if self.consumer.oversized:
                    self._processor.report_oversized(self.consumer.oversized, self.consumer.max_message_bytes)
                if not more:
                    return  # burst: nothing left to do
                self._outage.succeeded()
                self._fenced = False
            except RedisError as error:
                self._session.needed = True
                if is_fenced(error):
                    # Our session ended: rejoining finds out what we still hold. Refused again
                    # at once (another process with our worker id?): back off as in an outage.
                    if not self._fenced:
                        self._fenced = True
                        continue
                else:
                    raise_if_refused(error)
                    if not is_outage(error):
                        self._unexpected(error)
                        continue
                    if is_closed_by_server(error):  # a reply over a client-output-buffer-limit?
                        self.log.warning("reply_budget_lowered", bytes=self.consumer.budget.cut())
                self._outage.failed(error, lambda: self.shutdown.requested)
            except RedisRefused:
                raise
            except Exception as error:
                self._unexpected(error)

    def _leave(self) -> None:
        """Put back what was taken but not started, settle the rest, deregister."""
        self._session.leave(self._housekeeper.stop_heartbeats)

    def _unexpected(self, error: Exception) -> None:
        """A bug or an unexpected reply: log it whole, pause, and re-read our state from Redis."""
        self.log.exception("worker_error", error=f"{type(error).__name__}: {error}")
        self._session.needed = True
        time.sleep(1)

    def _step(self) -> bool:
        """One round: work on what we hold, or take more. False when a burst worker is done."""
        if self._held:
            self._work()
            return True
        return self._take()

    def _nothing_left(self) -> bool:
        """Burst: whether no message is waiting, delayed or held by any worker in any of
        `burst_queues` (held by a dead worker, it comes back through recovery: we wait for it).
        The queues are read one after another, and a try ending in one may push a follow-up into
        another already read: so they are read twice, and done only if nothing came into any of
        them in between (their counters of messages in unchanged). Between the two readings there
        was then an instant when every one was empty and no worker held anything."""
        readings = []
        for _ in range(2):
            reading = []
            for queue in self.burst_queues:
                counts = queue.stats()
                if counts["pending"] or counts["delayed"] or counts["in_flight"]:
                    return False
                reading.append((counts["produced"], counts["requeued"]))
            readings.append(reading)
        return readings[0] == readings[1]

    def _busy(self) -> bool:
        """Whether messages we hold are being worked on elsewhere (a supervisor's children)."""
        return False

    def _wait_for_work(self, fetched: Fetched) -> None:
        """Nothing was taken: wait for one message, the shortest path to its start (nothing is
        fetched ahead)."""
        self._held.accept(self.consumer.block(self.consumer.wait_seconds(fetched)))

    def _take(self) -> bool:
        """Settle what is done and take the next batch, blocking briefly when the queue is empty.
        Returns False when a burst worker has nothing left to wait for."""
        pipeline, earlier = self._pipeline, frozenset[str]()
        if pipeline.has_next:
            pipeline.pack_ahead()  # while the next batch is on its way: the send below then only writes
            taken, earlier = pipeline.take_next()
        else:
            fetched = pipeline.fetch(self._batch)
            taken = fetched.taken
            if fetched.paused and not self._busy():  # ask again soon; the heartbeat goes on meanwhile
                self.shutdown.wait(PAUSE_POLL)
                return True
            if not taken:
                if self.burst and fetched.next_retry_ms is None and not self._busy() and self._nothing_left():
                    return False
                self._wait_for_work(fetched)
                return True
        # Redis works on the next batch while this one is decoded and run.
        ahead = self.fetch_ahead and pipeline.fetch_ahead(self._batch, taken)
        accepted = self._held.accept(taken, earlier)  # we held nothing before: these are all we hold
        if ahead:
            pipeline.holding(accepted)
        return True

    def _work(self) -> None:
        """Process what we hold, settling outcomes early if the oldest waited ACK_DELAY (slow
        handlers); then size the next batch to about BATCH_SECONDS of this pace."""
        pipeline, held, shutdown = self._pipeline, self._held, self.shutdown
        started, count = time.perf_counter(), 0
        try:
            process = self._processor.process
            while held and not shutdown.requested:
                process(held.popleft())
                count += 1
                # A whole batch's outcomes ride with the next fetch; a slow one's go once the oldest
                # waited ACK_DELAY (the clock first: while a batch runs there are outcomes).
                if held and time.monotonic() - pipeline.outcomes.first_at >= ACK_DELAY and pipeline.outcomes:
                    write_held_lines()  # a message's line is written before Redis hears its outcome
                    pipeline.settle()
        finally:
            write_held_lines()
        seconds = (time.perf_counter() - started) / max(count, 1)
        self._batch = max(1, min(self.prefetch, int(BATCH_SECONDS / max(seconds, 1e-6))))
