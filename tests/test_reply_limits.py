"""Replies a server's client-output-buffer-limit would cut: batches and pages bounded in bytes,
shrunk when one is cut; elements too large to be messages never sent."""

from __future__ import annotations

import hashlib
import json

import pytest
from structlog.testing import capture_logs
from support import Process, RedisServer, running, script_env, stats, wait_until

from workqueue import Queue, Worker

LIMIT = 1024 * 1024  # the server's hard limit on what a normal client's replies may queue


@pytest.fixture
def limited_redis(tmp_path):
    """A redis-server of this test's own that closes a normal client's connection once its replies outgrow LIMIT."""
    server = RedisServer(tmp_path / "redis").start()
    server.client().config_set("client-output-buffer-limit", f"normal {LIMIT} 0 0")  # 6.2 takes it here, not as an option
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["supervised", "in-process"])
def test_batches_shrink_until_their_replies_pass_and_an_oversized_element_is_never_sent(limited_redis, queue_name, tmp_path, path):
    """200 messages of 20 KB (4 MB, four times the server's limit) and a 3 MB element: every message runs once, the element is dead-lettered by Redis as its head, size and hash, and the worker says it lowered its batches."""
    queue = Queue.connect(limited_redis.url, queue_name)
    ids = queue.push_many({"pad": "x" * 20_000, "n": i} for i in range(100))
    garbage = b"\xff" * 3_000_000
    limited_redis.client().rpush(queue_name, garbage)
    ids += queue.push_many({"pad": "x" * 20_000, "n": i} for i in range(100, 200))
    runs = tmp_path / "runs"
    env = script_env(limited_redis.url, queue_name, TEST_RUNS_FILE=runs, LOG_LEVEL="warning")
    # A supervisor takes what its child can start soon, which grows with the handler's pace from one
    # message: eight at once let a batch outgrow the limit whatever that pace is on this machine.
    flags = ["--in-process"] if path == "in-process" else ["--processes", "1", "--concurrency", "8"]
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--burst", *flags, env=env)
    assert worker.wait(timeout=60) == 0
    assert sorted(runs.read_text().split()) == sorted(ids)
    assert worker.named("reply_budget_lowered")
    [dead] = [json.loads(raw) for raw in limited_redis.client().lrange(f"{{{queue_name}}}:dead", 0, -1)]
    assert dead["size"] == len(garbage) and dead["sha1"] == hashlib.sha1(garbage).hexdigest() and dead["truncated"] is True
    [logged] = worker.named("message_dead_lettered")
    assert logged["error"] == dead["error"] == f"malformed message: too large: {len(garbage)} bytes, over MAX_MESSAGE_BYTES (1048576)"
    result = stats(limited_redis.url, queue_name)
    assert result["completed"] == 200 and result["dead_lettered"] == 1 and result["in_flight"] == 0
    assert result["unaccounted"] == -1  # the element pushed by hand was never counted as produced


def test_a_dead_workers_in_flight_list_over_the_limit_is_recovered_in_pages(limited_redis, queue_name):
    """A worker presumed dead holding 4 MB of messages: another worker's recovery reads its list in pages that pass the limit, and every message runs once."""
    admin = limited_redis.client()
    admin.config_set("client-output-buffer-limit", "normal 0 0 0")
    queue = Queue.connect(limited_redis.url, queue_name)
    ids = queue.push_many({"pad": "x" * 20_000, "n": i} for i in range(200))
    dead = queue.consumer("dead-worker", worker_timeout=0.5)
    held = 0
    for _ in range(10):  # each fetch takes about 1 MiB of them
        held += len(dead.fetch(200).taken)
    assert held == 200
    admin.config_set("client-output-buffer-limit", f"normal {LIMIT} 0 0")
    seen: list[str] = []
    worker = Worker(queue, lambda m: seen.append(m.id), worker_timeout=5)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: len(seen) >= 200, timeout=30)
    assert sorted(seen) == sorted(ids)
    assert any(e["event"] == "reply_budget_lowered" for e in logs)
    result = queue.stats()
    assert result["recovered"] == 200 and result["completed"] == 200 and result["unaccounted"] == 0
