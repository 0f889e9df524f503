"""The supervised worker (`workqueue worker MODULE:ATTR`): whatever a handler does, it costs at most its own message."""

from __future__ import annotations

import collections
import signal
import time

import pytest
from support import Process, script_env, stats, wait_until

from workqueue import Queue

MISBEHAVIOURS = {
    # body of the bad message -> (its fate, the error it is dead-lettered with)
    "exit": ("dead", "crashed: the handler's process ended (exit code 3)"),
    "segfault": ("dead", "crashed: the handler's process ended (signal SIGSEGV)"),
    "sys.exit": ("dead", "SystemExit: "),
    "keyboard": ("dead", "KeyboardInterrupt: "),
    "base": ("dead", "Custom: mine"),
    "unprintable": ("dead", "Unprintable: (its text could not be built)"),
    "stuck": ("dead", "job timeout after 0.5 s"),
    "mangle": ("completed", None),
    "honest": ("completed", None),
}


def start_workers(env: dict, count: int = 2, *flags: str) -> list[Process]:
    return [Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--processes", "2", *flags, env=env) for _ in range(count)]


def runs(path) -> collections.Counter:
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


@pytest.mark.parametrize("do", MISBEHAVIOURS)
def test_a_misbehaving_handler_costs_only_its_own_message(shared_redis, client, queue_name, tmp_path, do):
    """60 innocent messages, the bad one, 60 more, in one batch, two supervised workers restarted should they exit: every innocent one runs to its end once and completes, the bad one is dead-lettered (or completes), stats balance, new work is served."""
    fate, error = MISBEHAVIOURS[do]
    ran = tmp_path / "runs"
    # The honest job holds the GIL longer than WORKER_TIMEOUT, with no time limit.
    env = script_env(shared_redis.url, queue_name, JOB_TIMEOUT=0 if do == "honest" else 0.5, WORKER_TIMEOUT=2,
                     TEST_RUNS_FILE=ran, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    good = queue.push_many([{"n": i} for i in range(60)])
    bad = queue.push({"do": do, "seconds": 3})
    good += queue.push_many([{"n": i} for i in range(60, 120)])
    workers = start_workers(env)
    exits = 0
    try:
        def settled():
            nonlocal exits
            for index, worker in enumerate(workers):  # a process manager's restart, as systemd's or Compose's
                if worker.popen.poll() is not None:
                    exits += 1
                    workers[index] = start_workers(env, 1)[0]
            s = stats(shared_redis.url, queue_name)
            return s["completed"] + s["dead_lettered"] == 121 and s["pending"] + s["in_flight"] + s["delayed"] == 0 and s

        result = wait_until(settled, timeout=60, interval=0.2)
        late = queue.push({"n": "late"})
        wait_until(lambda: runs(ran)[late] == 1, timeout=15)
    finally:
        for worker in workers:
            worker.signal(signal.SIGTERM)
        codes = [worker.wait(timeout=30) for worker in workers]
    counted = runs(ran)
    assert exits == 0 and codes == [0, 0]
    assert all(counted[message_id] == 1 for message_id in good), {m: counted[m] for m in good if counted[m] != 1}
    result = stats(shared_redis.url, queue_name)
    assert result["unaccounted"] == 0 and result["completed"] == (122 if fate == "completed" else 121)
    dead = [Queue.connect(shared_redis.url, queue_name).dead.newest(10)]
    if fate == "dead":
        [[entry]] = dead
        assert entry.id == bad and entry.error == error and entry.attempts == 3
    else:
        assert dead == [[]] and (do != "honest" or counted[bad] == 1)


def test_the_supervisor_killed_with_tries_in_progress_loses_nothing(shared_redis, client, queue_name, tmp_path):
    """SIGKILL of the supervisor while its children run eight tries at once: its children end with it, another worker recovers every message and each completes once."""
    ran = tmp_path / "runs"
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=2, TEST_RUNS_FILE=ran, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    ids = queue.push_many([{"do": "sleep", "seconds": 1} for _ in range(8)])
    [doomed] = start_workers(env, 1, "--concurrency", "4")
    wait_until(lambda: stats(shared_redis.url, queue_name)["in_flight"] == 8, timeout=15)
    doomed.popen.kill()
    doomed.wait()
    [rescuer] = start_workers(env, 1, "--concurrency", "4")
    try:
        wait_until(lambda: stats(shared_redis.url, queue_name)["completed"] == 8, timeout=30, interval=0.2)
    finally:
        rescuer.signal(signal.SIGTERM)
        assert rescuer.wait(timeout=30) == 0
    result = stats(shared_redis.url, queue_name)
    assert result["recovered"] == 8 and result["unaccounted"] == 0 and set(runs(ran)) == set(ids)
    before = runs(ran)
    time.sleep(1.5)  # a child that outlived its supervisor would append a run by now
    assert runs(ran) == before
