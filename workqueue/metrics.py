"""Prometheus metrics of one worker (optional: `pip install "workqueue-redis[metrics]"`).

The worker reports each outcome to the WorkerMetrics it was given; those calls only add to plain
numbers (no lock, no label lookup: a worker may settle 100k messages a second), written by one
thread each: the loop, or the housekeeper for recovered messages. At scrape time this collector
turns them into metric families, and reads the queue's depths from Redis (a Redis error then
leaves the depths out; it never reaches the worker). A registry of its own per WorkerMetrics,
never prometheus_client's global one; registering reads nothing (the base class's describe()
is empty), so no Redis call happens then.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisClusterException, RedisError
from structlog.typing import FilteringBoundLogger

from .message import Message
from .queue import Queue

ADDRESS = "0.0.0.0"  # every interface, like prometheus_client.start_http_server: what a scraper needs
OUTCOMES = ("completed", "retried", "dead_lettered", "recovered", "duplicate_skipped")
# Handlers run from microseconds to minutes; a message waits from milliseconds to hours.
HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
DEPTHS = {
    "pending": "messages waiting in the queue",
    "in_flight": "messages taken by a worker and not settled",
    "delayed": "failed messages waiting out their backoff",
    "dead": "entries in the dead-letter list",
}


class _Histogram:
    """Bucket counts and a sum, added to by one thread without a lock, read at scrape time (a
    reading may miss the observation being made: the next scrape has it). An observation adds 1
    to counts[bisect_left(bounds, value)] (the first bound >= value: Prometheus's `le`; past
    them all, the last) and value to sums[0]: WorkerMetrics.timed does it inline."""

    __slots__ = ("bounds", "counts", "sums")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(bound) for bound in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sums = [0.0]

    def family(self, name: str, documentation: str, queue: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.sums[0]
        buckets, cumulative = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family = HistogramMetricFamily(name, documentation, labels=["queue"])
        family.add_metric([queue], buckets, total)
        return family


class WorkerMetrics(Collector):
    """A worker's metrics, labelled by queue: pass it to Worker(metrics=...), then serve() it
    (or read `registry` yourself)."""

    def __init__(self, queue: Queue, registry: CollectorRegistry | None = None) -> None:
        self.queue = queue
        self.registry = CollectorRegistry() if registry is None else registry
        self.counts = dict.fromkeys(OUTCOMES, 0)  # the worker loop's
        self._recovery = {"recovered": 0, "dead_lettered": 0}  # the housekeeper's
        self.handler_seconds = _Histogram(HANDLER_BUCKETS)
        self.wait_seconds = _Histogram(WAIT_BUCKETS)
        self._server: WSGIServer | None = None
        self.registry.register(self)

    # -- what the worker calls ---------------------------------------------------------------

    def timed(self, run: Callable[[Message], None]) -> Callable[[Message], None]:
        """`run` (one try of the handler), measured: the wait since the message's created_at,
        the try's duration whatever its end, and `completed` when it returns. Inlined, bound to
        locals: this runs for every message."""
        counts, clock, now, bucket = self.counts, time.perf_counter, self.queue.store.clock.now, bisect.bisect_left
        wait_bounds, wait_counts, wait_sums = self.wait_seconds.bounds, self.wait_seconds.counts, self.wait_seconds.sums
        handler_bounds, handler_counts, handler_sums = self.handler_seconds.bounds, self.handler_seconds.counts, self.handler_seconds.sums

        def timed_run(msg: Message) -> None:
            created = msg.fields.get("created_at")
            if type(created) is float or type(created) is int:  # absent or odd in a hand-written message
                waited = now() - created
                if waited < 0:  # created an instant ahead of the clock this host reads Redis's by
                    waited = 0.0
                wait_counts[bucket(wait_bounds, waited)] += 1
                wait_sums[0] += waited
            started = clock()
            try:
                run(msg)
            finally:
                seconds = clock() - started
                handler_counts[bucket(handler_bounds, seconds)] += 1
                handler_sums[0] += seconds
            counts["completed"] += 1

        return timed_run

    def completed_elsewhere(self, seconds: float) -> None:
        """A try a child process ran succeeded, in `seconds` (a supervisor's worker)."""
        bounds = self.handler_seconds.bounds
        self.handler_seconds.counts[bisect.bisect_left(bounds, seconds)] += 1
        self.handler_seconds.sums[0] += seconds
        self.counts["completed"] += 1

    def failed(self, dead: bool) -> None:
        """A try failed (or the element was malformed): retried, or dead-lettered."""
        self.counts["dead_lettered" if dead else "retried"] += 1

    def duplicate_skipped(self) -> None:
        self.counts["duplicate_skipped"] += 1

    def recovered(self, dead_lettered: bool) -> None:
        """From the housekeeper: a message taken back from a dead worker (and dead-lettered when
        its attempts were used up), counted as the stats counters count it."""
        self._recovery["recovered"] += 1
        if dead_lettered:
            self._recovery["dead_lettered"] += 1

    # -- serving -----------------------------------------------------------------------------

    def serve(self, port: int, log: FilteringBoundLogger, address: str = ADDRESS) -> None:
        """Serve /metrics over HTTP on `port` from a daemon thread; raises OSError when the port
        cannot be bound."""
        self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics_serving", port=port, address=address)

    def close(self) -> None:
        """Stop serving (for tests and embedders; a worker process just exits)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- scraping ----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        name = self.queue.name
        messages = CounterMetricFamily("workqueue_messages", "messages this worker settled, by outcome", labels=["queue", "outcome"])
        for outcome in OUTCOMES:
            messages.add_metric([name, outcome], self.counts[outcome] + self._recovery.get(outcome, 0))
        yield messages
        yield self.handler_seconds.family("workqueue_handler_seconds", "duration of one try of the handler", name)
        yield self.wait_seconds.family("workqueue_wait_seconds", "from a message's created_at to the start of a try", name)
        depths = self._depths()
        if depths is None:
            return
        for depth, documentation in DEPTHS.items():
            gauge = GaugeMetricFamily(f"workqueue_{depth}", documentation, labels=["queue"])
            gauge.add_metric([name], depths[depth])
            yield gauge

    def _depths(self) -> dict[str, int] | None:
        """The queue's depths from Redis, in two cheap round trips (LLEN and ZCARD, which the
        worker's ACL user may run, unlike the stats script's reads); None when Redis fails."""
        keys, client = self.queue.keys, self.queue.client
        try:
            pipe = client.pipeline(transaction=False)
            pipe.llen(keys.pending)
            pipe.zcard(keys.delayed)
            pipe.llen(keys.dead_letter)
            pipe.zrange(keys.workers, 0, -1)
            pending, delayed, dead, workers = pipe.execute()
            pipe = client.pipeline(transaction=False)
            for worker_id in workers:
                pipe.llen(keys.in_flight(worker_id))
            held = pipe.execute(raise_on_error=False)  # a key that is not a list holds nothing of ours
        except (RedisError, RedisClusterException, OSError):  # the cluster client's own are no RedisError
            return None
        in_flight = sum(count for count in held if isinstance(count, int))
        return {"pending": int(pending), "in_flight": in_flight, "delayed": int(delayed), "dead": int(dead)}
