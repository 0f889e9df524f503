"""Nothing lost: killed workers, long jobs, backoff, shutdown, Redis outages, duplicates."""

import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
from structlog.testing import capture_logs
from support import script_env, stats, wait_until

from workqueue import Queue, Worker, message
from workqueue.shutdown import Shutdown


def in_flight_total(client, queue):
    """Messages in all in-flight lists, found by SCAN: independent of the registry stats uses."""
    return sum(client.llen(key) for key in client.scan_iter(match=f"{{{queue}}}:in_flight:*"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_killed_workers_message_is_recovered_with_one_more_attempt(shared_redis, client, queue_name, processes):
    """A worker SIGKILLed while holding a message: another, started then, processes it within WORKER_TIMEOUT + its own start + a few s."""
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=2)
    doomed = processes.start("worker/main.py", "--work-seconds", "60", env=env)
    doomed.wait_for("worker_started", timeout=15)
    Queue.connect(shared_redis.url, queue_name).push({"job": 1})
    wait_until(lambda: in_flight_total(client, queue_name) == 1, timeout=10)
    doomed.popen.kill()
    killed_at = time.monotonic()
    rescuer = processes.start("worker/main.py", env=env)
    [processed] = rescuer.wait_for("message_processed", timeout=15)
    assert time.monotonic() - killed_at < 2 + 10  # the rescuer's Python start included
    [recovered] = rescuer.named("message_recovered")
    assert recovered["attempts"] == 1 and recovered["dead_worker"] == doomed.named("worker_started")[0]["worker"]
    assert processed["attempts"] == 1 and processed["id"] == recovered["id"]
    assert stats(shared_redis.url, queue_name)["recovered"] == 1


@pytest.mark.slow
def test_long_job_keeps_its_message_while_its_worker_lives(shared_redis, client, queue_name, processes):
    """A 5-second job with WORKER_TIMEOUT 2 is processed once, by one worker, while another idles."""
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=2)
    workers = [processes.start("worker/main.py", "--work-seconds", "5", env=env) for _ in range(2)]
    for worker in workers:
        worker.wait_for("worker_started", timeout=15)
    Queue.connect(shared_redis.url, queue_name).push({"job": "long"})
    wait_until(lambda: any(w.named("message_processed") for w in workers), timeout=15)
    time.sleep(1.5)  # time for a wrong recovery and second run to show up, were there one
    processed = [e for w in workers for e in w.named("message_processed")]
    assert len(processed) == 1 and processed[0]["attempts"] == 0
    assert not [e for w in workers for e in w.named("message_recovered")]


@pytest.mark.slow
def test_failed_message_waits_its_backoff_and_idle_worker_does_not_spin(shared_redis, queue_name, processes):
    """A failure is retried no sooner than its logged backoff; an idle worker uses < 0.2 s CPU in 5 s."""
    env = script_env(shared_redis.url, queue_name, RETRY_BACKOFF=0.5, MAX_ATTEMPTS=3)
    worker = processes.start("worker/main.py", "--fail-rate", "1", env=env)
    worker.wait_for("worker_started", timeout=15)
    Queue.connect(shared_redis.url, queue_name).push({"job": "fails"})
    first, second = worker.wait_for("message_retried", timeout=15, count=2)
    dead = worker.wait_for("message_dead_lettered", timeout=15)[0]

    def at(event):
        return time.mktime(time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + event["timestamp"][20:26])

    assert at(second) - at(first) >= first["retry_in"] - 0.002
    assert at(dead) - at(second) >= second["retry_in"] - 0.002
    time.sleep(1)
    before = cpu_seconds(worker.popen.pid)
    time.sleep(5)
    assert cpu_seconds(worker.popen.pid) - before < 0.2


def test_sigterm_mid_job_finishes_acknowledges_and_exits_0(shared_redis, client, queue_name, processes, queue):
    """SIGTERM during a job: the job completes and is acknowledged, exit 0 within the grace, nothing held."""
    env = script_env(shared_redis.url, queue_name, GRACE=10, LOG_LEVEL="debug")
    worker = processes.start("worker/main.py", "--work-seconds", "2", env=env)
    worker.wait_for("worker_started", timeout=15)
    first, second = queue.push({"n": 1}), queue.push({"n": 2})
    worker.wait_for("demo_work_started", timeout=10)  # taken is not started: the signal comes once the job has begun
    worker.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(timeout=15) == 0
    assert time.monotonic() - signalled < 10
    assert [e["id"] for e in worker.named("message_processed")] == [first]
    assert in_flight_total(client, queue_name) == 0
    assert [json.loads(raw)["id"] for raw in client.lrange(queue_name, 0, -1)] == [second]
    result = stats(shared_redis.url, queue_name)
    assert result["workers"] == 0 and result["unaccounted"] == 0


def test_second_signal_exits_at_once_and_recovery_brings_the_message_back(shared_redis, client, queue_name, processes):
    """A second SIGTERM ends the worker at once; its message comes back through recovery."""
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=2)
    worker = processes.start("worker/main.py", "--work-seconds", "30", env=env | {"LOG_LEVEL": "debug"})
    worker.wait_for("worker_started", timeout=15)
    message_id = Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    worker.wait_for("demo_work_started", timeout=10)  # taken is not started (a stop then puts it back): the job has begun
    worker.signal(signal.SIGTERM)
    worker.wait_for("worker_stopping", timeout=5)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=5) == 128 + signal.SIGTERM
    rescuer = processes.start("worker/main.py", env=env)
    [processed] = rescuer.wait_for("message_processed", timeout=15)
    assert processed["id"] == message_id and processed["attempts"] == 1


def test_same_message_pushed_twice_runs_the_handler_once(queue):
    """A message pushed twice with one id (in one batch, and again later) runs its handler once."""
    seen = []
    queue.push({"n": 1}, message_id="order-42")
    queue.push({"n": 1}, message_id="order-42")
    Worker(queue, lambda m: seen.append(m.id), burst=True).run()
    queue.push({"n": 1}, message_id="order-42")
    Worker(queue, lambda m: seen.append(m.id), burst=True).run()
    assert seen == ["order-42"]
    result = queue.stats()
    assert result["duplicates_skipped"] == 2 and result["completed"] == 1 and result["unaccounted"] == 0


@pytest.mark.slow
def test_redis_killed_for_3_seconds_loses_nothing(own_redis, queue_name, processes):
    """Redis SIGKILLed for 3 s under a producer and two workers: all live on, every push accounted for."""
    env = script_env(own_redis.url, queue_name, WORKER_TIMEOUT=10)
    workers = [processes.start("worker/main.py", "--work-seconds", "0.01", env=env) for _ in range(2)]
    for worker in workers:  # each up (signal handler in place) before the outage and the SIGTERM
        worker.wait_for("worker_started", timeout=30)
    producer = processes.start("app/main.py", "--count", "150", "--interval", "0.03", env=env)
    producer.wait_for("message_pushed", timeout=15, count=30)
    own_redis.kill()
    time.sleep(3)
    assert producer.popen.poll() is None and all(w.popen.poll() is None for w in workers)
    own_redis.start()
    assert producer.wait(timeout=60) == 0
    pushed = {e["id"] for e in producer.named("message_pushed")}
    assert len(pushed) == 150

    def drained():
        return {e["id"] for w in workers for e in w.named("message_processed")} >= pushed

    wait_until(drained, timeout=60)
    for worker in workers:
        worker.signal()
    assert [w.wait(timeout=30) for w in workers] == [0, 0]
    assert producer.named("redis_unavailable") and all(w.named("redis_unavailable") for w in workers)
    result = stats(own_redis.url, queue_name)
    assert result["unaccounted"] == 0 and result["pending"] == 0 and result["in_flight"] == 0


def test_idle_worker_stopped_during_an_outage_exits_at_once(own_redis, queue_name, processes):
    """Ctrl-C while Redis is down and the worker holds nothing: exit 0 within seconds, not after GRACE."""
    worker = processes.start("worker/main.py", env=script_env(own_redis.url, queue_name, GRACE="60"))
    worker.wait_for("worker_started", timeout=20)
    own_redis.kill()
    worker.wait_for("redis_unavailable", timeout=15)
    worker.signal(signal.SIGINT)
    assert worker.wait(timeout=10) == 0
    [stopped] = worker.named("worker_stopped")
    assert stopped["released"] == 0 and stopped["deregistered"] is False


def test_worker_killed_with_a_full_prefetch_batch_loses_none_of_it(shared_redis, client, queue_name, processes, queue):
    """SIGKILL while holding a whole prefetched batch: every message of it is recovered and processed."""
    # A worker's first take is one message; its next is a batch sized by the pace of the first,
    # which starts with the stalling message. Warning-level logs keep that pace fast (the batch
    # is the full PREFETCH on a quiet machine); the test asks for at least ten held.
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=2, PREFETCH=200, MAX_ATTEMPTS=3)
    ids = queue.push_many([{"n": 0}, {"stall": True}] + [{"n": i} for i in range(1, 1200)])
    doomed = processes.start("tests/stalling_worker.py", env=env | {"LOG_LEVEL": "warning"})
    doomed.wait_for("test_stalling", timeout=20)  # stuck on the stalling message, the rest of its batch untouched
    held = in_flight_total(client, queue_name)
    assert held >= 10 and stats(shared_redis.url, queue_name)["completed"] == 1  # a batch sized by one message's pace
    doomed.popen.kill()
    doomed.wait()
    rescuer = processes.start("worker/main.py", env=env)
    wait_until(lambda: stats(shared_redis.url, queue_name)["completed"] == 1201, timeout=30)
    assert {e["id"] for e in rescuer.named("message_processed")} == set(ids[1:])
    result = stats(shared_redis.url, queue_name)
    assert result["recovered"] == held and result["unaccounted"] == 0 and result["in_flight"] == 0


@pytest.mark.parametrize("delivery", ["reliable", "simple"])
def test_copy_of_a_completed_message_that_wakes_an_idle_worker_is_skipped(client, queue_name, delivery, queue):
    """An idle worker blocked in BLMOVE, woken by a second copy of a completed message, skips it."""
    seen, shutdown = [], Shutdown()
    worker = Worker(queue, lambda m: seen.append(m.id), delivery=delivery, worker_id="w-idle", shutdown=shutdown)
    thread = threading.Thread(target=worker.run)

    def blocked() -> bool:
        return any(c["cmd"] == "blmove" and "b" in c["flags"] for c in client.client_list())

    with capture_logs() as logs:
        thread.start()
        try:
            for copy in (1, 2):
                wait_until(blocked, timeout=10)
                queue.push({"n": 1}, message_id="order-7")
                wait_until(lambda copy=copy: (s := queue.stats())["completed"] + s["duplicates_skipped"] == copy, timeout=10)
        finally:
            shutdown.request()
            thread.join(timeout=10)
    assert not thread.is_alive() and seen == ["order-7"]
    skipped = {"event": "message_duplicate_skipped", "id": "order-7", "attempts": 0, "log_level": "info", "queue": queue_name, "worker": "w-idle"}
    assert skipped in logs
    result = queue.stats()
    assert result["duplicates_skipped"] == 1 and result["completed"] == 1 and result["unaccounted"] == 0


def test_copies_in_nearby_batches_run_the_handler_once(shared_redis, queue_name):
    """Copies of one id spread over a long queue, in one batch or in batches fetched ahead, run once."""
    queue = Queue.connect(shared_redis.url, queue_name)
    raws = [message.new({"n": i})[1] for i in range(3000)]
    for twin, (first, gap) in enumerate([(100, 1), (500, 120), (900, 230), (1500, 350), (2200, 420)]):
        raws[first] = raws[first + gap] = message.new({"twin": twin}, f"twin-{twin}")[1]
    queue.push_encoded(raws)
    seen = Counter()
    worker = Worker(queue, lambda m: seen.update([m.id]), burst=True)
    worker.run()
    assert max(seen.values()) == 1 and len(seen) == 3000 - 5
    result = queue.stats()
    assert result["duplicates_skipped"] == 5 and result["completed"] == 2995 and result["unaccounted"] == 0


@pytest.mark.parametrize("delivery", ["reliable", "simple"])
def test_stop_while_a_batch_is_fetched_ahead_puts_every_unstarted_message_back(shared_redis, queue_name, delivery):
    """A stop mid-batch, with the next batch already fetched ahead, returns both batches' rest to the queue in order."""
    queue = Queue.connect(shared_redis.url, queue_name)
    ids = queue.push_many({"n": i} for i in range(3000))
    shutdown, seen = Shutdown(), []

    def handler(m) -> None:
        seen.append(m.id)
        if len(seen) == 700:
            shutdown.request()

    with capture_logs() as logs:
        assert Worker(queue, handler, delivery=delivery, shutdown=shutdown).run() == 0
    assert seen == ids[:700]
    [stopped] = [e for e in logs if e["event"] == "worker_stopped"]
    assert stopped["released"] >= 200  # the rest of its batch and the batch fetched ahead
    assert [message.decode(raw).id for raw in queue.client.lrange(queue.keys.pending, 0, -1)] == ids[700:]
    result = queue.stats()
    assert result["completed"] == 700 and result["in_flight"] == 0 and result["unaccounted"] == 0
