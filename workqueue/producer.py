"""The producer loop: push messages at an interval, surviving Redis outages and signals."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import RedisError

from .queue import PUSH_CHUNK, Queue
from .settings import Settings
from .shutdown import Shutdown
from .store.outages import Outage, raise_unless_outage


def produce(
    queue: Queue,
    make_body: Callable[[int], Any],
    *,
    count: int | None = None,
    interval: float = 1.0,
    batch: int = 1,
    grace: float = Settings().grace,
    shutdown: Shutdown | None = None,
) -> int:
    """Push make_body(0), make_body(1), ... one batch per `interval` seconds, `count` in all
    (None: until SIGTERM/SIGINT). A push that fails is retried with the same ids until Redis
    takes it; `message_pushed` is logged only for what Redis stored. Returns the exit code.
    Raises RedisRefused when Redis refuses us for good (configuration, not an outage), and
    signing.MessageTooLarge, with nothing of that batch pushed, for a message over
    MAX_MESSAGE_BYTES. Messages are signed when the queue has a signing key."""
    shutdown = shutdown or Shutdown()
    shutdown.install()
    log = structlog.get_logger().bind(queue=queue.name)
    outage = Outage(log)
    batch = max(1, min(batch, PUSH_CHUNK))  # one chunk is one script call: all of it stored or none
    log.info("producer_started", redis=queue.location, count=count, interval=interval, batch=batch)
    pushed = 0
    for start in itertools.count(0, batch):  # bounded by count, or by a signal
        if shutdown.requested or (count is not None and start >= count):
            break
        size = batch if count is None else min(batch, count - start)
        built = [queue.build(make_body(start + i)) for i in range(size)]
        if not _push_until_stored(queue, [raw for _, raw in built], outage, shutdown, grace):
            log.error("push_abandoned", ids=[message_id for message_id, _ in built])
            return 1
        for message_id, _ in built:
            log.info("message_pushed", id=message_id)
        pushed += size
        shutdown.wait(interval)
    log.info("producer_stopped", pushed=pushed)
    return 0


def _push_until_stored(queue: Queue, raws: list[bytes], outage: Outage, shutdown: Shutdown, grace: float) -> bool:
    """Retry one push until Redis stores it; False if a stop request outlasts the grace."""
    stop_deadline = None
    while True:  # bounded: a stop request starts the grace clock, a second signal ends it
        try:
            queue.push_encoded(raws)
            outage.succeeded()
            return True
        except RedisError as error:
            raise_unless_outage(error)
            if shutdown.requested and stop_deadline is None:
                stop_deadline = time.monotonic() + grace
            if shutdown.forced or (stop_deadline is not None and time.monotonic() > stop_deadline):
                return False
            outage.failed(error, lambda: shutdown.forced)
