"""A worker cut off from Redis, frozen, or whose requests arrive late (issue 12, items 1 and 2).

Each worker joins Redis in a new session at start and after every error; a request of an ended
session is refused (FENCED). These tests show what that buys: a worker presumed dead that comes
back is told its claim is lost and drops what it held, so a recovered message counts once in
`completed`; and a request delayed in the network past a rejoin changes nothing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from faultproxy import FaultProxy
from structlog.testing import capture_logs
from support import Process, RedisServer, script_env, stats, wait_until

from workqueue import Queue, Worker, message
from workqueue.protocol import Outcomes
from workqueue.store.consumer import Consumer
from workqueue.store.transport import SOCKET_TIMEOUT, Command

WORKER_TIMEOUT = 2  # seconds: recovery of a cut-off worker starts after this
SLACK = 5.0


@pytest.fixture
def proxy(shared_redis: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(shared_redis.port) as fault_proxy:
        yield fault_proxy


def refused_requests(client: redis.Redis) -> int:
    """How many requests Redis has refused as of an ended session (its error statistics)."""
    return int(client.info("errorstats").get("errorstat_FENCED", {}).get("count", 0))


def holding_worker(url: str, client: redis.Redis, queue_name: str, processes: Any) -> tuple[Process, str, str]:
    """A worker (through `url`) that has taken the one message pushed, and is working on it for 3 s."""
    worker = processes.start("worker/main.py", "--work-seconds", "3", env=script_env(url, queue_name, WORKER_TIMEOUT=WORKER_TIMEOUT))
    worker_id = worker.wait_for("worker_started", timeout=30)[0]["worker"]  # a Python start on a loaded machine
    message_id = Queue(queue_name, client).push({"job": 1})
    wait_until(lambda: client.llen(Queue(queue_name, client).keys.in_flight(worker_id)) == 1, timeout=SLACK)
    return worker, worker_id, message_id


def held_up(consumer: Consumer, proxy: FaultProxy, commands: list[Command]) -> None:
    """Send `commands` on a connection of `consumer`'s whose bytes the network then holds up
    (until proxy.forward()), and give up on their replies, as a worker does at its socket timeout."""
    channel = consumer.channel()
    channel.send([("PING",)])
    assert channel.read() == [b"PONG"]
    proxy.stall()  # this connection's bytes are held up from now on; new connections pass
    channel.send(commands)
    channel.drop()


def claim_lost_then_counted_once(worker: Process, rescuer: Process, message_id: str, shared_redis: RedisServer, queue_name: str) -> None:
    """The cut-off worker says its claim on `message_id` is lost and drops its success; the rescuer's counts once."""
    [lost] = worker.wait_for("message_claim_lost", timeout=SOCKET_TIMEOUT + SLACK)
    assert lost["id"] == message_id and lost["outcome"] == "done"
    worker.wait_for("worker_rejoined", timeout=SLACK)
    assert [e["id"] for e in rescuer.named("message_processed")] == [message_id]
    counts = stats(shared_redis.url, queue_name)
    assert (counts["completed"], counts["duplicates_skipped"], counts["recovered"], counts["unaccounted"]) == (1, 0, 1, 0)


def rejoined_as_a_new_worker(worker: Process, rescuer: Process, client: redis.Redis, queue_name: str) -> None:
    """With the rescuer stopped, the worker that lost its claim takes and processes new work."""
    rescuer.signal()
    assert rescuer.wait(timeout=SLACK + 5) == 0
    next_id = Queue(queue_name, client).push({"job": 2})
    wait_until(lambda: any(e["id"] == next_id for e in worker.named("message_processed")), timeout=3 + SLACK)
    worker.signal()
    assert worker.wait(timeout=SLACK + 5) == 0


@pytest.mark.slow
def test_a_partitioned_worker_loses_its_claim_and_its_late_success_is_not_counted(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, processes: Any, proxy: FaultProxy
) -> None:
    """A worker partitioned while it holds a message: another recovers and processes it, and the healed worker's late acknowledgement changes nothing."""
    worker, worker_id, message_id = holding_worker(proxy.url, client, queue_name, processes)
    proxy.partition()
    rescuer = processes.start("worker/main.py", "--work-seconds", "0.5", env=script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=WORKER_TIMEOUT))
    rescuer.wait_for("message_recovered", timeout=WORKER_TIMEOUT + SLACK)
    rescuer.wait_for("message_processed", timeout=SLACK)
    fenced = refused_requests(client)
    proxy.heal()  # the worker's acknowledgement, sent into the partition, reaches Redis now
    claim_lost_then_counted_once(worker, rescuer, message_id, shared_redis, queue_name)
    assert refused_requests(client) > fenced
    assert client.llen(Queue(queue_name, client).keys.in_flight(worker_id)) == 0
    rejoined_as_a_new_worker(worker, rescuer, client, queue_name)


@pytest.mark.slow
def test_a_frozen_worker_loses_its_claim_and_its_late_success_is_not_counted(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, processes: Any
) -> None:
    """A worker frozen (SIGSTOP) while it holds a message: another recovers and processes it, and the thawed worker's success changes nothing."""
    worker, _, message_id = holding_worker(shared_redis.url, client, queue_name, processes)
    worker.signal(signal.SIGSTOP)
    try:
        rescuer = processes.start("worker/main.py", "--work-seconds", "0.5", env=script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=WORKER_TIMEOUT))
        rescuer.wait_for("message_recovered", timeout=WORKER_TIMEOUT + SLACK)
        rescuer.wait_for("message_processed", timeout=SLACK)
    finally:
        worker.signal(signal.SIGCONT)
    claim_lost_then_counted_once(worker, rescuer, message_id, shared_redis, queue_name)
    rejoined_as_a_new_worker(worker, rescuer, client, queue_name)


def test_a_fetch_delayed_in_the_network_past_a_rejoin_takes_nothing(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, proxy: FaultProxy
) -> None:
    """A fetch stuck in the network while its worker gave up and rejoined reaches Redis late and is refused: it takes nothing."""
    Queue(queue_name, client).push_many({"n": i} for i in range(5))
    consumer = Queue.connect(proxy.url, queue_name).consumer("w-late")
    consumer.join()
    held_up(consumer, proxy, consumer.requests(10, None))
    assert consumer.join()
    fenced, links = refused_requests(client), proxy.open_connections
    proxy.forward()  # the fetch arrives, late; Redis answers it, then sees the close
    wait_until(lambda: proxy.open_connections < links, timeout=SLACK)
    assert consumer.in_flight() == []
    assert client.llen(queue_name) == 5
    assert Queue(queue_name, client).stats()["unaccounted"] == 0
    assert refused_requests(client) == fenced + 1


def test_an_acknowledgement_whose_reply_is_lost_counts_once(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, proxy: FaultProxy
) -> None:
    """An acknowledgement stuck in the network is resent after the worker rejoins; the late original, refused, counts nothing."""
    message_id = Queue(queue_name, client).push({"n": 1})
    consumer = Queue.connect(proxy.url, queue_name).consumer("w-ack")
    [(raw, _)] = consumer.fetch(1).taken
    outcomes = Outcomes()
    outcomes.done(raw, message_id)
    held_up(consumer, proxy, consumer.requests(None, outcomes))
    assert consumer.join()  # what Worker does after the error: rejoin, then resend
    assert consumer.settle(outcomes) == [True]
    fenced, links = refused_requests(client), proxy.open_connections
    proxy.forward()
    wait_until(lambda: proxy.open_connections < links, timeout=SLACK)
    counts = Queue(queue_name, client).stats()
    assert (counts["completed"], counts["duplicates_skipped"], counts["in_flight"], counts["unaccounted"]) == (1, 0, 0, 0)
    assert refused_requests(client) == fenced + 1


def test_a_wait_delayed_in_the_network_past_a_rejoin_puts_its_message_back(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, proxy: FaultProxy
) -> None:
    """A wait for work (BLMOVE) that reaches Redis after its worker rejoined moves a message, and puts it straight back at the head of the queue."""
    consumer = Queue.connect(proxy.url, queue_name).consumer("w-late-wait")
    consumer.join()
    held_up(consumer, proxy, consumer.wait_requests(5.0))
    assert consumer.join()
    queue = Queue(queue_name, client)
    first, second = queue.push({"n": 1}), queue.push({"n": 2})
    links = proxy.open_connections
    proxy.forward()  # the wait arrives late: its BLMOVE takes the first message at once
    wait_until(lambda: proxy.open_connections < links, timeout=SLACK)
    assert [m.id for m in map(message.decode, client.lrange(queue_name, 0, -1))] == [first, second]
    assert consumer.in_flight() == [] and client.llen(queue.keys.landing("w-late-wait")) == 0
    assert queue.stats()["unaccounted"] == 0


def test_a_worker_id_reused_with_a_clock_behind_joins_above_the_recorded_session(client: redis.Redis, queue_name: str) -> None:
    """A consumer whose worker id has a recorded session ahead of its clock (an earlier process's) joins above it, and its requests pass."""
    queue = Queue(queue_name, client)
    ahead = 9_000_000_000_000_000  # microseconds: far beyond this clock
    client.hset(queue.keys.sessions, "w-reused", ahead)
    consumer = queue.consumer("w-reused")
    assert consumer.join()
    assert consumer.session == ahead + 1 and client.hget(queue.keys.sessions, "w-reused") == str(ahead + 1).encode()
    queue.push({"n": 1})
    [(raw, duplicate)] = consumer.fetch(1).taken
    assert not duplicate and consumer.in_flight() == [raw]


@pytest.mark.slow
def test_a_frozen_workers_late_success_does_not_turn_the_waiting_copy_into_a_duplicate(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, processes: Any
) -> None:
    """A frozen worker thawed while the recovered copy still waits in the queue: its success is dropped, and the copy runs and counts once in `completed`."""
    worker, _, message_id = holding_worker(shared_redis.url, client, queue_name, processes)
    queue = Queue(queue_name, client)
    worker.signal(signal.SIGSTOP)
    try:
        queue.pause()  # so the recovered copy waits in the queue while the frozen worker thaws
        rescuer = processes.start("worker/main.py", env=script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=WORKER_TIMEOUT))
        rescuer.wait_for("message_recovered", timeout=WORKER_TIMEOUT + SLACK)
    finally:
        worker.signal(signal.SIGCONT)
    [lost] = worker.wait_for("message_claim_lost", timeout=3 + SLACK)
    assert (lost["id"], lost["outcome"]) == (message_id, "done")
    assert [m.id for m in map(message.decode, queue.peek())] == [message_id]  # the copy waits, untouched
    queue.resume()
    wait_until(lambda: queue.stats()["completed"] == 1 and queue.stats()["pending"] == 0, timeout=3 + SLACK)
    processed = [e for p in (worker, rescuer) for e in p.named("message_processed") if e["attempts"] == 1]
    assert [e["id"] for e in processed] == [message_id]  # the copy (one attempt more) ran once
    counts = stats(shared_redis.url, queue_name)
    assert (counts["completed"], counts["duplicates_skipped"], counts["unaccounted"]) == (1, 0, 0)


def test_a_worker_stopped_with_a_fetch_refused_as_of_its_ended_session_leaves_cleanly(shared_redis, queue_name):
    """A worker presumed dead while its fetch ahead was on its way (recovery ended its session) is stopped: leaving rejoins, puts back nothing that is not its own, deregisters, and raises nothing."""
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many({"n": i} for i in range(20))
    worker = Worker(queue, lambda m: None, worker_timeout=5)
    worker._session.sync()
    admin = shared_redis.client()
    admin.hdel(queue.keys.sessions, worker.id)  # what recovery does to a worker it presumed dead
    admin.zrem(queue.keys.workers, worker.id)
    worker._pipeline.ask(10)  # refused: FENCED
    with capture_logs() as logs:
        worker._leave()
    assert [e["deregistered"] for e in logs if e["event"] == "worker_stopped"] == [True]
    result = queue.stats()
    assert result["pending"] == 20 and result["workers"] == 0 and result["unaccounted"] == 0
