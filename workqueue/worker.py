"""The worker loop: take messages, run the handler, settle the outcomes in batches.

The main thread runs the loop; a housekeeping thread keeps the heartbeat alive (so a long
handler keeps its messages), recovers dead workers' messages, and enforces the shutdown grace.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
import structlog
from redis.exceptions import RedisError

from . import message
from .connection import BLOCK_SECONDS, Outage, RedisRefused, is_outage, raise_if_refused, refusal
from .handlers import Handler, HandlerRunner, JobTimeout
from .message import MalformedMessage, Message
from .queue import Outcomes, Queue, SentFetch
from .settings import Settings
from .shutdown import Shutdown

ACK_DELAY = 0.005  # a finished message waits at most this long (s) for its batch to be settled
BATCH_SECONDS = 0.05  # take as many messages as the handler gets through in about this long
RECOVERY_INTERVAL = 1.0  # how often (s) each worker looks for dead workers; one cheap call
HOUSEKEEPING_TICK = 0.2
# From this batch size on (handlers at 1 ms a message or faster, and a busy queue) the next
# batch is asked for before the current one starts, so Redis's work overlaps the handler's;
# the worker then holds up to two batches. Slower handlers would only hoard messages.
FETCH_AHEAD_BATCH = 50


@dataclass(slots=True)
class Delivery:
    """A message taken from Redis and not started yet."""

    raw: bytes
    message: Message | None  # None when malformed
    problem: str = ""  # why it is malformed
    duplicate: bool = False


class Worker:
    """Runs `handler` on each message of `queue` until stopped (or, with burst, until empty)."""

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        *,
        delivery: str = "reliable",
        prefetch: int = 200,
        burst: bool = False,
        grace: float = 30.0,
        worker_timeout: float = 30.0,
        job_timeout: float = 0.0,
        worker_id: str | None = None,
        shutdown: Shutdown | None = None,
    ) -> None:
        if delivery not in ("reliable", "simple"):
            raise ValueError("delivery must be 'reliable' or 'simple'")
        if not 1 <= prefetch <= 1000:  # the Lua scripts unpack() up to this many values
            raise ValueError("prefetch must be from 1 to 1000")
        self.queue = queue
        self.handler = handler
        self._runner = HandlerRunner(handler, job_timeout)
        self.job_timeout = job_timeout
        self.delivery = delivery
        self.prefetch = prefetch
        self.burst = burst
        self.grace = grace
        self.worker_timeout = worker_timeout
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.shutdown = shutdown or Shutdown()
        self.log = structlog.get_logger().bind(queue=queue.name, worker=self.id)
        self._held: deque[Delivery] = deque()
        self._outcomes = Outcomes()
        self._batch = 1  # grows while handlers are quick, so slow jobs are spread across workers
        self._outage = Outage(self.log)
        self._resync = True  # (re)register and re-read our in-flight list before taking messages
        self._ahead: SentFetch | None = None  # the next batch, asked for; reply not read yet
        self._next: list[tuple[bytes, bool]] = []  # the next batch, read but not started
        self._ahead_of: frozenset[str] = frozenset()  # ids of the batch that was held meanwhile
        self._finished = threading.Event()
        # Held by the housekeeper while it heartbeats, so that no heartbeat can land after we
        # deregistered (which would leave a ghost "live" worker in stats until its timeout).
        self._registration = threading.Lock()
        self._deregistering = False
        self._refused: RedisRefused | None = None  # found by the housekeeper; raised by the loop

    @classmethod
    def from_settings(cls, settings: Settings, handler: Handler, *, burst: bool = False, queue: Queue | None = None) -> "Worker":
        return cls(
            queue or Queue.from_settings(settings),
            handler,
            delivery=settings.delivery,
            prefetch=settings.prefetch,
            burst=burst,
            grace=settings.grace,
            worker_timeout=settings.worker_timeout,
            job_timeout=settings.job_timeout,
        )

    def run(self) -> int:
        """Work until SIGTERM/SIGINT (or an empty queue with burst); returns the exit code.
        Raises RedisRefused when Redis refuses us in a way no wait will change (configuration)."""
        self.shutdown.install()
        self._runner.install()
        self.log.info("worker_started", redis=self.queue.location, delivery=self.delivery, prefetch=self.prefetch, burst=self.burst)
        housekeeper = threading.Thread(target=self._housekeeping, name="workqueue-housekeeping", daemon=True)
        housekeeper.start()
        try:
            self._loop()
            return self._stop()
        finally:
            self._finished.set()
            housekeeper.join(timeout=2)
            self._runner.close()

    # -- main loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.shutdown.requested:
            if self._refused is not None:
                raise self._refused
            try:
                if self._resync:
                    self._sync_with_redis()
                if self._held:
                    self._work()
                elif not self._take():
                    return  # burst: nothing left to do
                self._outage.succeeded()
            except RedisError as error:
                raise_if_refused(error)
                if not is_outage(error):
                    self._unexpected(error)
                    continue
                self._resync = True
                self._outage.failed(error, lambda: self.shutdown.requested)
            except Exception as error:
                self._unexpected(error)

    def _unexpected(self, error: Exception) -> None:
        """A bug or an unexpected reply: log it whole, pause, and re-read our state from Redis."""
        self.log.exception("worker_error", error=f"{type(error).__name__}: {error}")
        self._resync = True
        time.sleep(1)

    def _take(self) -> bool:
        """Settle what is done and take the next batch, blocking briefly when the queue is empty.
        Returns False when a burst worker has nothing left to wait for."""
        if self._ahead is not None:
            self._receive_ahead()
        if self._next:
            self._accept_next()
            return True
        taken, wait_ms = self.queue.fetch(self.id, self._batch, self.delivery, self._outcomes, worker_timeout=self.worker_timeout)
        if not taken:
            if self.burst and wait_ms < 0:
                return False
            # Short waits: a frozen worker's wait ends long before it can be presumed dead, so it
            # does not keep a message from the others (woken.lua returns one that came too late).
            timeout = min(BLOCK_SECONDS, self.worker_timeout / 4)
            if wait_ms >= 0:
                timeout = min(timeout, max(wait_ms, 10) / 1000)
            taken = self.queue.block(self.id, self.delivery, timeout, worker_timeout=self.worker_timeout)
        self._accept(taken)
        return True

    def _accept(self, taken: list[tuple[bytes, bool]], earlier: frozenset[str] = frozenset()) -> None:
        """Decode new messages; `duplicate` comes from the fetch script's check of completed ids,
        or from `earlier`, the ids of a batch taken before this one but not yet settled."""
        for raw, duplicate in taken:
            try:
                msg = message.decode(raw)
            except MalformedMessage as error:
                self._held.append(Delivery(raw, None, str(error)))
            else:
                self._held.append(Delivery(raw, msg, duplicate=duplicate or msg.id in earlier))

    def _accept_next(self) -> None:
        """Hold the batch fetched ahead. That fetch ran before the previous batch was settled, so
        Redis could not see its ids as completed: a copy of one of them is a duplicate here."""
        self._accept(self._next, self._ahead_of)
        self._next = []

    def _send_ahead(self) -> None:
        """Ask for the next batch (settling the last one's outcomes) before starting this one."""
        self._ahead_of = frozenset(d.message.id for d in self._held if d.message is not None)
        sent = self._outcomes
        self._ahead = self.queue.send_fetch(self.id, self._batch, self.delivery, sent, worker_timeout=self.worker_timeout)
        self._outcomes = Outcomes(sequence=sent.sequence + 1)  # new outcomes wait until those are confirmed

    def _receive_ahead(self) -> None:
        """Read the batch asked for ahead. On an error it stays set: _settle_all resends its
        outcomes, and _sync_with_redis adopts its messages."""
        taken, _ = self._ahead.receive()
        self._ahead = None
        self._next = taken

    def _settle_all(self) -> None:
        """Settle every outcome not confirmed by Redis: first those that rode with a fetch whose
        reply was lost (they have the lower sequence number), then the newer ones."""
        if self._ahead is not None:
            self._ahead.abandon()
            if self._ahead.outcomes:
                self.queue.settle(self.id, self.delivery, self._ahead.outcomes)
            self._ahead = None
        self.queue.settle(self.id, self.delivery, self._outcomes)

    def _work(self) -> None:
        """Process what we hold, settling outcomes early if the oldest waited ACK_DELAY (slow
        handlers); then size the next batch to about BATCH_SECONDS of this pace."""
        # Not for a small batch (a woken worker's one message): sending would delay its start.
        if len(self._held) >= FETCH_AHEAD_BATCH and self._batch >= FETCH_AHEAD_BATCH and self._ahead is None and not self._next:
            self._send_ahead()
        held, outcomes, shutdown = self._held, self._outcomes, self.shutdown
        started, count = time.perf_counter(), 0
        while held and not shutdown.requested:
            self._process(held.popleft())
            count += 1
            # A whole batch's outcomes ride with the next fetch; settle here only for slow work.
            if held and time.monotonic() - outcomes.first_at >= ACK_DELAY:
                if self._ahead is not None:
                    self._receive_ahead()  # its outcomes first: settling goes in sequence order
                self.queue.settle(self.id, self.delivery, outcomes)
        seconds = (time.perf_counter() - started) / max(count, 1)
        self._batch = max(1, min(self.prefetch, int(BATCH_SECONDS / max(seconds, 1e-6))))

    def _process(self, delivery: Delivery) -> None:
        log, msg = self.log, delivery.message
        if msg is None:
            self._outcomes.add("dead", delivery.raw, message.dead_letter_malformed(delivery.raw, delivery.problem))
            log.error("message_dead_lettered", id=None, attempts=None, error=f"malformed message: {delivery.problem}")
            return
        if delivery.duplicate:
            self._outcomes.add("dup", delivery.raw)
            log.info("message_duplicate_skipped", id=msg.id, attempts=msg.attempts)
            return
        try:
            self._runner(msg)
        except JobTimeout:
            self._failed(msg, f"job timeout after {self.job_timeout:g} s")
        except Exception as error:  # the handler is user code: any failure is a failed try
            self._failed(msg, f"{type(error).__name__}: {error}")
        else:
            self._outcomes.add("done", delivery.raw, b"", msg.id)
            log.info("message_processed", id=msg.id, attempts=msg.attempts)

    def _failed(self, msg: Message, text: str) -> None:
        """Record a failed try: a retry after backoff, or a dead letter once attempts are used up."""
        dead, delay = self.queue.retry_or_dead(self._outcomes, msg, text)
        if dead:
            self.log.error("message_dead_lettered", id=msg.id, attempts=msg.attempts + 1, error=text)
        else:
            self.log.warning("message_retried", id=msg.id, attempts=msg.attempts + 1, error=text, retry_in=round(delay, 3))

    def _sync_with_redis(self) -> None:
        """After start-up or a connection error: register, resend unsettled outcomes (settling is
        idempotent), and trust Redis, not memory, about what we hold: a fetch whose reply was lost
        may have moved messages, and a long outage may have let another worker recover ours."""
        self.queue.scripts.load()  # Redis may have restarted without its script cache
        self.queue.heartbeat(self.id, self.worker_timeout)
        self._settle_all()
        self._accept_next()
        in_redis = Counter(self.queue.in_flight(self.id))
        kept: deque[Delivery] = deque()
        for d in self._held:
            if in_redis[d.raw] > 0:
                in_redis[d.raw] -= 1
                kept.append(d)
            elif self.delivery == "simple":  # popped, so in no Redis list, unless adopted earlier
                kept.append(d)
        self._held = kept
        orphans = list(in_redis.elements())
        if orphans:
            self.log.warning("in_flight_adopted", count=len(orphans))
            self._adopt(orphans)
        self._resync = False

    def _adopt(self, orphans: list[bytes]) -> None:
        """Take on messages Redis lists as ours whose fetch reply was lost, with that reply's
        duplicate check done again: an id completed already, held already, or seen earlier among
        the orphans marks a duplicate."""
        ids: list[str | None] = []
        for raw in orphans:
            try:
                ids.append(message.decode(raw).id)
            except MalformedMessage:
                ids.append(None)  # _accept dead-letters it
        valid = [i for i in ids if i is not None]
        completed = dict(zip(valid, self.queue.completed(valid)))
        seen = {d.message.id for d in self._held if d.message is not None}
        flagged = []
        for raw, message_id in zip(orphans, ids):
            flagged.append((raw, message_id is not None and (completed[message_id] or message_id in seen)))
            seen.add(message_id)
        self._accept(flagged)

    # -- stopping ----------------------------------------------------------------------------

    def _stop(self) -> int:
        """Put back what was taken but not started, settle the rest, deregister. During an
        outage, a worker with nothing to settle stops at once: its registration runs out, and
        recovery takes back anything a lost reply had put in its in-flight list."""
        try:
            if self._ahead is not None:
                self._receive_ahead()
        except RedisError as error:
            raise_if_refused(error)
            if not is_outage(error):
                raise
            # its messages are found below, when deregistering is refused
        self._accept_next()
        for d in reversed(self._held):  # reversed: each release goes to the head of the queue
            self._outcomes.add("release", d.raw)
        released, self._held = len(self._held), deque()
        deregistered = False
        while not deregistered:  # bounded: the housekeeper ends the process when the grace runs out
            try:
                self._settle_all()
                with self._registration:
                    self._deregistering = True
                deregistered = self.queue.deregister(self.id)
                if not deregistered:
                    self._sync_with_redis()  # something is still held: find out what, put it back
                    for d in reversed(self._held):
                        self._outcomes.add("release", d.raw)
                    released, self._held = released + len(self._held), deque()
            except RedisError as error:
                raise_if_refused(error)
                if not is_outage(error):
                    raise
                if not self._outcomes and self._ahead is None and not self._held:
                    break
                self._outage.failed(error)
        self.log.info("worker_stopped", released=released, deregistered=deregistered)
        return 0

    # -- housekeeping thread -----------------------------------------------------------------

    def _housekeeping(self) -> None:
        next_beat = next_recovery = time.monotonic()
        stop_requested_at = None
        while not self._finished.wait(HOUSEKEEPING_TICK):
            now = time.monotonic()
            if self.shutdown.forced:
                self.log.warning("worker_forced_exit", signal=self.shutdown.signum)
                os._exit(128 + self.shutdown.signum)
            if self.shutdown.requested:
                if stop_requested_at is None:
                    stop_requested_at = now
                    self.log.info("worker_stopping", grace=self.grace)
                elif now - stop_requested_at > self.grace:
                    self.log.error("worker_grace_expired", grace=self.grace)
                    os._exit(1)
            if self.job_timeout and self._runner.enforce():
                self.log.error("worker_handler_stuck", job_timeout=self.job_timeout)
                os._exit(1)  # its messages come back through recovery, with one more attempt
            try:
                if now >= next_beat and not self._resync:
                    with self._registration:
                        if not self._deregistering:
                            self.queue.heartbeat(self.id, self.worker_timeout)
                    next_beat = now + self.worker_timeout / 3
                if now >= next_recovery:
                    next_recovery = now + RECOVERY_INTERVAL * random.uniform(0.75, 1.25)
                    for item in self.queue.recover_dead_workers(skip=self.id):
                        self.log.warning(
                            "message_recovered", id=item.message_id, attempts=item.attempts,
                            dead_worker=item.worker_id, dead_lettered=item.dead_lettered,
                        )
            except RedisError as error:
                if refusal(error) is not None:
                    self._refused = refusal(error)  # the main loop stops with it
                elif not is_outage(error):  # an outage: the main loop logs it and resyncs
                    self.log.exception("housekeeping_failed", error=f"{type(error).__name__}: {error}")
            except Exception as error:  # this thread guards the heartbeat and the grace: go on
                self.log.exception("housekeeping_failed", error=f"{type(error).__name__}: {error}")
