"""A worker's session with Redis: joining it (at start-up and again after any error) and leaving.

Joining starts a new session, so that no request sent before (one delayed in the network) can
change anything now; then the worker trusts Redis, not memory, about what it holds. Leaving puts
back what was taken but not started, settles the rest and deregisters.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.exceptions import RedisError
from structlog.typing import FilteringBoundLogger

from ..protocol import Delivery
from ..queue import Queue
from ..store.consumer import Consumer
from ..store.outages import Outage, is_fenced, raise_unless_outage
from .held import Holdings
from .pipeline import RequestPipeline


class SessionKeeper:
    """Keeps the worker's session with Redis: joins a new one (sync) whenever `needed`, which the
    worker sets after an error; leaves once (leave)."""

    def __init__(self, queue: Queue, consumer: Consumer, pipeline: RequestPipeline, held: Holdings,
                 outage: Outage, log: FilteringBoundLogger) -> None:
        self.queue = queue
        self.consumer = consumer
        self.pipeline = pipeline
        self.held = held
        self.outage = outage
        self.log = log
        self.needed = True  # (re)register and re-read our in-flight list before taking messages

    def sync(self) -> None:
        """After start-up or a connection error: join in a new session, so that no request sent
        before (one delayed in the network) can change anything now; resend unsettled outcomes
        (settling is idempotent); and trust Redis, not memory, about what we hold: a fetch whose
        reply was lost may have moved messages, and we may have been presumed dead meanwhile
        (partitioned, or frozen), our messages recovered and handed to other workers."""
        self.queue.scripts.load()  # Redis may have restarted without its script cache
        self.queue.register()  # listed for `workqueue queues` (idempotent)
        if not self.consumer.join(self.pipeline.outcomes.sequence) and self.consumer.delivery is Delivery.RELIABLE:
            self._claim_lost()
        self.pipeline.settle_all()
        self.held.accept(*self.pipeline.take_next())
        orphans = self.held.reconcile(self.consumer.in_flight(), popped=self.consumer.delivery is Delivery.SIMPLE)
        if orphans:
            self.log.warning("in_flight_adopted", count=len(orphans))
            self.held.adopt(orphans, self.consumer.completed)
        self.needed = False

    def _claim_lost(self) -> None:
        """We were presumed dead and our messages recovered: each is someone else's now, so what
        we did with it is void (a success of ours is not counted; the copy's fate decides)."""
        lost = self.held.forfeit(*self.pipeline.forget())
        for message_id, attempts, outcome in lost:
            self.log.warning("message_claim_lost", id=message_id, attempts=attempts, outcome=outcome)
        self.log.warning("worker_rejoined", claims_lost=len(lost))

    def leave(self, stop_heartbeats: Callable[[], None]) -> None:
        """Put back what was taken but not started, settle the rest, deregister. During an
        outage, a worker with nothing to settle stops at once: its registration runs out, and
        recovery takes back anything a lost reply had put in its in-flight list."""
        try:
            self.held.accept(*self.pipeline.take_next())
        except RedisError as error:
            # An outage: its messages are found below, when deregistering is refused. Refused as
            # of an ended session (we were presumed dead while a fetch was on its way): it took
            # nothing, and below we rejoin to put back what is still ours.
            if not is_fenced(error):
                raise_unless_outage(error)
        released = self.held.release(self.pipeline.outcomes)
        deregistered = False
        while not deregistered:  # bounded: the housekeeper aborts when the grace runs out
            try:
                self.pipeline.settle_all()
                stop_heartbeats()
                deregistered = self.consumer.deregister()
                if not deregistered:
                    self.sync()  # something is still held: find out what, put it back
                    released += self.held.release(self.pipeline.outcomes)
            except RedisError as error:
                if is_fenced(error):  # our session ended: rejoin, then put back what is still ours
                    self.sync()
                    released += self.held.release(self.pipeline.outcomes)
                    continue
                raise_unless_outage(error)
                if self.pipeline.settled and not self.held:
                    break
                self.outage.failed(error)
        self.log.info("worker_stopped", released=released, deregistered=deregistered)
