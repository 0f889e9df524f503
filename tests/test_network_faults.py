"""Network faults between the scripts and Redis (issue 12), through a fault-injecting proxy on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from faultproxy import FaultProxy
from support import Process, RedisServer, run, script_env, stats, wait_until

from workqueue import Queue
from workqueue.store.transport import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, SOCKET_TIMEOUT, connect

SLACK = 3.0  # seconds on top of a client timeout for a loaded machine: process start-up, log lines, polling


@pytest.fixture
def proxy(shared_redis: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(shared_redis.port) as fault_proxy:
        yield fault_proxy


def first_index(process: Process, name: str) -> int:
    return next(i for i, e in enumerate(process.events) if e.get("event") == name)


# -- the producer, partitioned mid-push (issue 12, item 3) ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 5])
def test_producer_partitioned_mid_push_loses_nothing(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, processes: Any, proxy: FaultProxy, batch: int
) -> None:
    """A producer partitioned from Redis for longer than its socket timeout exits 0 with every message stored, one push twice."""
    count = 80
    env = script_env(proxy.url, queue_name)
    producer = processes.start("app/main.py", "--count", str(count), "--interval", "0.02", "--batch", str(batch), env=env)
    producer.wait_for("message_pushed", timeout=15, count=20)
    proxy.partition()
    partitioned_at = time.monotonic()
    # The push in the partition times out after SOCKET_TIMEOUT; the retry's new connection is
    # accepted and held in the partition too.
    producer.wait_for("redis_unavailable", timeout=SOCKET_TIMEOUT + SLACK)
    wait_until(lambda: proxy.accepted >= 2, timeout=SLACK)
    assert time.monotonic() - partitioned_at >= SOCKET_TIMEOUT
    assert producer.popen.poll() is None
    proxy.heal()
    assert producer.wait(timeout=30) == 0

    pushed = [e["id"] for e in producer.named("message_pushed")]
    assert len(pushed) == len(set(pushed)) == count
    stored = [json.loads(raw) for raw in client.lrange(queue_name, 0, -1)]
    copies = Counter(m["id"] for m in stored)
    assert set(copies) == set(pushed)  # every id logged is stored, and nothing else
    assert sorted({m["body"]["seq"] for m in stored}) == list(range(count))  # every message built is there
    # The push sent into the partition reached Redis late, on heal, after its client had given
    # up on it; the retry stored it again (a duplicate, which workers skip by id).
    twice = sorted(m["body"]["seq"] for m in stored if copies[m["id"]] == 2)[::2]
    assert max(copies.values()) == 2 and len(twice) == batch and twice == list(range(twice[0], twice[0] + batch))
    assert first_index(producer, "redis_unavailable") < first_index(producer, "redis_available")
    assert producer.named("producer_stopped")[0]["pushed"] == count
    # A worker (straight to Redis) processes each message once and skips the late copy by id.
    code, events, stderr = run("worker/main.py", "--burst", env=script_env(shared_redis.url, queue_name))
    assert code == 0, stderr
    assert sorted(e["id"] for e in events if e["event"] == "message_processed") == sorted(pushed)
    assert len([e for e in events if e["event"] == "message_duplicate_skipped"]) == batch
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == count and result["duplicates_skipped"] == batch and result["unaccounted"] == 0


# -- an idle worker whose blocked connection dies (issue 12, item 4) ----------------------------------


def blocked_through(proxy: FaultProxy, client: redis.Redis) -> bool:
    """Whether a connection through the proxy is blocked in BLMOVE on the server."""
    ports = proxy.upstream_ports()
    return any(c["cmd"] == "blmove" and "b" in c["flags"] and int(c["addr"].rsplit(":", 1)[1]) in ports for c in client.client_list())


def idle_worker(proxy: FaultProxy, client: redis.Redis, queue_name: str, processes: Any) -> Process:
    worker: Process = processes.start("worker/main.py", env=script_env(proxy.url, queue_name))
    worker.wait_for("worker_started", timeout=15)
    wait_until(lambda: blocked_through(proxy, client), timeout=15)
    return worker


def carries_on(worker: Process, shared_redis: RedisServer, queue_name: str, completed: int = 1) -> None:
    """A message pushed now (directly) is processed by the worker, which then stops cleanly, `completed` in all."""
    message_id = Queue.connect(shared_redis.url, queue_name).push({"after": "fault"})
    # The worker may be in a retry whose request went into the fault: it times out first.
    wait_until(lambda: any(e["id"] == message_id for e in worker.named("message_processed")), timeout=SOCKET_TIMEOUT + 2 * SLACK)
    assert first_index(worker, "redis_unavailable") < first_index(worker, "redis_available")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == completed and result["unaccounted"] == 0 and result["workers"] == 0


@pytest.mark.slow
def test_idle_worker_notices_its_blocked_connection_silently_dying(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, processes: Any, proxy: FaultProxy
) -> None:
    """A worker blocked in BLMOVE whose connection turns into a blackhole notices within SOCKET_TIMEOUT, and works on once it forwards."""
    worker = idle_worker(proxy, client, queue_name, processes)
    proxy.blackhole()
    died_at = time.monotonic()
    # Redis still holds the worker's BLMOVE (it blocks up to BLOCK_SECONDS): a message pushed
    # now is moved (through its landing list, by woken.lua) into the worker's in-flight list,
    # and the reply that says so is lost.
    assert blocked_through(proxy, client)
    lost_reply = Queue.connect(shared_redis.url, queue_name).push({"during": "blackhole"})
    assert client.llen(queue_name) == 0 and stats(shared_redis.url, queue_name)["in_flight"] == 1
    worker.wait_for("redis_unavailable", timeout=SOCKET_TIMEOUT + SLACK)
    assert time.monotonic() - died_at <= SOCKET_TIMEOUT + SLACK
    assert worker.popen.poll() is None
    proxy.forward()
    # On reconnecting, the worker re-reads its in-flight list and finds the message.
    wait_until(lambda: any(e["id"] == lost_reply for e in worker.named("message_processed")), timeout=SOCKET_TIMEOUT + 2 * SLACK)
    assert [e["count"] for e in worker.named("in_flight_adopted")] == [1]
    carries_on(worker, shared_redis, queue_name, completed=2)


def test_idle_worker_reconnects_after_its_connection_is_reset(
    shared_redis: RedisServer, client: redis.Redis, queue_name: str, processes: Any, proxy: FaultProxy
) -> None:
    """A worker blocked in BLMOVE whose connection is reset (RST) notices at once, reconnects and works on."""
    worker = idle_worker(proxy, client, queue_name, processes)
    proxy.reset()
    reset_at = time.monotonic()
    worker.wait_for("redis_unavailable", timeout=SLACK)
    assert time.monotonic() - reset_at < SLACK  # an RST is seen at once, not after SOCKET_TIMEOUT
    carries_on(worker, shared_redis, queue_name)


def test_connections_set_their_timeouts_and_keepalive_explicitly(shared_redis: RedisServer) -> None:
    """Every connection the library opens has the socket timeout and the TCP keepalive timings the README states."""
    client = connect(shared_redis.url)
    assert client.ping()
    connection = client.connection_pool.get_connection()
    try:
        sock = connection._sock
        assert sock.gettimeout() == SOCKET_TIMEOUT
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT
    finally:
        client.connection_pool.release(connection)
