"""Handlers: async ones are awaited, and JOB_TIMEOUT cuts a try that runs too long."""

import asyncio
import json
import subprocess
import sys
import time

import pytest
from misbehaving import Custom, Unprintable
from structlog.testing import capture_logs
from support import ROOT, run, script_env, stats

from workqueue import JobTimeout, Queue, Worker


def dead_letters(client, queue_name):
    return [json.loads(raw) for raw in client.lrange(f"{{{queue_name}}}:dead", 0, -1)]


def test_an_async_handler_is_awaited_before_its_message_counts_as_completed(shared_redis, queue_name):
    """An `async def` handler runs to its end on the worker's event loop; a failure in it is a failed try."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    done = []

    async def handler(message):
        await asyncio.sleep(0.01)
        if message.body["fail"]:
            raise ValueError("async failure")
        done.append(message.id)

    ok = queue.push({"fail": False})
    failing = queue.push({"fail": True})
    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True).run() == 0
    assert done == [ok]
    [dead] = [e for e in logs if e["event"] == "message_dead_lettered"]
    assert dead["id"] == failing and dead["error"] == "ValueError: async failure"
    result = queue.stats()
    assert result["completed"] == 1 and result["dead_lettered"] == 1 and result["unaccounted"] == 0


HANGS = {
    "sleeping": lambda message: time.sleep(60),
    "spinning in Python": lambda message: [None for _ in iter(int, 1)],  # never ends, never blocks
}


@pytest.mark.parametrize("hang", HANGS.values(), ids=HANGS.keys())
def test_a_hanging_handler_is_cut_at_job_timeout_then_retried_then_dead_lettered(shared_redis, client, queue_name, hang):
    """A try past JOB_TIMEOUT fails with 'job timeout after N s': retried, then dead-lettered; the next message runs."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=2, retry_backoff=0.01)
    hanging = queue.push({"hang": True})
    fine = queue.push({"hang": False})
    done = []

    def handler(message):
        if message.body["hang"]:
            hang(message)
        done.append(message.id)

    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True, job_timeout=0.5).run() == 0
    assert done == [fine]
    [retried] = [e for e in logs if e["event"] == "message_retried"]
    assert retried["id"] == hanging and retried["error"] == "job timeout after 0.5 s"
    [dead] = dead_letters(client, queue_name)
    assert dead["id"] == hanging and dead["attempts"] == 2 and dead["error"] == "job timeout after 0.5 s"
    assert queue.stats()["unaccounted"] == 0


def test_an_async_handler_past_job_timeout_is_cancelled(shared_redis, client, queue_name):
    """An async try past JOB_TIMEOUT is cancelled and dead-lettered with the timeout error."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    queue.push({"n": 1})
    cleaned_up = []

    async def handler(message):
        try:
            await asyncio.sleep(60)
        finally:
            cleaned_up.append(True)

    assert Worker(queue, handler, burst=True, job_timeout=0.3).run() == 0
    assert cleaned_up == [True]
    assert [d["error"] for d in dead_letters(client, queue_name)] == ["job timeout after 0.3 s"]


def test_a_try_that_ends_in_time_is_never_interrupted_later(queue):
    """Many quick tries under a short JOB_TIMEOUT all complete; no late JobTimeout lands in the worker."""
    queue.push_many({"n": i} for i in range(300))

    def handler(message):
        time.sleep(0.001)

    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True, job_timeout=0.05).run() == 0
    assert queue.stats()["completed"] == 300
    assert not [e for e in logs if e["event"] in ("message_retried", "worker_error")]


def test_the_shipped_worker_cuts_slow_work_at_job_timeout(shared_redis, client, queue_name):
    """worker/main.py --job-timeout 0.5 with 30 s of work a message: dead-lettered as a timeout, exit 0."""
    Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    env = script_env(shared_redis.url, queue_name, MAX_ATTEMPTS="1")
    code, events, stderr = run("worker/main.py", "--burst", "--work-seconds", "30", "--job-timeout", "0.5", env=env, timeout=30)
    assert code == 0, stderr
    [dead] = [e for e in events if e["event"] == "message_dead_lettered"]
    assert dead["error"] == "job timeout after 0.5 s"
    assert stats(shared_redis.url, queue_name)["dead_lettered"] == 1


def test_a_handler_that_swallows_the_timeout_ends_its_worker_and_is_recovered(shared_redis, client, queue_name, processes, queue):
    """A try that ignores JobTimeout: at twice JOB_TIMEOUT the worker exits 1; another recovers the message."""
    message_id = queue.push({"swallow": True})
    env = script_env(shared_redis.url, queue_name, JOB_TIMEOUT="0.5", WORKER_TIMEOUT="2", MAX_ATTEMPTS="1")
    doomed = processes.start("tests/stalling_worker.py", env=env)
    assert doomed.wait(timeout=30) == 1
    assert doomed.named("worker_handler_stuck")
    rescuer = processes.start("worker/main.py", env=env)
    [recovered] = rescuer.wait_for("message_recovered", timeout=30)
    assert recovered["id"] == message_id and recovered["dead_lettered"] is True
    rescuer.signal()
    assert rescuer.wait(timeout=30) == 0
    assert stats(shared_redis.url, queue_name)["unaccounted"] == 0


def test_job_timeout_is_a_base_exception_a_handler_cannot_catch_by_accident():
    """JobTimeout is not an Exception, so `except Exception` in a handler lets it through."""
    assert issubclass(JobTimeout, BaseException) and not issubclass(JobTimeout, Exception)


@pytest.mark.parametrize("job_timeout", [0, 5])
def test_a_handlers_own_timeout_error_is_its_own_failure_not_a_job_timeout(shared_redis, client, queue_name, job_timeout):
    """An async handler raising TimeoutError fails with that error, with or without JOB_TIMEOUT."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    queue.push({"n": 1})

    async def handler(message):
        raise TimeoutError("the upstream did not answer")

    assert Worker(queue, handler, burst=True, job_timeout=job_timeout).run() == 0
    assert [d["error"] for d in dead_letters(client, queue_name)] == ["TimeoutError: the upstream did not answer"]


def test_a_housekeeper_held_up_by_a_paused_redis_cuts_the_try_instead_of_ending_the_worker(own_redis, queue_name):
    """JOB_TIMEOUT 1 s, a sleeping handler, Redis paused for 3 s: the try is cut and retried; the worker is not taken for stuck."""
    import threading

    queue = Queue.connect(own_redis.url, queue_name, max_attempts=1)
    queue.push({"n": 1})
    started = threading.Event()

    def handler(message):
        started.set()
        own_redis.client().execute_command("CLIENT", "PAUSE", 3000, "ALL")
        time.sleep(30)

    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True, job_timeout=1).run() == 0
    assert started.is_set()
    assert not [e for e in logs if e["event"] == "worker_handler_stuck"]
    assert [d["error"] for d in dead_letters(own_redis.client(), queue_name)] == ["job timeout after 1 s"]


def test_without_an_abort_hook_a_stuck_try_ends_run_even_if_the_handler_swallows_everything(shared_redis, queue):
    """A handler catching every BaseException past JOB_TIMEOUT: run() still returns 1 (the abort is repeated), and the heartbeat goes on meanwhile."""
    from workqueue import WorkerAborted

    queue.push({"n": 1})
    caught = []

    def handler(message):
        for _ in range(300):  # bounded: about 30 s, far longer than the test takes
            try:
                time.sleep(0.1)
            except BaseException as error:
                caught.append(type(error))
                if len(caught) >= 3:
                    break

    worker = Worker(queue, handler, job_timeout=0.3, worker_timeout=1)
    with capture_logs() as logs:
        code = worker.run()
        assert code == 1
    assert JobTimeout in caught and WorkerAborted in caught
    assert any(e["event"] == "worker_handler_stuck" for e in logs)
    time.sleep(0.5)  # nothing may land in our code after run() returned
    shared_redis.client().ping()


def test_a_worker_can_run_twice(queue):
    """run() may be called again on the same Worker (its housekeeper starts anew)."""
    seen = []
    worker = Worker(queue, lambda m: seen.append(m.id), burst=True)
    first = queue.push({"n": 1})
    assert worker.run() == 0
    second = queue.push({"n": 2})
    assert worker.run() == 0
    assert seen == [first, second]


TRACED_WORKER = """
import sys, threading, time
from workqueue import Queue, Worker
sys.settrace(lambda *args: None)  # as coverage.py or a debugger would
threading.settrace(lambda *args: None)
queue = Queue.connect(sys.argv[1], sys.argv[2], max_attempts=1)
slow, fine = queue.push({"slow": True}), queue.push({"slow": False})
code = Worker(queue, lambda m: time.sleep(60) if m.body["slow"] else None, burst=True, job_timeout=0.3).run()
print(code, queue.stats()["completed"], queue.stats()["dead_lettered"])
"""


def test_a_worker_under_a_tracer_cuts_a_try_and_stops(shared_redis, queue_name):
    """Under a tracer (coverage, a debugger) a try cut at JOB_TIMEOUT and the worker's stop both end: nothing spins."""
    done = subprocess.run([sys.executable, "-c", TRACED_WORKER, shared_redis.url, queue_name], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["0", "1", "1"]  # exit code, completed, dead-lettered


RAISES = {
    "sys.exit()": (lambda: sys.exit(), "SystemExit: "),
    "sys.exit(3)": (lambda: sys.exit(3), "SystemExit: 3"),
    "KeyboardInterrupt": (lambda: (_ for _ in ()).throw(KeyboardInterrupt("pressed")), "KeyboardInterrupt: pressed"),
    "a BaseException subclass": (lambda: (_ for _ in ()).throw(Custom("mine")), "Custom: mine"),
    "an unprintable error": (lambda: (_ for _ in ()).throw(Unprintable()), "Unprintable: (its text could not be built)"),
}


@pytest.mark.parametrize("raise_it, error", RAISES.values(), ids=RAISES.keys())
def test_anything_a_handler_raises_fails_only_its_try(shared_redis, client, queue_name, raise_it, error):
    """sys.exit, KeyboardInterrupt, a BaseException subclass or an unprintable error fail the bad message's tries (retried, then dead-lettered with its traceback logged); the others complete and the worker goes on."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=2, retry_backoff=0.01)
    before = queue.push_many([{"bad": False}] * 3)
    bad = queue.push({"bad": True})
    after = queue.push_many([{"bad": False}] * 3)
    done = []

    def handler(message):
        if message.body["bad"]:
            raise_it()
        done.append(message.id)

    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True).run() == 0
    assert sorted(done) == sorted(before + after)
    [retried] = [e for e in logs if e["event"] == "message_retried"]
    [dead_event] = [e for e in logs if e["event"] == "message_dead_lettered"]
    assert retried["id"] == dead_event["id"] == bad and retried["error"] == dead_event["error"] == error
    assert all(isinstance(e["exc_info"], BaseException) for e in (retried, dead_event))  # rendered as its traceback
    [dead] = dead_letters(client, queue_name)
    assert dead["id"] == bad and dead["error"] == error
    result = queue.stats()
    assert result["completed"] == 6 and result["dead_lettered"] == 1 and result["unaccounted"] == 0


def test_a_handler_that_mangles_its_message_cannot_change_its_identity_or_attempts(shared_redis, client, queue_name):
    """A handler that removes `id` and rewrites `attempts` in message.fields: its successes count under the real id, its failures retry and dead-letter as stored."""
    queue = Queue.connect(shared_redis.url, queue_name, retry_backoff=0.01)
    ok = queue.push({"fail": False})
    failing = queue.push({"fail": True})

    def handler(message):
        fail = message.body["fail"]
        message.fields.pop("id")
        message.fields["attempts"] = -100
        if fail:
            raise ValueError("and it fails")

    with capture_logs() as logs:
        assert Worker(queue, handler, burst=True).run() == 0
    assert [e["id"] for e in logs if e["event"] == "message_processed"] == [ok]
    assert [(e["id"], e["attempts"]) for e in logs if e["event"] in ("message_retried", "message_dead_lettered")] == [
        (failing, 1), (failing, 2), (failing, 3)]
    [dead] = dead_letters(client, queue_name)
    assert dead["id"] == failing and dead["attempts"] == 3
    result = queue.stats()
    assert result["completed"] == 1 and result["dead_lettered"] == 1 and result["unaccounted"] == 0


def test_a_generator_handler_is_refused_at_start_and_a_returned_generator_is_run(queue):
    """A generator function cannot be a handler (TypeError at Worker()); a plain handler that returns a generator has it run to its end before the message counts as done."""
    def generator_function(message):
        yield message

    with pytest.raises(TypeError, match="generator function"):
        Worker(queue, generator_function)
    with pytest.raises(TypeError, match="callable"):
        Worker(queue, "not a function")
    ran = []
    queue.push({"n": 1})
    assert Worker(queue, lambda message: (ran.append(message.id) for _ in range(1)), burst=True).run() == 0
    assert len(ran) == 1 and queue.stats()["completed"] == 1
