"""The supervised worker (`workqueue worker MODULE:ATTR`): whatever a handler does, it costs at most its own message."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path

import pytest
from support import Process, free_port, script_env, stats, wait_until

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
    # The honest job holds the GIL longer than WORKER_TIMEOUT, with no time limit; only the stuck
    # one needs a short limit (a short one for all would charge a try stalled by a busy machine).
    env = script_env(shared_redis.url, queue_name, JOB_TIMEOUT={"honest": 0, "stuck": 0.5}.get(do, 10), WORKER_TIMEOUT=2,
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
    ended = [e for worker in workers for e in worker.named("worker_child_exited")]
    assert len(ended) == (3 if error and error.startswith("crashed") else 0) and all(e["held"] >= 1 for e in ended)
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
    # Tries long enough that none ends between seeing all eight in flight and the kill, on a busy machine too.
    ids = queue.push_many([{"do": "sleep", "seconds": 3} for _ in range(8)])
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


def trace(path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


def most_at_once(events: list[tuple[str, str]]) -> int:
    running = peak = 0
    for what, _ in events:
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("handler", ["traced", "traced_async"])
def test_each_child_runs_up_to_concurrency_messages_at_once(shared_redis, queue_name, tmp_path, handler):
    """--concurrency 4 on one child: four tries run at once and never five, with threads or async tasks; all complete, out of order or not."""
    traced = tmp_path / "trace"
    env = script_env(shared_redis.url, queue_name, TEST_TRACE_FILE=traced, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    ids = queue.push_many([{"seconds": 0.2 + 0.1 * (i % 3)} for i in range(16)])
    worker = Process("-m", "workqueue", "worker", f"tests.misbehaving:{handler}", "--processes", "1", "--concurrency", "4", "--burst", env=env)
    assert worker.wait(timeout=60) == 0
    events = trace(traced)
    assert sorted(i for what, i in events if what == "end") == sorted(ids)
    assert most_at_once(events) == 4
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 16 and result["unaccounted"] == 0


def test_sigterm_lets_running_tries_end_and_puts_back_what_never_started(shared_redis, client, queue_name, tmp_path):
    """SIGTERM while two tries run and eight wait: the two end and complete, the eight go back to the queue untouched, exit 0."""
    traced = tmp_path / "trace"
    env = script_env(shared_redis.url, queue_name, TEST_TRACE_FILE=traced, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    ids = queue.push_many([{"seconds": 1} for _ in range(10)])
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:traced", "--processes", "1", "--concurrency", "2", env=env)
    wait_until(lambda: len(trace(traced)) >= 2, timeout=15)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    events = trace(traced)
    started = [i for what, i in events if what == "start"]
    assert len(started) == 2 and sorted(i for what, i in events if what == "end") == sorted(started)
    waiting = list(client.lrange(queue_name, 0, -1))
    assert len(waiting) == 8 and all(b'"attempts":0' in raw for raw in waiting)
    assert set(ids) - set(started) == {raw.decode().split('"')[3] for raw in waiting}
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 2 and result["pending"] == 8 and result["in_flight"] == 0 and result["unaccounted"] == 0


def test_a_supervisor_with_slow_handlers_hoards_nothing(shared_redis, client, queue_name, tmp_path):
    """With handlers of half a second, one child of concurrency 2 holds at most twice its window (two running, two asked for ahead) while twenty wait."""
    traced = tmp_path / "trace"
    env = script_env(shared_redis.url, queue_name, TEST_TRACE_FILE=traced, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many([{"seconds": 0.5} for _ in range(20)])
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:traced", "--processes", "1", "--concurrency", "2", env=env)
    try:
        wait_until(lambda: trace(traced), timeout=30)  # started (and its signal handler installed): a loaded machine starts slowly
        peak = 0
        for _ in range(40):  # bounded: about four seconds of samples
            peak = max(peak, queue.stats()["in_flight"])
            time.sleep(0.1)
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert 2 <= peak <= 4
    assert stats(shared_redis.url, queue_name)["unaccounted"] == 0


def three_in_one_child(url: str, queue_name: str, tmp_path, bad: dict, seconds: float):
    """A `bad` message between two that sleep `seconds`, run by one child of three threads with
    JOB_TIMEOUT 0.5 s, until the queue is empty: the worker, the runs file, the three ids."""
    ran = tmp_path / "runs"
    env = script_env(url, queue_name, JOB_TIMEOUT=0.5, TEST_RUNS_FILE=ran, LOG_LEVEL="info")
    queue = Queue.connect(url, queue_name)
    ids = (queue.push({"do": "sleep", "seconds": seconds}), queue.push(bad), queue.push({"do": "sleep", "seconds": seconds}))
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--processes", "1", "--concurrency", "3", "--burst", env=env)
    assert worker.wait(timeout=60) == 0
    return worker, ran, ids


def test_a_try_past_job_timeout_among_others_charges_only_itself(shared_redis, queue_name, tmp_path):
    """A try in a blocking call that JobTimeout cannot cut (a thread's sleep), beside two quick ones in the same child: the child is ended past JOB_TIMEOUT, only the late message is charged (then dead-lettered), the other two complete with attempts 0."""
    worker, ran, (first, late, last) = three_in_one_child(shared_redis.url, queue_name, tmp_path, {"do": "sleep", "seconds": 60}, 0.2)
    assert sorted((e["id"], e["attempts"]) for e in worker.named("message_processed")) == sorted([(first, 0), (last, 0)])
    assert [(e["id"], e["attempts"], e["error"]) for e in worker.named("message_retried") + worker.named("message_dead_lettered")] == [
        (late, 1, "job timeout after 0.5 s"), (late, 2, "job timeout after 0.5 s"), (late, 3, "job timeout after 0.5 s")]
    assert runs(ran) == {first: 1, last: 1}
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 2 and result["dead_lettered"] == 1 and result["unaccounted"] == 0


def test_a_try_stuck_holding_the_gil_among_others_ends_dead_and_the_others_complete(shared_redis, queue_name, tmp_path):
    """C code holding the GIL stalls every thread of its child, so which try is stuck cannot be told: each late one is charged and runs alone next time, where only the stuck one times out again; it is dead-lettered, the others complete once."""
    worker, ran, (first, stuck, last) = three_in_one_child(shared_redis.url, queue_name, tmp_path, {"do": "stuck"}, 0.3)
    processed = {e["id"]: e["attempts"] for e in worker.named("message_processed")}
    assert processed.keys() == {first, last} and set(processed.values()) <= {0, 1}
    [dead] = worker.named("message_dead_lettered")
    assert dead["id"] == stuck and dead["error"].startswith("job timeout after 0.5 s")
    assert runs(ran) == {first: 1, last: 1}
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 2 and result["dead_lettered"] == 1 and result["unaccounted"] == 0


def test_a_frozen_supervisor_loses_its_claim_and_counts_nothing_twice(shared_redis, queue_name, tmp_path):
    """A supervisor frozen (SIGSTOP) past WORKER_TIMEOUT while its children run: another worker recovers and completes the messages; thawed, the supervisor drops what its children did (message_claim_lost), rejoins and serves new work; each id counts once in completed."""
    ran = tmp_path / "runs"
    env = script_env(shared_redis.url, queue_name, WORKER_TIMEOUT=1, TEST_RUNS_FILE=ran, LOG_LEVEL="info")
    queue = Queue.connect(shared_redis.url, queue_name)
    ids = queue.push_many([{"do": "sleep", "seconds": 2} for _ in range(2)])
    frozen = Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--processes", "1", "--concurrency", "2", env=env)
    try:
        wait_until(lambda: stats(shared_redis.url, queue_name)["in_flight"] == 2, timeout=15)
        frozen.popen.send_signal(signal.SIGSTOP)
        rescuer = Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--in-process", env=env)
        try:
            wait_until(lambda: stats(shared_redis.url, queue_name)["completed"] == 2, timeout=30, interval=0.2)
        finally:
            rescuer.signal(signal.SIGTERM)
            assert rescuer.wait(timeout=30) == 0
        frozen.popen.send_signal(signal.SIGCONT)
        frozen.wait_for("worker_rejoined", timeout=15)
        late = queue.push({"n": "late"})
        wait_until(lambda: runs(ran)[late] == 1, timeout=15)
    finally:
        frozen.popen.send_signal(signal.SIGCONT)
        frozen.signal(signal.SIGTERM)
        assert frozen.wait(timeout=30) == 0
    assert {e["id"] for e in frozen.named("message_claim_lost")} == set(ids)
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 3 and result["recovered"] == 2 and result["unaccounted"] == 0


def test_children_that_cannot_start_are_restarted_at_a_bounded_pace_and_charge_nothing(shared_redis, client, queue_name):
    """A handler module that fails to import in every child: the children are replaced at most once a second each, each end is logged, and the messages go back untouched."""
    env = script_env(shared_redis.url, queue_name, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    ids = queue.push_many([{"n": i} for i in range(5)])
    worker = Process("-m", "workqueue", "worker", "tests.broken_in_child:handle", "--processes", "2", env=env)
    started = time.monotonic()
    try:
        worker.wait_for("worker_child_exited", timeout=15, count=4)
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert len(worker.named("worker_child_exited")) <= 2 * (time.monotonic() - started + 1)
    waiting = list(client.lrange(queue_name, 0, -1))
    assert sorted(raw.decode().split('"')[3] for raw in waiting) == sorted(ids) and all(b'"attempts":0' in raw for raw in waiting)
    assert stats(shared_redis.url, queue_name)["unaccounted"] == 0


def test_pause_and_metrics_keep_their_meaning_under_a_supervisor(shared_redis, queue_name, tmp_path):
    """A paused queue starts nothing in a supervised worker; once resumed its messages complete, and its metrics count them with their handler times."""
    from test_metrics import scrape

    ran, port = tmp_path / "runs", free_port()
    env = script_env(shared_redis.url, queue_name, TEST_RUNS_FILE=ran, LOG_LEVEL="info", METRICS_PORT=port)
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.pause()
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:handle", "--processes", "1", env=env)
    try:
        worker.wait_for("metrics_serving", timeout=20)
        ids = queue.push_many([{"n": i} for i in range(5)])
        time.sleep(1)  # paused: nothing may start meanwhile
        assert not runs(ran) and stats(shared_redis.url, queue_name)["pending"] == 5
        queue.resume()
        wait_until(lambda: set(runs(ran)) == set(ids) and stats(shared_redis.url, queue_name)["completed"] == 5, timeout=15)
        scraped = scrape(port)
        assert scraped("workqueue_messages_total", queue=queue_name, outcome="completed") == 5
        assert scraped("workqueue_handler_seconds_count", queue=queue_name) == 5
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def test_async_tries_past_job_timeout_are_cancelled_in_their_child_and_failures_carry_their_traceback(shared_redis, queue_name, tmp_path):
    """An async handler under a supervisor with JOB_TIMEOUT: a try past it is cancelled (its child lives on), one that raises fails with its traceback; the others complete once."""
    ran = tmp_path / "runs"
    env = script_env(shared_redis.url, queue_name, JOB_TIMEOUT=0.5, MAX_ATTEMPTS=2, TEST_RUNS_FILE=ran, LOG_LEVEL="info")
    queue = Queue.connect(shared_redis.url, queue_name)
    quick = queue.push_many([{"seconds": 0.1} for _ in range(4)])
    slow = queue.push({"seconds": 60})
    failing = queue.push({"raise": True})
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:handle_async_misbehaving", "--processes", "1",
                     "--concurrency", "3", "--burst", env=env)
    assert worker.wait(timeout=60) == 0
    assert runs(ran) == dict.fromkeys(quick, 1)
    dead = {e["id"]: e for e in worker.named("message_dead_lettered")}
    assert dead[slow]["error"] == "job timeout after 0.5 s" and dead[failing]["error"] == "ValueError: async failure"
    assert "Traceback" in dead[failing]["exception"] and not worker.named("worker_child_exited")
    result = stats(shared_redis.url, queue_name)
    assert result["completed"] == 4 and result["dead_lettered"] == 2 and result["unaccounted"] == 0


@pytest.mark.slow
def test_sigterm_during_a_redis_outage_lets_the_tries_end_and_settles_them_once_redis_is_back(own_redis, queue_name, tmp_path):
    """Redis down while two tries run and SIGTERM arrives: the tries end, the supervisor waits Redis out, settles them, puts back what never started and exits 0."""
    traced = tmp_path / "trace"
    env = script_env(own_redis.url, queue_name, TEST_TRACE_FILE=traced, LOG_LEVEL="warning")
    queue = Queue.connect(own_redis.url, queue_name)
    queue.push_many([{"seconds": 1} for _ in range(6)])
    worker = Process("-m", "workqueue", "worker", "tests.misbehaving:traced", "--processes", "1", "--concurrency", "2", env=env)
    wait_until(lambda: len(trace(traced)) >= 2, timeout=15)
    own_redis.kill()
    worker.signal(signal.SIGTERM)
    wait_until(lambda: len([e for e in trace(traced) if e[0] == "end"]) >= 2, timeout=15)
    own_redis.start()
    assert worker.wait(timeout=60) == 0
    result = stats(own_redis.url, queue_name)
    assert result["completed"] == 2 and result["pending"] == 4 and result["in_flight"] == 0 and result["unaccounted"] == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="scheduling policies are Linux's")
def test_children_run_as_batch_processes_and_the_supervisor_does_not(shared_redis, queue_name, tmp_path):
    """The children run under SCHED_BATCH, so that one waking never preempts the supervisor that feeds it; the supervisor keeps the ordinary policy."""
    env = script_env(shared_redis.url, queue_name, TEST_RUNS_FILE=tmp_path / "runs", LOG_LEVEL="warning")
    Queue.connect(shared_redis.url, queue_name).push({"do": "sleep", "seconds": 2})
    [worker] = start_workers(env, 1)
    pid = worker.popen.pid
    try:
        wait_until(lambda: stats(shared_redis.url, queue_name)["in_flight"] == 1, timeout=15)
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        assert len(children) == 2
        # The idle child may still be starting: it sets its policy first thing in main().
        wait_until(lambda: {os.sched_getscheduler(child) for child in children} == {os.SCHED_BATCH}, timeout=15)
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


@pytest.mark.parametrize("handler", ["traced", "traced_async"])
def test_a_quick_try_is_settled_while_a_long_one_runs_beside_it_in_the_same_child(shared_redis, queue_name, tmp_path, handler):
    """One child running a long try and a quick one at once (threads or async tasks): the quick one counts completed while the long one still runs, not when it ends."""
    traced = tmp_path / "trace"
    env = script_env(shared_redis.url, queue_name, TEST_TRACE_FILE=traced, LOG_LEVEL="warning")
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many([{"seconds": 6}, {"seconds": 0.1}])
    worker = Process("-m", "workqueue", "worker", f"tests.misbehaving:{handler}", "--processes", "1", "--concurrency", "2", env=env)
    try:
        wait_until(lambda: len([what for what, _ in trace(traced) if what == "start"]) == 2, timeout=30)  # however slowly they start
        wait_until(lambda: stats(shared_redis.url, queue_name)["completed"] == 1, timeout=4)  # the long one runs 6 s
        assert stats(shared_redis.url, queue_name)["in_flight"] == 1
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
