"""The worker's housekeeping thread: heartbeat, recovery of dead workers, and the time limits.

It runs beside the worker's loop so that a long handler keeps its messages (the heartbeat goes
on), dead workers' messages come back even while every live worker is busy, and the shutdown
grace and JOB_TIMEOUT hold even when the handler never returns. It never ends the process
itself: when a limit is passed it calls `abort(code)`, which the entry script supplies.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from structlog.typing import FilteringBoundLogger

from ..protocol import RetryPolicy
from ..shutdown import Shutdown
from ..store.consumer import Consumer
from ..store.outages import RedisRefused, is_closed_by_server, is_fenced, is_outage, refusal
from ..store.recovery import recover_dead_workers
from .handlers import HandlerRunner

if TYPE_CHECKING:  # metrics.py needs prometheus-client, an optional extra
    from ..metrics import WorkerMetrics

RECOVERY_INTERVAL = 1.0  # how often (s) each worker looks for dead workers; one cheap call
TICK = 0.2


class Housekeeper:
    """Heartbeats every third of the worker timeout, recovers dead workers about every second,
    and watches the grace after a stop request, a second signal, and tries past JOB_TIMEOUT."""

    def __init__(
        self,
        consumer: Consumer,
        retry: RetryPolicy,
        log: FilteringBoundLogger,
        shutdown: Shutdown,
        runner: HandlerRunner,
        *,
        grace: float,
        abort: Callable[[int], None],
        resyncing: Callable[[], bool],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.consumer = consumer
        self.retry = retry  # what recovery does with a dead worker's messages
        self.log = log
        self.shutdown = shutdown
        self.runner = runner
        self.grace = grace
        self.abort = abort
        self.resyncing = resyncing  # while true the loop re-registers itself: no heartbeat
        self.metrics = metrics  # told of each message recovered here
        self.refused: RedisRefused | None = None  # a refusal met here, for the loop to raise
        self._finished = threading.Event()
        # Held while heartbeating, so that no heartbeat can land after the worker deregistered
        # (which would leave a ghost "live" worker in stats until its timeout).
        self._registration = threading.Lock()
        self._deregistering = False
        self._abort_code: int | None = None
        self._abort_again = 0.0  # when to repeat an abort the loop has not acted on
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (again, for a worker whose run() is called again)."""
        self._finished.clear()
        self._deregistering = False
        self._abort_code = None
        self._thread = threading.Thread(target=self._run, name="workqueue-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (the worker's loop is over)."""
        self._finished.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def stop_heartbeats(self) -> None:
        """No heartbeat after this returns: the worker is about to deregister."""
        with self._registration:
            self._deregistering = True

    def _run(self) -> None:
        next_beat = next_recovery = time.monotonic()
        stop_requested_at = None
        while not self._finished.wait(TICK):
            now = time.monotonic()
            if self._abort_code is not None:
                # Asked already, and the loop goes on (a handler caught WorkerAborted): ask
                # again each second, and meanwhile keep the heartbeat and recovery going.
                if now >= self._abort_again:
                    self._abort(self._abort_code)
            elif self.shutdown.forced:
                self.log.warning("worker_forced_exit", signal=self.shutdown.signum)
                self._abort(128 + self.shutdown.signum)
            elif self.shutdown.requested:
                if stop_requested_at is None:
                    stop_requested_at = now
                    self.log.info("worker_stopping", grace=self.grace)
                elif now - stop_requested_at > self.grace:
                    self.log.error("worker_grace_expired", grace=self.grace)
                    self._abort(1)
            if self._abort_code is None and self.runner.job_timeout and self.runner.enforce():
                self.log.error("worker_handler_stuck", job_timeout=self.runner.job_timeout)
                self._abort(1)  # its messages come back through recovery, with one more attempt
            try:
                if now >= next_beat and not self.resyncing():
                    with self._registration:
                        if not self._deregistering:
                            self.consumer.heartbeat()
                    next_beat = now + self.consumer.worker_timeout / 3
                if now >= next_recovery:
                    next_recovery = now + RECOVERY_INTERVAL * random.uniform(0.75, 1.25)
                    for item in recover_dead_workers(self.consumer, self.retry):
                        if item.dropped:
                            self.log.error("registration_dropped", dead_worker=item.worker_id, error=item.dropped)
                            continue
                        self.log.warning(
                            "message_recovered", id=item.message_id, attempts=item.attempts,
                            dead_worker=item.worker_id, dead_lettered=item.dead_lettered,
                        )
                        if self.metrics is not None:
                            self.metrics.recovered(item.dead_lettered)
            except RedisError as error:
                refused = refusal(error)
                if refused is not None:
                    self.refused = refused  # the loop stops with it
                elif is_fenced(error):
                    pass  # our session ended (or the loop is starting a new one): the loop rejoins
                elif not is_outage(error):  # an outage: the loop logs it and resyncs
                    self.log.exception("housekeeping_failed", error=f"{type(error).__name__}: {error}")
                elif is_closed_by_server(error):  # a dead worker's list read in too large a page?
                    self.log.warning("reply_budget_lowered", bytes=self.consumer.budget.cut())
            except Exception as error:  # this thread guards the heartbeat and the grace: go on
                self.log.exception("housekeeping_failed", error=f"{type(error).__name__}: {error}")

    def _abort(self, code: int) -> None:
        self._abort_code = code
        self._abort_again = time.monotonic() + 1.0
        try:
            self.abort(code)
        except Exception as error:  # a hook that fails must not end this thread's other duties
            self.log.exception("housekeeping_failed", error=f"{type(error).__name__}: {error}")
