"""Hostile elements and frozen workers: one bad element or one frozen wait stops nothing else."""

import json
import signal
import threading

import pytest
from structlog.testing import capture_logs
from support import RedisServer, run, running, script_env, stats, wait_until

from workqueue import Queue, Worker, message
from workqueue.message import MAX_NESTING, MalformedMessage
from workqueue.store.recovery import recover_dead_workers


def deep(levels: int) -> bytes:
    """A small JSON document nested `levels` deep, as a hand-written element."""
    return b'{"id":"deep","body":' + b"[" * levels + b"]" * levels + b"}"


HOSTILE = {
    "empty": b"",
    "invalid utf-8": b'{"id":"\xff\xfe"}',
    "nan": b'{"id":"n","body":NaN}',
    "infinity": b'{"id":"i","body":-Infinity}',
    "huge integer": b'{"id":"h","body":' + b"9" * 5000 + b"}",
    "nested 101": deep(MAX_NESTING + 1),
    "nested 1000": deep(1000),
    "nested 100000": deep(100_000),
    "a string": b'"[[[[[[[[[[' + b"[" * 200 + b'"',
    "id a number": b'{"id":7}',
    "attempts negative": b'{"id":"a","attempts":-1}',
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_decode_refuses_hostile_elements_with_the_one_malformed_error(raw):
    """Whatever the bytes, decode raises MalformedMessage and nothing else."""
    with pytest.raises(MalformedMessage):
        message.decode(raw)


def test_decode_takes_100_megabytes_and_nesting_at_the_limit():
    """A 100 MB message decodes; so does one nested exactly MAX_NESTING deep, and it re-encodes."""
    big = message.decode(b'{"id":"big","body":"' + b"a" * 100_000_000 + b'"}')
    assert len(big.body) == 100_000_000
    levels = MAX_NESTING - 1  # the message object itself is the first level
    at_limit = message.decode(b'{"id":"edge","body":' + b"[" * levels + b"]" * levels + b"}")
    assert message.decode(at_limit.failed("boom")).attempts == 1


def test_push_refuses_bodies_a_worker_would_dead_letter(queue):
    """NaN and nesting past the limit raise ValueError at push time; nothing reaches Redis."""
    nested: list = []
    for _ in range(MAX_NESTING):
        nested = [nested]
    for body in (float("nan"), {"x": nested}):
        with pytest.raises(ValueError):
            queue.push(body)
    assert queue.stats()["produced"] == 0 and queue.stats()["pending"] == 0


def test_deeply_nested_elements_among_good_messages_end_alone_in_the_dead_letter_list(shared_redis, client, queue_name, queue):
    """Elements nested 1,000 and 100,000 deep: a --burst worker exits 0, good ones processed, bad ones dead with the reason."""
    first = queue.push({"n": 1})
    client.rpush(queue_name, deep(1000))
    second = queue.push({"n": 2})
    client.rpush(queue_name, deep(100_000))
    third = queue.push({"n": 3})
    code, events, stderr = run("worker/main.py", "--burst", env=script_env(shared_redis.url, queue_name), timeout=60)
    assert code == 0, stderr
    assert [e["id"] for e in events if e["event"] == "message_processed"] == [first, second, third]
    assert not [e for e in events if e["event"] in ("worker_error", "housekeeping_failed")]
    dead = [json.loads(raw) for raw in client.lrange(f"{{{queue_name}}}:dead", 0, -1)]
    assert [d["error"] for d in dead] == [f"malformed message: not valid JSON: nested deeper than {MAX_NESTING} levels"] * 2
    assert [d["raw"].encode() for d in dead] == [deep(1000), deep(100_000)]
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 3 and result["dead"] == 2 and result["pending"] == 0 and result["in_flight"] == 0


def test_recovery_goes_on_past_a_hostile_element_and_a_hostile_worker_id(client, queue_name, queue):
    """Dead workers' lists holding a 100,000-deep element and good messages: the good ones are processed, the bad one dead-lettered, even beside a worker id that is not UTF-8."""
    good = queue.push({"n": 1})
    client.rpush(queue_name, deep(100_000))
    taken = queue.consumer("dead-1", worker_timeout=0.001).fetch(10).taken  # registered for 1 ms, then silent
    other = queue.push({"n": 2})
    queue.consumer("dead-2", worker_timeout=0.001).fetch(10)
    assert len(taken) == 2
    client.zadd(queue.keys.workers, {b"\xff\xfe-hand-written": 0})
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id), worker_timeout=5)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: sorted(seen) == sorted([good, other]), timeout=15)
    [dead] = [json.loads(raw) for raw in client.lrange(f"{{{queue_name}}}:dead", 0, -1)]
    assert dead["raw"].encode() == deep(100_000) and "nested deeper" in dead["error"]
    recovered = [e for e in logs if e["event"] == "message_recovered"]
    assert {(e["dead_worker"], e["id"], e["dead_lettered"]) for e in recovered} == {
        ("dead-1", good, False), ("dead-1", None, True), ("dead-2", other, False),
    }
    assert not [e for e in logs if e["event"] in ("worker_error", "housekeeping_failed")]
    assert client.zscore(queue.keys.workers, b"\xff\xfe-hand-written") is None  # deregistered too


def test_a_wait_that_outlives_its_workers_registration_puts_the_message_back(shared_redis, client, queue_name):
    """A BLMOVE still pending after its worker was presumed dead and deregistered: the message it takes goes back to the queue."""
    queue = Queue.connect(shared_redis.url, queue_name)
    result = []
    waiter = threading.Thread(target=lambda: result.append(queue.consumer("w-frozen", worker_timeout=0.2).block(5.0)))
    waiter.start()
    wait_until(lambda: any(c["cmd"] == "blmove" for c in client.client_list()), timeout=5)
    # As another worker's housekeeping would: the silent worker is presumed dead and, holding
    # nothing, deregistered, while its wait is still pending in Redis.
    recoverer = queue.consumer("recoverer")
    wait_until(lambda: recover_dead_workers(recoverer, queue.retry) == [] and client.zscore(queue.keys.workers, "w-frozen") is None, timeout=5)
    message_id = queue.push({"n": 1})
    waiter.join(timeout=10)
    assert result == [[]]
    assert [message.decode(raw).id for raw in client.lrange(queue_name, 0, -1)] == [message_id]
    assert client.llen(queue.keys.in_flight("w-frozen")) == 0
    assert queue.stats()["unaccounted"] == 0


def test_a_worker_frozen_while_waiting_then_killed_loses_nothing(shared_redis, client, queue_name, processes):
    """A worker SIGSTOPped in its wait at the smallest WORKER_TIMEOUT, then killed: another worker processes the next message; stats balance."""
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT="1")
    frozen = processes.start("worker/main.py", env=env)
    frozen.wait_for("worker_started", timeout=20)
    wait_until(lambda: any(c["cmd"] == "blmove" for c in client.client_list()), timeout=10)
    frozen.signal(signal.SIGSTOP)
    live = processes.start("worker/main.py", env=env)
    live.wait_for("worker_started", timeout=20)
    frozen_id = frozen.named("worker_started")[0]["worker"]
    wait_until(lambda: client.zscore(f"{{{queue_name}}}:workers", frozen_id) is None, timeout=15)
    message_id = Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    [processed] = live.wait_for("message_processed", timeout=15)
    assert processed["id"] == message_id
    frozen.kill()
    live.signal(signal.SIGTERM)
    assert live.wait(timeout=30) == 0
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 1 and result["in_flight"] == 0 and result["unaccounted"] == 0


def test_a_big_element_that_is_not_utf8_is_dead_lettered_whole_within_what_redis_takes(tmp_path, queue_name):
    """400 KB of 0xFF bytes under a 1 MB proto-max-bulk-len: dead-lettered as base64 (escaped text would be 2.4 MB), the rest goes on."""
    import base64

    server = RedisServer(tmp_path / "redis", extra=("--proto-max-bulk-len", "1mb")).start()
    try:
        queue = Queue.connect(server.url, queue_name)
        client = server.client()
        element = b"\xff" * 400_000
        client.rpush(queue_name, element)
        good = queue.push({"n": 1})
        seen = []
        with capture_logs() as logs:
            assert Worker(queue, lambda m: seen.append(m.id), burst=True).run() == 0
        assert seen == [good]
        assert not [e for e in logs if e["event"] in ("worker_error", "redis_unavailable")]
        [dead] = [json.loads(raw) for raw in client.lrange(queue.keys.dead_letter, 0, -1)]
        assert base64.b64decode(dead["raw_base64"]) == element and dead["error"].startswith("malformed message: ")
    finally:
        server.stop()


@pytest.mark.parametrize("delivery", ["reliable", "simple"])
def test_a_handler_that_changes_its_message_then_fails_retries_the_message_as_pushed(shared_redis, client, queue_name, delivery):
    """A handler that puts a datetime into the body and fails: each retry gets the pushed body; it ends dead-lettered."""
    import datetime

    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=3, retry_backoff=0.001)
    message_id = queue.push({"n": 1})
    bodies = []

    def handler(msg):
        bodies.append(dict(msg.body))
        msg.body["when"] = datetime.datetime.now()
        raise ValueError("failed after changing the message")

    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True, delivery=delivery).run() == 0
    assert bodies == [{"n": 1}] * 3
    [dead] = [json.loads(raw) for raw in client.lrange(queue.keys.dead_letter, 0, -1)]
    assert dead["id"] == message_id and dead["attempts"] == 3 and dead["body"] == {"n": 1}
    assert not [e for e in logs if e["event"] == "worker_error"]
    assert queue.stats()["unaccounted"] == 0


def test_a_number_too_large_for_a_float_survives_failed_tries_and_requeueing(shared_redis, client, queue_name):
    """A body of 1e400: after a failed try and a requeue the message still decodes, with its number's text kept."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    client.rpush(queue_name, b'{"id":"big-number","attempts":0,"body":1e400}')
    assert Worker(queue, lambda m: 1 / 0, burst=True).run() == 0
    [dead] = client.lrange(queue.keys.dead_letter, 0, -1)
    assert b"1e400" in dead and message.decode(dead).attempts == 1
    requeued = queue.dead.requeue()
    assert (requeued.changed, requeued.malformed_left) == (1, 0)
    [requeued] = client.lrange(queue_name, 0, -1)
    assert b"1e400" in requeued and message.decode(requeued).attempts == 0 and message.decode(requeued).fields.get("error") is None


def test_a_hand_written_registration_whose_list_is_not_a_list_is_dropped(client, queue):
    """A registered worker id whose in-flight key holds a string: recovery drops it (registration_dropped), stats work, workers go on."""
    client.zadd(queue.keys.workers, {"ghost": 0})
    client.set(queue.keys.in_flight("ghost"), "not a list")
    good = queue.push({"n": 1})
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id))
    with capture_logs() as logs, running(worker):
        wait_until(lambda: seen == [good] and any(e["event"] == "registration_dropped" for e in logs), timeout=15)
        assert queue.stats()["unaccounted"] == 0
    [dropped] = [e for e in logs if e["event"] == "registration_dropped"]
    assert dropped["dead_worker"] == "ghost" and dropped["log_level"] == "error"
    assert client.zscore(queue.keys.workers, "ghost") is None


def test_recovery_goes_on_past_a_landing_key_that_is_no_list(client, queue):
    """A dead worker whose landing key was written by hand as a string: its message is recovered and processed, and no worker stops."""
    good = queue.push({"n": 1})
    queue.consumer("dead-landing", worker_timeout=0.001).fetch(10)  # registered for 1 ms, then silent
    client.set(queue.keys.landing("dead-landing"), "not a list")
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id), worker_timeout=5)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: seen == [good], timeout=15)
    assert [(e["dead_worker"], e["id"]) for e in logs if e["event"] == "message_recovered"] == [("dead-landing", good)]
    assert not [e for e in logs if e["event"] in ("worker_error", "housekeeping_failed")]
    assert client.zscore(queue.keys.workers, "dead-landing") is None and queue.stats()["unaccounted"] == 0


def test_a_session_written_by_hand_does_not_stop_a_worker_joining(client, queue_name):
    """A worker id whose recorded session is not a number (written by hand) still joins, and its requests pass."""
    queue = Queue(queue_name, client)
    client.hset(queue.keys.sessions, "w-garbage", "not a number")
    consumer = queue.consumer("w-garbage")
    assert consumer.join()
    queue.push({"n": 1})
    [(raw, _)] = consumer.fetch(1).taken
    assert consumer.in_flight() == [raw]


@pytest.mark.slow
@pytest.mark.parametrize("fill", [b'"', b"\xff"], ids=["quotes (escaping doubles them)", "not UTF-8 (base64 grows by a third)"])
def test_an_element_too_big_to_keep_whole_is_dead_lettered_as_its_head_size_and_hash(own_redis, queue_name, fill):
    """An element of 70 MB that is not a message (quotes, or bytes that are not UTF-8) is dead-lettered by Redis, never sent, as its first 4 KiB, its size and its SHA-1, and the messages around it complete."""
    import base64
    import hashlib

    client = own_redis.client()
    queue = Queue.connect(own_redis.url, queue_name)
    before = queue.push({"n": 1})
    huge = fill * (70 * 1024 * 1024)
    client.rpush(queue_name, huge)
    after = queue.push({"n": 2})
    seen = []
    assert Worker(queue, lambda m: seen.append(m.id), burst=True).run() == 0
    [dead] = [json.loads(raw) for raw in client.lrange(f"{{{queue_name}}}:dead", 0, -1)]
    assert dead["truncated"] is True and dead["size"] == len(huge) and dead["sha1"] == hashlib.sha1(huge).hexdigest()
    assert base64.b64decode(dead["raw_base64"]) == huge[:4096] and dead["error"].startswith("malformed message: too large: ")
    assert seen == [before, after] and queue.stats()["unaccounted"] == -1  # pushed by hand: never counted as produced
