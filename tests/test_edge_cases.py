"""Edge cases found in review: odd text, full memory, lost replies, big batches."""

import json
import time

import pytest
import redis
from structlog.testing import capture_logs
from support import free_port, running, wait_until

from workqueue import Queue, RedisRefused, Worker, message
from workqueue.protocol import Outcomes
from workqueue.store.consumer import Consumer
from workqueue.store.recovery import recover_dead_workers
from workqueue.store.transport import Channel


def test_unencodable_id_is_dead_lettered_and_odd_error_text_survives(shared_redis, client, queue_name):
    """An id with a lone surrogate is malformed; an exception text with one is kept escaped."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    client.rpush(queue_name, '{"id": "\\ud800x", "attempts": 0, "body": 1}')
    queue.push({"n": 1})

    def handler(message):
        raise ValueError("cannot read /tmp/\udcff")

    Worker(queue, handler, burst=True).run()
    malformed, failed = [json.loads(raw) for raw in client.lrange(f"{{{queue_name}}}:dead", 0, -1)]
    assert "not valid Unicode" in malformed["error"]
    assert failed["error"] == "ValueError: cannot read /tmp/\udcff" and failed["attempts"] == 1


def test_worker_runs_what_waits_while_redis_is_out_of_memory_and_warns_while_it_cannot_wait(own_redis, queue_name):
    """With Redis refusing writes (maxmemory), the worker still runs the message waiting, warns while Redis refuses its wait for more (BLMOVE), then goes on."""
    queue = Queue.connect(own_redis.url, queue_name)
    queue.push({"n": 1})
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id), worker_timeout=5)
    admin = own_redis.client()
    admin.config_set("maxmemory", 1)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: seen and any(e["event"] == "redis_unavailable" for e in logs), timeout=10)
        admin.config_set("maxmemory", 0)
        queue.push({"n": 2})
        wait_until(lambda: len(seen) == 2, timeout=15)
    unavailable = [e for e in logs if e["event"] == "redis_unavailable"][0]
    assert unavailable["log_level"] == "warning" and "OutOfMemoryError" in unavailable["error"]
    assert any(e["event"] == "redis_available" for e in logs)
    assert queue.stats()["completed"] == 2


@pytest.mark.parametrize("delivery", ["reliable", "simple"])
def test_resent_settle_after_a_lost_reply_changes_nothing(shared_redis, client, queue_name, delivery):
    """Settling the same numbered batch twice (a resend after a lost reply) applies it once."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    queue.push({"n": 1})
    consumer = queue.consumer("w1", delivery)
    taken = consumer.fetch(10).taken
    [(raw, _)] = taken
    outcomes = Outcomes()
    queue.retry.failed(outcomes, message.decode(raw), "boom")
    resend = Outcomes(list(outcomes.args), sequence=outcomes.sequence)
    assert consumer.settle(outcomes) == [True]
    assert consumer.settle(resend) == []
    assert client.llen(f"{{{queue_name}}}:dead") == 1
    result = queue.stats()
    assert result["dead_lettered"] == 1 and result["unaccounted"] == 0


def test_a_batch_larger_than_luas_stack_settles_whole(queue):
    """4,500 completions in one settle call are all applied (the ZADD is sliced)."""
    queue.push_many({"n": i} for i in range(4500))
    outcomes, consumer = Outcomes(), queue.consumer("w1", "reliable")
    while True:
        taken = consumer.fetch(1000).taken
        if not taken:
            break
        for raw, _ in taken:
            outcomes.done(raw, json.loads(raw)["id"])
    assert len(consumer.settle(outcomes)) == 4500
    result = queue.stats()
    assert result["completed"] == 4500 and result["in_flight"] == 0 and result["unaccounted"] == 0


def test_a_fetch_takes_at_most_an_even_share_of_the_queue_among_live_workers(client, queue):
    """Three live workers (one more registered but expired), ten messages waiting: a fetch of fifty takes four (a third, rounded up); asked again while holding those, one; with the other two gone, the five left."""
    queue.push_many({"n": i} for i in range(10))
    others = [queue.consumer(name) for name in ("w2", "w3")]
    for other in others:
        other.join()
    expired = queue.consumer("w4", worker_timeout=0.001)
    expired.join()

    def deadline_passed() -> bool:  # by the Redis clock, which the fetch reads
        seconds, micros = client.time()
        return client.zscore(queue.keys.workers, "w4") < seconds * 1000 + micros // 1000  # whole ms, as the scripts read it

    wait_until(deadline_passed, timeout=5)
    consumer = queue.consumer("w1")
    assert len(consumer.fetch(50).taken) == 4
    assert len(consumer.fetch(50).taken) == 1  # it holds four: its share of the ten is that already
    for other in others:
        assert other.deregister()
    assert len(consumer.fetch(50).taken) == 5


def test_prefetch_outside_what_lua_can_unpack_is_refused(shared_redis, queue_name):
    """Worker(prefetch=5000) raises instead of failing later inside a script."""
    with pytest.raises(ValueError):
        Worker(Queue.connect(shared_redis.url, queue_name), print, prefetch=5000)


def test_messages_moved_by_a_lost_fetch_reply_are_adopted(queue_name, queue):
    """Messages in a worker's in-flight list that it never received are found and processed."""
    ids = queue.push_many({"n": i} for i in range(3))
    queue.consumer("worker-a").fetch(10)  # as if the reply had been lost on the way
    seen = []
    with capture_logs() as logs:
        Worker(queue, lambda m: seen.append(m.id), worker_id="worker-a", burst=True).run()
    assert seen == ids
    assert {"event": "in_flight_adopted", "count": 3, "log_level": "warning", "queue": queue_name, "worker": "worker-a"} in logs
    assert queue.stats()["unaccounted"] == 0


def test_recovery_skips_live_workers_and_takes_from_dead_ones(client, queue_name, queue):
    """Recovery leaves a live worker's messages alone and requeues a dead one's with attempts + 1."""
    queue.push({"n": 1})
    queue.push({"n": 2})
    queue.consumer("alive", worker_timeout=60).fetch(1)
    queue.consumer("dead", worker_timeout=0.001).fetch(1)
    time.sleep(0.05)
    recoverer = queue.consumer("recoverer")
    recovered = recover_dead_workers(recoverer, queue.retry)
    assert [(r.worker_id, r.attempts, r.dead_lettered) for r in recovered] == [("dead", 1, False)]
    assert client.llen(f"{{{queue_name}}}:in_flight:alive") == 1
    assert json.loads(client.lindex(queue_name, 0))["attempts"] == 1
    assert recover_dead_workers(recoverer, queue.retry) == []  # a second recoverer finds nothing to do
    assert queue.stats()["recovered"] == 1 and queue.stats()["workers"] == 1


def test_redis_connection_refused_at_startup_is_not_a_traceback(queue_name):
    """A worker pointed at a closed port logs redis_unavailable warnings rather than crashing."""
    queue = Queue.connect(f"redis://127.0.0.1:{free_port()}/0", queue_name)
    worker = Worker(queue, print)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: len([e for e in logs if e["event"] == "redis_unavailable"]) >= 2, timeout=10)
    assert all(isinstance(e["retry_in"], float) for e in logs if e["event"] == "redis_unavailable")


def test_a_queue_key_of_the_wrong_type_stops_the_worker_with_a_refusal(shared_redis, client, queue_name):
    """A queue key holding a string (WRONGTYPE) is configuration, not an outage: run() raises RedisRefused."""
    client.set(queue_name, "not a list")
    worker = Worker(Queue.connect(shared_redis.url, queue_name), lambda m: None)
    with capture_logs() as logs, pytest.raises(RedisRefused, match="another type of value"):
        worker.run(install_signals=False)
    assert not [e for e in logs if e["event"] in ("worker_error", "redis_unavailable")]


def test_an_unexpected_error_is_logged_and_the_worker_goes_on(monkeypatch, queue):
    """An error of no known kind (here a bug in building a fetch, once) logs worker_error with its traceback; work resumes."""
    real_requests, calls = Consumer.requests, []

    def requests_failing_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug")
        return real_requests(self, *args, **kwargs)

    monkeypatch.setattr(Consumer, "requests", requests_failing_once)
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id))
    with capture_logs() as logs, running(worker):
        wait_until(lambda: any(e["event"] == "worker_error" for e in logs), timeout=10)
        message_id = queue.push({"n": 1})
        wait_until(lambda: seen == [message_id], timeout=10)
    error = [e for e in logs if e["event"] == "worker_error"][0]
    assert error["log_level"] == "error" and error["exc_info"] is True and error["error"] == "ValueError: a bug"


def test_a_message_taken_by_block_is_always_in_a_registered_workers_list(client, queue):
    """block() registers the worker in the same write as BLMOVE, so recovery can find what it takes."""
    [message_id] = queue.push_many([{"n": 1}])
    client.zrem(queue.keys.workers, "w-unlisted")  # as if recovery had presumed it dead meanwhile
    [(raw, duplicate)] = queue.consumer("w-unlisted", "reliable", worker_timeout=30).block(1.0)
    assert message.decode(raw).id == message_id and not duplicate
    assert client.zscore(queue.keys.workers, "w-unlisted") is not None
    assert client.lrange(queue.keys.in_flight("w-unlisted"), 0, -1) == [raw]
    assert queue.stats()["unaccounted"] == 0 and queue.consumer("w-unlisted").block(0.01) == []


def test_adopted_messages_get_the_duplicate_check_their_lost_reply_carried(queue):
    """Messages adopted after a lost fetch reply skip copies of completed ids and repeats among themselves."""
    queue.push({"n": 0}, message_id="done-before")
    Worker(queue, lambda m: None, burst=True).run()
    queue.push({"n": 0}, message_id="done-before")
    ids = queue.push_many({"n": i} for i in range(1, 4))
    queue.push({"n": 9}, message_id="twin")
    queue.push({"n": 9}, message_id="twin")
    queue.consumer("worker-a").fetch(10)  # moved into worker-a's list; the reply is "lost"
    seen = []
    Worker(queue, lambda m: seen.append(m.id), worker_id="worker-a", burst=True).run()
    assert seen == ids + ["twin"]
    result = queue.stats()
    assert result["duplicates_skipped"] == 2 and result["completed"] == 5 and result["unaccounted"] == 0


def test_a_sent_request_whose_replies_are_gone_reports_a_connection_error(client):
    """Reading a request's replies twice raises ConnectionError, which the worker treats as an outage."""
    channel = Channel(client, "sent-test")
    channel.send([("SET", "sent-test", 1), ("GET", "sent-test")])
    assert channel.read() == [b"OK", b"1"]
    with pytest.raises(redis.exceptions.ConnectionError):
        channel.read()
    channel.drop()  # and dropping it again changes nothing
    channel.drop()


def test_a_simple_workers_adopted_message_is_adopted_once_however_often_it_resyncs(client, queue):
    """In simple delivery, a message left in the in-flight list by a lost reply runs once across repeated resyncs."""
    [message_id] = queue.push_many([{"n": 1}])
    client.lmove(queue.keys.pending, queue.keys.in_flight("w-simple"), "LEFT", "RIGHT")  # BLMOVE ran, the pop did not
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id), delivery="simple", worker_id="w-simple", burst=True)
    worker._session.sync()
    worker._session.sync()  # as after a second connection error before the message was settled
    worker.run()
    assert seen == [message_id]
    result = queue.stats()
    assert result["completed"] == 1 and result["in_flight"] == 0 and result["unaccounted"] == 0


@pytest.mark.parametrize("raw", [
    b'{"id":"x","body":123456789012345678901234567890}',
    b'{"id":"x","body":-9223372036854775809}',
    b'{"id":"x","body":18446744073709551615}',
    b'{"id":"x","body":[1e400,-1e400,1.5e-400]}',
    b'{"id":"x","body":"\\ud800 \\u0000 \xc3\xa9"}',
    b' {"id":"x","body":{"a":1,"a":2}} ',
    b'{"id":"x","created_at":1796218040.931641,"body":0.1234567890123456789012}',
])
def test_decode_reads_every_element_as_the_standard_library_does(raw: bytes) -> None:
    """The fast decoder's reading of an element equals the standard library's: no big integer turns into a float, no float changes."""
    assert repr(message.decode(raw).fields) == repr(json.loads(raw))


def test_timestamps_and_ages_follow_the_redis_clock_not_a_skewed_host(shared_redis, client, queue_name, monkeypatch):
    """On a host whose clock is two hours behind, created_at, dead_lettered_at and a pause's time follow Redis's clock, so the oldest pending age is seconds, not hours."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 7200)
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    queue.push({"n": 1})
    queue.push({"n": 2})
    seconds, micros = client.time()
    redis_now = seconds + micros / 1e6
    created = [json.loads(raw)["created_at"] for raw in client.lrange(queue_name, 0, -1)]
    assert all(abs(at - redis_now) < 60 for at in created)
    assert queue.stats()["oldest_pending_age_seconds"] < 60
    Worker(queue, lambda message: 1 / 0, burst=True).run()
    dead = [json.loads(raw)["dead_lettered_at"] for raw in client.lrange(f"{{{queue_name}}}:dead", 0, -1)]
    assert len(dead) == 2 and all(abs(at - redis_now) < 60 for at in dead)
    queue.pause()
    assert abs(float(client.get(f"{{{queue_name}}}:paused")) - redis_now) < 60


def _done_outcomes(taken, sequence: int) -> Outcomes:
    outcomes = Outcomes(sequence=sequence)
    for raw, _ in taken:
        outcomes.done(raw, json.loads(raw)["id"])
    return outcomes


def test_a_settle_refused_while_the_next_one_reaches_redis_applies_both_in_order_when_resent(queue):
    """Settle n refused for a reason that clears (NOSCRIPT) while n + 1, pipelined behind it, reaches Redis: n + 1 is refused as a gap, and resending both, lowest first, applies each once."""
    from redis.exceptions import NoScriptError

    from workqueue.store.transport import send_together

    queue.push_many({"n": i} for i in range(4))
    consumer = queue.consumer("w1", "reliable")
    taken = consumer.fetch(4).taken
    first, second = _done_outcomes(taken[:2], 1), _done_outcomes(taken[2:], 2)
    refused = ("EVALSHA", "0" * 40, *consumer.settle_command(first)[2:])  # a script Redis does not know
    with pytest.raises(NoScriptError):
        send_together(queue.client, queue.keys.pending, [refused, consumer.settle_command(second)])
    assert queue.stats()["in_flight"] == 4  # neither applied
    assert consumer.settle(first) == [True, True] and consumer.settle(second) == [True, True]
    result = queue.stats()
    assert result["completed"] == 4 and result["in_flight"] == 0 and result["unaccounted"] == 0


def test_a_new_process_reusing_a_worker_id_starts_its_settles_afresh(queue):
    """A worker that died after five settles, its id reused by a new process before recovery: the newcomer's first settle (numbered 1) applies, not skipped as a resend."""
    queue.push_many({"n": i} for i in range(6))
    old = queue.consumer("reused", "reliable")
    for sequence in range(1, 6):
        assert old.settle(_done_outcomes(old.fetch(1).taken, sequence)) == [True]
    new = queue.consumer("reused", "reliable")
    assert new.settle(_done_outcomes(new.fetch(1).taken, 1)) == [True]
    result = queue.stats()
    assert result["completed"] == 6 and result["in_flight"] == 0 and result["unaccounted"] == 0


def test_outcomes_out_of_order_settle_in_one_pass_and_keep_the_rest_in_order(client, queue):
    """Outcomes in another order than their messages were taken (several children), some far down a long in-flight list, one naming an element twice and one naming an element not held: each held one applies once, the rest of the list keeps its order."""
    queue.push_many({"n": i} for i in range(300))
    consumer = queue.consumer("w1", "reliable")
    taken = [raw for raw, _ in consumer.fetch(300).taken]
    twin = taken[5]
    client.rpush(queue.keys.in_flight("w1"), twin)  # the same element twice, the copy last
    chosen = [taken[250], taken[7], twin, taken[3], twin, taken[299], taken[120]]
    outcomes = Outcomes(sequence=1)
    for raw in chosen:
        outcomes.done(raw, json.loads(raw)["id"])
    stranger = message.new({"n": "not held"})[1]
    outcomes.done(stranger, "stranger")
    assert consumer.settle(outcomes) == [True] * 7 + [False]
    gone = {250, 7, 5, 3, 299, 120}
    assert client.lrange(queue.keys.in_flight("w1"), 0, -1) == [raw for i, raw in enumerate(taken) if i not in gone]
    assert queue.stats()["completed"] == 7
