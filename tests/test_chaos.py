"""Chaos: workers SIGKILLed and restarted at random, Redis killed and restarted, and a count at the end."""

import random
import time

import pytest
import redis
from support import script_env, stats, wait_until

from workqueue.store.keys import QueueKeys


def holding_worker(redis_server, queue, workers, rng) -> int:
    """The index of a worker whose in-flight list is not empty (waiting up to a second for one), else any."""
    keys, client = QueueKeys(queue), redis_server.client()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            ids = [w.named("worker_started")[0]["worker"] if w.named("worker_started") else None for w in workers]
            holding = [i for i, worker_id in enumerate(ids) if worker_id and client.llen(keys.in_flight(worker_id))]
        except redis.exceptions.ConnectionError:  # Redis is being restarted
            holding = []
        if holding:
            return rng.choice(holding)
        time.sleep(0.01)
    return rng.randrange(len(workers))


def chaos_run(redis_server, queue, processes, delivery, work_seconds):
    """Run a producer and three workers through kills and a Redis restart; returns what happened."""
    rng = random.Random(7)
    env = script_env(redis_server.url, queue, WORKER_TIMEOUT=2, MAX_ATTEMPTS=5, RETRY_BACKOFF=0.05)
    worker_args = ["--delivery", delivery, "--work-seconds", str(work_seconds)]
    workers = [processes.start("worker/main.py", *worker_args, env=env) for _ in range(3)]
    producer = processes.start("app/main.py", "--count", "400", "--interval", "0.02", env=env)
    everyone, kills = list(workers), 0
    started = time.monotonic()
    redis_restarted = False
    while time.monotonic() - started < 14:  # bounded chaos phase
        time.sleep(rng.uniform(0.5, 1.2))
        # Kill a worker that holds messages right now, so that recovery has something to do.
        victim = holding_worker(redis_server, queue, workers, rng)
        workers[victim].popen.kill()
        kills += 1
        workers[victim] = processes.start("worker/main.py", *worker_args, env=env)
        everyone.append(workers[victim])
        if not redis_restarted and time.monotonic() - started > 5:
            redis_server.kill()
            time.sleep(1.0)
            redis_server.start()
            redis_restarted = True
    assert producer.wait(timeout=60) == 0
    wait_until(lambda: (s := stats(redis_server.url, queue))["pending"] + s["delayed"] + s["in_flight"] == 0, timeout=40, interval=0.5)
    for worker in workers:  # a worker restarted just now installs its signal handlers first
        worker.wait_for("worker_started", timeout=30)
        worker.signal()
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]
    pushed = {e["id"] for e in producer.named("message_pushed")}
    processed = {e["id"] for w in everyone for e in w.named("message_processed")}
    dead = {e["id"] for w in everyone for e in w.named("message_dead_lettered")}
    return pushed, processed, dead, stats(redis_server.url, queue), kills


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_chaos_reliable_delivery_loses_nothing(own_redis, queue_name, processes):
    """Reliable delivery: every produced id is processed or dead-lettered, and stats shows 0 unaccounted."""
    pushed, processed, dead, result, kills = chaos_run(own_redis, queue_name, processes, "reliable", 0.01)
    assert kills >= 10 and len(pushed) == 400
    assert pushed <= processed | dead
    assert result["unaccounted"] == 0
    assert result["produced"] >= 400 and result["recovered"] > 0


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_chaos_simple_delivery_shows_its_losses_in_stats(own_redis, queue_name, processes):
    """Simple delivery under the same chaos loses messages, and stats counts them as unaccounted."""
    pushed, processed, dead, result, _ = chaos_run(own_redis, queue_name, processes, "simple", 0.05)
    lost = pushed - processed - dead
    assert lost and result["unaccounted"] >= len(lost)
