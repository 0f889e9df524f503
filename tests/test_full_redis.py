"""A full Redis: waited out by producers and workers alike, and never wedged; evicting policies refused."""

from __future__ import annotations

import subprocess

import pytest
from redis.exceptions import OutOfMemoryError
from support import PYTHON, ROOT, Process, RedisServer, run_raw, running, script_env, stats, wait_until

from workqueue import Queue, Worker


@pytest.fixture
def small_redis(tmp_path):
    """A redis-server of this test's own, which it fills."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _pushed(queue: Queue) -> str | None:
    """Push one message; its id, or None while Redis refuses it as out of memory."""
    try:
        return queue.push({"after": 1})
    except OutOfMemoryError:
        return None


def test_a_single_idle_worker_frees_expired_ids_so_a_full_redis_takes_pushes_again(small_redis, queue_name):
    """Completed ids fill Redis under noeviction; once their DEDUP_TTL passes, one idle worker's own requests free them, and pushes are taken and run again."""
    admin = small_redis.client()
    queue = Queue.connect(small_redis.url, queue_name, dedup_ttl=3)
    done: list[str] = []
    worker = Worker(queue, lambda m: done.append(m.id), worker_timeout=60)
    with running(worker):
        first = queue.push_many({"n": i} for i in range(5000))
        wait_until(lambda: len(done) == len(first), timeout=30)
        # Full because of what it remembers of those: nothing else is stored.
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 100_000)
        assert _pushed(queue) is None
        later = wait_until(lambda: _pushed(queue), timeout=15)
        wait_until(lambda: later in done, timeout=15)
    stats = queue.stats()
    assert stats["unaccounted"] == 0 and stats["completed"] == len(first) + 1 and stats["dead_lettered"] == 0


@pytest.mark.parametrize("path", ["supervised", "in-process"])
def test_a_worker_started_on_a_full_redis_runs_every_waiting_message_once(small_redis, queue_name, tmp_path, path):
    """Redis full (noeviction) with messages waiting: a worker command started then takes, runs and settles every one of them once, and exits 0 with --burst."""
    queue = Queue.connect(small_redis.url, queue_name)
    ids = queue.push_many({"n": i} for i in range(300))
    admin = small_redis.client()
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 50_000)
    assert _pushed(queue) is None
    runs = tmp_path / "runs"
    env = script_env(small_redis.url, queue_name, TEST_RUNS_FILE=runs, LOG_LEVEL="warning")
    flags = ["--in-process"] if path == "in-process" else ["--processes", "1"]
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--burst", *flags, env=env)
    assert worker.wait(timeout=60) == 0
    assert sorted(runs.read_text().split()) == sorted(ids)
    result = stats(small_redis.url, queue_name)
    assert result["completed"] == 300 and result["pending"] == 0 and result["unaccounted"] == 0


@pytest.mark.parametrize("program", [
    ("app/main.py", "--count", "1"),
    ("-m", "workqueue", "worker", "tests.misbehaving:handle", "--burst"),
    ("-m", "workqueue", "worker", "tests.misbehaving:handle", "--burst", "--in-process"),
])
def test_an_evicting_policy_is_refused_by_producers_and_workers_with_one_line(small_redis, queue_name, program):
    """maxmemory-policy allkeys-lru could drop the queue's keys without an error: the producer and the worker command exit 2 with one line naming it, having written nothing."""
    admin = small_redis.client()
    admin.config_set("maxmemory-policy", "allkeys-lru")
    code, stderr = run_raw(*program, env=script_env(small_redis.url, queue_name, TEST_RUNS_FILE="/dev/null"))
    assert code == 2, stderr
    [line] = [text for text in stderr.splitlines() if text.strip() and not text.startswith("{")]  # JSON: log lines
    assert line.startswith("error: ") and "maxmemory-policy is allkeys-lru" in line and "Traceback" not in stderr
    assert admin.dbsize() == 0


def test_stats_show_the_memory_policy_and_a_volatile_policy_is_accepted(small_redis, queue_name):
    """`stats` names the policy and how full Redis is; volatile-lru evicts nothing of a queue (no key expires), so it is accepted."""
    admin = small_redis.client()
    admin.config_set("maxmemory-policy", "volatile-lru")
    admin.config_set("maxmemory", 100_000_000)
    code, _ = run_raw("app/main.py", "--count", "1", env=script_env(small_redis.url, queue_name))
    assert code == 0
    env = script_env(small_redis.url, queue_name)
    table = subprocess.run([PYTHON, "-m", "workqueue", "stats"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert "volatile-lru" in table.stdout and "100000000" in table.stdout
    assert all(admin.ttl(key) == -1 for key in admin.keys("*"))  # not on a hot path: a test's own Redis
