"""The worker's request pipeline: a settle packed ahead of its send is sent only while still current."""

import json

from workqueue import Queue
from workqueue.protocol import Taken
from workqueue.store.consumer import Consumer
from workqueue.worker.pipeline import RequestPipeline


def _first_batch(url: str, queue_name: str) -> tuple[Queue, Consumer, RequestPipeline, Taken]:
    """A queue of 30 messages, a joined consumer's pipeline, and its first batch of 10."""
    queue = Queue.connect(url, queue_name)
    queue.push_many({"n": i} for i in range(30))
    consumer = queue.consumer("w1", "reliable")
    consumer.join()  # as the worker's session does before its first fetch
    pipeline = RequestPipeline(consumer)
    first = pipeline.fetch(10).taken
    return queue, consumer, pipeline, first


def _done(pipeline: RequestPipeline, taken: Taken) -> None:
    """Record every message of `taken` as completed, as the worker loop does."""
    for raw, _ in taken:
        pipeline.outcomes.done(raw, json.loads(raw)["id"])


def _next_batch_settles_the_first(queue: Queue, pipeline: RequestPipeline, first: Taken) -> None:
    """Fetch the second batch ahead, as the worker does, and check Redis settled the first."""
    assert pipeline.fetch_ahead(10, first)
    second, _ = pipeline.take_next()
    assert len(second) == 10 and pipeline.settled
    stats = queue.stats()
    assert stats["completed"] == 10 and stats["in_flight"] == 10 and stats["unaccounted"] == 0


def test_outcomes_added_after_packing_are_settled_too(shared_redis, queue_name):
    """A settle packed ahead, then joined by more outcomes before its send, settles all of them."""
    queue, _, pipeline, first = _first_batch(shared_redis.url, queue_name)
    _done(pipeline, first[:5])
    pipeline.pack_ahead()  # as the worker does when a batch ends; here five more finish after it
    _done(pipeline, first[5:])
    _next_batch_settles_the_first(queue, pipeline, first)


def test_a_settle_packed_in_an_ended_session_goes_out_in_the_new_one(shared_redis, queue_name):
    """After a rejoin between packing and sending, the settle is sent in the new session and applies (not refused as FENCED)."""
    queue, consumer, pipeline, first = _first_batch(shared_redis.url, queue_name)
    _done(pipeline, first)
    pipeline.pack_ahead()
    assert consumer.join()  # a new session, as after a connection error: our claim on the batch holds
    _next_batch_settles_the_first(queue, pipeline, first)


def test_outcomes_settled_and_renumbered_after_packing_are_packed_again(shared_redis, queue_name):
    """Outcomes settled after packing (as after an error), then as many new ones: the new ones are sent under their own number and apply."""
    queue, _, pipeline, first = _first_batch(shared_redis.url, queue_name)
    _done(pipeline, first[:5])
    pipeline.pack_ahead()
    pipeline.settle_all()  # applies the five and numbers the outcomes anew, in the same object
    _done(pipeline, first[5:])  # as many arguments as were packed
    _next_batch_settles_the_first(queue, pipeline, first)


def test_a_packed_settle_unchanged_settles_with_the_next_fetch(shared_redis, queue_name):
    """With nothing added since packing, the batch's settle applies in the same request as the next fetch."""
    queue, _, pipeline, first = _first_batch(shared_redis.url, queue_name)
    _done(pipeline, first)
    pipeline.pack_ahead()
    _next_batch_settles_the_first(queue, pipeline, first)
