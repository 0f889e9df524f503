"""Pipelines: follow-ups emitted with the acknowledgement, groups that complete once, delays."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from support import ROOT, running, script_env, signal_all, wait_until

from workqueue import Message, Queue, Worker, message
from workqueue.message import decode as message_of
from workqueue.message import follow_up_id
from workqueue.protocol import Outcomes
from workqueue.queue import GroupError


def drained(queue: Queue) -> bool:
    s = queue.stats()
    return s["pending"] == s["in_flight"] == s["delayed"] == 0 and s["unaccounted"] == 0


def split(message: Message) -> None:
    for n in range(message.body.get("count", 1)):
        message.emit(message.body["to"], {"n": n})
    if message.body.get("fail"):
        raise RuntimeError("failed after emitting")


def test_a_completed_try_pushes_its_follow_ups_with_ids_every_try_repeats(shared_redis, queue_name):
    """A handler's emits reach the target queue once its try completes, each with the id its parent's id and position give, counted as produced there."""
    first, second = Queue.connect(shared_redis.url, queue_name), Queue.connect(shared_redis.url, queue_name + "-next")
    parent = first.push({"to": second.name, "count": 3})
    with running(Worker(first, split, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    stored = [json.loads(raw) for raw in second.peek(10)]
    assert [m["id"] for m in stored] == [follow_up_id(parent, second.name, str(n)) for n in range(3)]
    assert [m["body"] for m in stored] == [{"n": n} for n in range(3)]
    assert all(m["parent"] == parent and m["attempts"] == 0 for m in stored)
    assert second.stats()["produced"] == 3 and second.stats()["unaccounted"] == 0
    assert first.stats()["completed"] == 1 and drained(first)


def test_a_try_that_emits_then_fails_pushes_nothing(shared_redis, queue_name):
    """Follow-ups of a failed try are dropped with it: after every try failed and the message is dead, the target queue never saw one."""
    first = Queue.connect(shared_redis.url, queue_name, max_attempts=2, retry_backoff=0.01)
    second = Queue.connect(shared_redis.url, queue_name + "-next")
    first.push({"to": second.name, "count": 2, "fail": True})
    with running(Worker(first, split, worker_timeout=5)):
        wait_until(lambda: first.stats()["dead_lettered"] == 1, timeout=10)
    assert second.stats()["produced"] == 0 and second.peek() == []


def test_an_acknowledgement_resent_after_a_lost_reply_pushes_once(shared_redis, queue_name):
    """The same settle call sent twice (its reply lost) pushes its follow-ups once; a second copy of the parent completing later pushes none."""
    first, second = Queue.connect(shared_redis.url, queue_name), Queue.connect(shared_redis.url, queue_name + "-next")
    first.push_encoded([first.build({"x": 1}, "parent")[1]] * 2)  # two copies of one id
    consumer = first.consumer("w1")
    consumer.join()
    taken = consumer.fetch(2).taken
    msg = Message(taken[0][0], {"id": "parent"}, [], None)
    msg.emit(second.name, {"child": 1})
    outcomes = Outcomes()
    outcomes.done(taken[0][0], "parent", msg.emitted)
    resent = Outcomes(list(outcomes.args), list(outcomes.extras), sequence=outcomes.sequence)
    consumer.settle(outcomes)
    consumer.settle(resent)  # the same number: a resend after a lost reply
    assert second.stats()["produced"] == 1
    again = Outcomes(sequence=2)
    again.done(taken[1][0], "parent", msg.emitted)  # the second copy, run anyway
    consumer.settle(again)
    assert second.stats()["produced"] == 1 and len(second.peek()) == 1


def test_a_group_completes_once_after_its_last_member_with_its_counts(shared_redis, queue_name):
    """A group of five members, two dead-lettered, pushes one completion message to its queue after the last ends, naming the group and counting 3 completed and 2 dead."""
    members = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    done = Queue.connect(shared_redis.url, queue_name + "-done")
    members.push_many([{"fail": n < 2} for n in range(5)], group="batch", on_complete=done.name)
    assert members.group("batch") == {"group": "batch", "queue": members.name, "on_complete": done.name, "total": 5,
                                      "completed": 0, "dead": 0, "pending": 5, "sealed": True, "done": False}

    def handle(message: Message) -> None:
        if message.body["fail"]:
            raise ValueError("bad member")

    with running(Worker(members, handle, worker_timeout=5)):
        wait_until(lambda: members.group("batch")["done"], timeout=10)
    completions = [json.loads(raw) for raw in done.peek(10)]
    assert len(completions) == 1
    assert completions[0]["body"] == {"group": "batch", "queue": members.name, "total": 5, "completed": 3, "dead": 2}
    assert members.group("batch")["pending"] == 0 and done.stats()["produced"] == 1


def test_follow_ups_of_members_join_the_group_and_are_awaited(shared_redis, queue_name):
    """Members that emit follow-ups to another queue: the completion comes only after every follow-up ended too, and counts them."""
    first, second = Queue.connect(shared_redis.url, queue_name), Queue.connect(shared_redis.url, queue_name + "-next")
    done = Queue.connect(shared_redis.url, queue_name + "-done")
    first.push_many([{"to": second.name, "count": 2} for _ in range(3)], group="g", on_complete=done.name)
    with running(Worker(first, split, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    assert first.group("g") == {**first.group("g"), "total": 9, "completed": 3, "pending": 6, "done": False}
    assert done.peek() == []
    with running(Worker(second, lambda message: None, worker_timeout=5)):
        wait_until(lambda: first.group("g")["done"], timeout=10)
    [completion] = [json.loads(raw) for raw in done.peek(10)]
    assert completion["body"]["total"] == completion["body"]["completed"] == 9


def test_a_finished_group_takes_no_members_and_a_missing_one_none(shared_redis, queue_name):
    """push(group=) adds to a group that is still open, refuses one that finished, and one never started."""
    queue, done = Queue.connect(shared_redis.url, queue_name), Queue.connect(shared_redis.url, queue_name + "-done")
    queue.push_many([{}], group="g", on_complete=done.name)
    queue.push({}, group="g")
    assert queue.group("g")["total"] == 2
    with pytest.raises(GroupError, match="does not exist"):
        queue.push({}, group="other")
    with running(Worker(queue, lambda message: None, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    assert queue.group("g")["done"]
    queue.push_many([{}], group="open", on_complete=done.name)
    assert [(g["group"], g["done"]) for g in queue.groups()] == [("open", False), ("g", True)]
    with pytest.raises(GroupError, match="finished"):
        queue.push({}, group="g")
    with pytest.raises(GroupError, match="finished"):
        queue.push_many([{}], group="g", on_complete=done.name)
    assert len(done.peek()) == 1


def test_a_signed_completion_message_verifies(shared_redis, queue_name):
    """With a signing key, the completion message whose counts Redis filled in is accepted by a worker of its queue."""
    key = {"signing_key": "k" * 32}
    members = Queue.connect(shared_redis.url, queue_name, **key)
    done = Queue.connect(shared_redis.url, queue_name + "-done", **key)
    members.push_many([{}, {}], group="g", on_complete=done.name)
    seen: list[dict] = []
    with running(Worker(members, lambda message: None, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    with running(Worker(done, lambda message: seen.append(message.body), burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    assert seen == [{"group": "g", "queue": members.name, "total": 2, "completed": 2, "dead": 0}]
    assert done.stats()["dead_lettered"] == 0


def test_a_delayed_push_waits_in_redis_until_due(shared_redis, queue_name):
    """push(delay=) counts as delayed, is not taken before its time, and runs soon after it."""
    queue = Queue.connect(shared_redis.url, queue_name)
    ran: list[float] = []
    pushed = time.time()
    queue.push({}, delay=1.0)
    assert queue.stats()["delayed"] == 1 and queue.stats()["unaccounted"] == 0
    with running(Worker(queue, lambda message: ran.append(time.time()), worker_timeout=5)):
        wait_until(lambda: ran, timeout=10)
    assert 1.0 <= ran[0] - pushed < 1.0 + 2.0 + 1.0  # due, and no later than the longest idle wait (and some slack)
    assert drained(queue)


def test_a_burst_worker_waits_for_what_a_dead_worker_held(shared_redis, queue_name):
    """--burst with the queue empty but two messages held by a worker that died: it recovers them, runs them, and only then exits."""
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many([{}, {}])
    assert len(queue.consumer("ghost", worker_timeout=1).fetch(2).taken) == 2
    ran: list[str] = []
    with running(Worker(queue, lambda message: ran.append(message.id), burst=True, worker_timeout=1), timeout=30) as thread:
        thread.join(20)
        assert not thread.is_alive()
    assert len(ran) == 2 and queue.stats()["completed"] == 2 and drained(queue)


def stage_env(shared_redis, first: str, second: str, runs, **overrides) -> dict[str, str]:
    return script_env(shared_redis.url, first, **{"TEST_FIRST_QUEUE": first, "TEST_SECOND_QUEUE": second, "TEST_RUNS_FILE": runs,
                                                 "LOG_LEVEL": "warning", **overrides})


def test_one_command_serves_a_dict_of_queues_and_a_burst_ends_when_both_are_done(shared_redis, queue_name, tmp_path):
    """`workqueue worker tests.stages:STAGES --burst` serves both stages, supervised: every member and follow-up runs once, the group completes once, and the command exits 0 only when both queues are done."""
    first, second, done = (Queue.connect(shared_redis.url, queue_name + suffix) for suffix in ("-a", "-b", "-done"))
    first.push_many([{"to": second.name, "count": 2, "seconds": 0.2} for _ in range(5)], group="g", on_complete=done.name)
    runs = tmp_path / "runs"
    env = stage_env(shared_redis, first.name, second.name, runs)
    worker = subprocess.run([sys.executable, "-m", "workqueue", "worker", "tests.stages:STAGES", "--burst", "--processes", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert worker.returncode == 0, worker.stderr
    lines = runs.read_text().split("\n")[:-1]
    assert len([line for line in lines if line.startswith("split")]) == 5
    assert len(finished := [line for line in lines if line.startswith("finish")]) == 10 and len(set(finished)) == 10
    assert first.group("g") == {**first.group("g"), "total": 15, "completed": 15, "dead": 0, "done": True}
    assert len(done.peek()) == 1
    assert drained(first) and drained(second)


def test_the_group_command_waits_and_says_how_the_group_ended(shared_redis, queue_name):
    """`workqueue group NAME --wait` prints its progress until the group is done, then exits 0 when all completed and 1 when any was dead-lettered; an unknown group exits 1."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    done = Queue.connect(shared_redis.url, queue_name + "-done")
    queue.push_many([{"fail": False}, {"fail": False}], group="good", on_complete=done.name)
    queue.push_many([{"fail": True}, {"fail": False}], group="bad", on_complete=done.name)
    env = script_env(shared_redis.url, queue_name)

    def group(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "workqueue", "group", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    waiting = group("good", "--wait")
    first = wait_until(lambda: waiting.stdout.readline(), timeout=10)
    assert first.startswith("group good: 0/2 ended")

    def handle(message: Message) -> None:
        if message.body["fail"]:
            raise ValueError("bad")

    with running(Worker(queue, handle, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    out, _ = waiting.communicate(timeout=10)
    assert waiting.returncode == 0 and out.splitlines()[-1] == "group good: 2/2 ended, 2 completed, 0 dead, 0 pending, done"
    bad = group("bad", "--json")
    out, _ = bad.communicate(timeout=10)
    assert bad.returncode == 1 and json.loads(out) == {**json.loads(out), "completed": 1, "dead": 1, "done": True}
    missing = group("nothing")
    _, err = missing.communicate(timeout=10)
    assert missing.returncode == 1 and err.startswith("error: group 'nothing' does not exist")


def test_a_requeued_dead_member_of_a_finished_group_runs_alone(shared_redis, queue_name):
    """A dead-lettered member requeued after its group finished runs again as an ordinary message: the group keeps its counts and its completion is not pushed again."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    done = Queue.connect(shared_redis.url, queue_name + "-done")
    queue.push_many([{"fail": True}, {"fail": False}], group="g", on_complete=done.name)
    fail = True

    def handle(message: Message) -> None:
        if fail and message.body["fail"]:
            raise ValueError("bad")

    with running(Worker(queue, handle, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    assert queue.group("g") == {**queue.group("g"), "completed": 1, "dead": 1, "done": True}
    fail = False
    assert queue.dead.requeue(None).changed == 1
    with running(Worker(queue, handle, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    assert queue.stats()["completed"] == 2
    assert queue.group("g") == {**queue.group("g"), "completed": 1, "dead": 1, "done": True}
    assert len(done.peek()) == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_group_completes_exactly_once_while_workers_are_killed_and_frozen(shared_redis, queue_name, tmp_path):
    """Two-stage group work with supervised workers SIGKILLed and SIGSTOPped at random: the group completes once, after its last member, counting every member and follow-up completed."""
    first, second, done = (Queue.connect(shared_redis.url, queue_name + suffix) for suffix in ("-a", "-b", "-done"))
    first.push_many([{"to": second.name, "count": 2, "seconds": 0.05} for _ in range(40)], group="g", on_complete=done.name)
    env = stage_env(shared_redis, first.name, second.name, tmp_path / "runs", WORKER_TIMEOUT=1, JOB_TIMEOUT=5)
    command = [sys.executable, "-m", "workqueue", "worker", "tests.stages:STAGES", "--processes", "1"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    workers = [start() for _ in range(3)]
    rng = random.Random(7)
    try:
        for _ in range(12):  # a kill or a freeze every 0.3-0.8 s, while the group is not done
            if first.group("g")["done"]:
                break
            time.sleep(rng.uniform(0.3, 0.8))
            index = rng.randrange(len(workers))
            if rng.random() < 0.6:  # the command, its queue workers and their children
                signal_all(workers[index].pid, signal.SIGKILL)
                workers[index].wait(10)
                workers[index] = start()
            else:
                signal_all(workers[index].pid, signal.SIGSTOP)
                time.sleep(1.5)  # past WORKER_TIMEOUT: its messages may be recovered meanwhile
                signal_all(workers[index].pid, signal.SIGCONT)
        wait_until(lambda: first.group("g")["done"], timeout=90, interval=0.2)
        completions = [json.loads(raw) for raw in done.peek(10)]
        assert len(completions) == 1
        assert completions[0]["body"] == {"group": "g", "queue": first.name, "total": 120, "completed": 120, "dead": 0}
        wait_until(lambda: drained(first) and drained(second), timeout=30, interval=0.2)
        assert len(done.peek(10)) == 1
    finally:
        for worker in workers:
            signal_all(worker.pid, signal.SIGKILL)
            worker.wait(10)


def test_a_burst_worker_does_not_miss_a_follow_up_pushed_while_it_reads_the_queues(shared_redis, queue_name):
    """A try in the next queue completes, emitting into ours, between the burst worker's reading of our queue and of the next one: it is not taken for done, and runs the follow-up."""
    ours, other = Queue.connect(shared_redis.url, queue_name), Queue.connect(shared_redis.url, queue_name + "-other")
    other.push({})
    sibling = other.consumer("sibling", worker_timeout=60)
    sibling.join()
    [(raw, _)] = sibling.fetch(1).taken

    def settle_with_a_follow_up() -> None:
        msg = message_of(raw)
        msg.emit(ours.name, {"late": True})
        outcomes = Outcomes()
        outcomes.done(raw, msg.id, msg.emitted)
        sibling.settle(outcomes)

    class ReadAfterASettle:
        """The next queue, whose first reading comes just after the sibling's try ended."""

        def __init__(self) -> None:
            self.before: list = [settle_with_a_follow_up]

        def stats(self) -> dict:
            while self.before:
                self.before.pop()()
            return other.stats()

    ran: list = []
    worker = Worker(ours, lambda message: ran.append(message.body), burst=True, worker_timeout=5)
    worker.burst_queues.append(ReadAfterASettle())
    with running(worker) as thread:
        thread.join(15)
    assert ran == [{"late": True}] and drained(ours)


def test_a_supervised_try_that_emits_then_fails_pushes_nothing(shared_redis, queue_name, tmp_path):
    """In a child process too, a try that emits and then raises pushes no follow-up, on every try up to its dead letter."""
    first = Queue.connect(shared_redis.url, queue_name + "-a")
    second = Queue.connect(shared_redis.url, queue_name + "-b")
    first.push({"to": second.name, "count": 3, "fail": True})
    env = stage_env(shared_redis, first.name, second.name, tmp_path / "runs", MAX_ATTEMPTS=2)
    worker = subprocess.run([sys.executable, "-m", "workqueue", "worker", "tests.stages:STAGES", "--queue", first.name, "--burst",
                             "--processes", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert worker.returncode == 0, worker.stderr
    assert (tmp_path / "runs").read_text().count("split") == 2
    assert first.stats()["dead_lettered"] == 1 and second.stats()["produced"] == 0 and second.peek() == []


def test_a_member_refused_for_its_size_counts_dead_and_a_forged_one_counts_nowhere(shared_redis, queue_name):
    """A signed group member too large for the worker's limit is dead-lettered and counted dead, so the group completes; an unsigned copy of a member (a forgery) is dead-lettered and ends nothing."""
    key = {"signing_key": "k" * 32}
    producer = Queue.connect(shared_redis.url, queue_name, **key)
    done = Queue.connect(shared_redis.url, queue_name + "-done")
    [small, _large] = producer.push_many([{"n": 1}, {"pad": "x" * 5000}], group="g", on_complete=done.name)
    forger = Queue.connect(shared_redis.url, queue_name)  # no key
    forger.push_encoded([message.new({"forged": True}, small, group=message.GroupRef("g", queue_name, done.name))[1]])
    forger.client.lmove(queue_name, queue_name, "RIGHT", "LEFT")  # the forgery first
    worker_queue = Queue.connect(shared_redis.url, queue_name, max_message_bytes=1000, **key)
    with running(Worker(worker_queue, lambda message: None, burst=True, worker_timeout=5)) as thread:
        thread.join(10)
    errors = sorted(entry.error for entry in producer.dead.newest(10))
    assert len(errors) == 2 and "signature missing" in errors[0] and "too large" in errors[1]
    assert producer.group("g") == {**producer.group("g"), "total": 2, "completed": 1, "dead": 1, "done": True}


def test_a_command_serving_a_dict_of_queues_passes_sigterm_on_and_exits_0(shared_redis, queue_name, tmp_path, processes):
    """SIGTERM to `workqueue worker tests.stages:STAGES` stops the worker of each queue cleanly (each deregisters), and the command exits 0."""
    first, second = queue_name + "-a", queue_name + "-b"
    env = stage_env(shared_redis, first, second, tmp_path / "runs", LOG_LEVEL="info")
    command = processes.start("-m", "workqueue", "worker", "tests.stages:STAGES", "--processes", "1", env=env)
    started = command.wait_for("worker_started", timeout=30, count=2)
    assert {event["queue"] for event in started} == {first, second}
    command.signal(signal.SIGTERM)
    assert command.wait(timeout=30) == 0
    stopped = command.named("worker_stopped")
    assert {event["queue"] for event in stopped} == {first, second} and all(event["deregistered"] for event in stopped)


def test_a_dict_of_queues_with_a_queue_it_lacks_is_refused_in_one_line(shared_redis, queue_name):
    """--queue naming a queue the dict has no handler for exits 2 with one line naming the queues it has."""
    env = stage_env(shared_redis, "one", "two", "")
    done = subprocess.run([sys.executable, "-m", "workqueue", "worker", "tests.stages:STAGES", "--queue", queue_name],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: tests.stages:STAGES has no handler for the queue {queue_name!r} (it has 'one', 'two')"


def test_a_group_cannot_finish_while_a_push_many_of_it_is_still_pushing(shared_redis, queue_name, monkeypatch):
    """A second push_many of an open group, in several script calls with every member pushed so far ending between two calls: the completion comes once, after its last member."""
    import workqueue.queue

    monkeypatch.setattr(workqueue.queue, "PUSH_CHUNK", 2)
    queue = Queue.connect(shared_redis.url, queue_name)
    done = Queue.connect(shared_redis.url, queue_name + "-done")
    push_chunk = queue._push_chunk

    def then_drain(keys, args) -> None:
        push_chunk(keys, args)
        Worker(queue, lambda message: None, burst=True, worker_timeout=5).run(install_signals=False)

    queue.push_many([{"n": n} for n in range(2)], group="g", on_complete=done.name)  # one call: the group is open
    monkeypatch.setattr(queue, "_push_chunk", then_drain)
    queue.push_many([{"n": n} for n in range(5)], group="g", on_complete=done.name)  # three calls, drained after each
    assert queue.group("g") == {**queue.group("g"), "total": 7, "completed": 7, "done": True, "sealed": True}
    [completion] = [json.loads(raw) for raw in done.peek(10)]
    assert completion["body"]["total"] == completion["body"]["completed"] == 7


def test_an_empty_group_is_refused_before_anything_is_written(shared_redis, queue_name):
    """push_many([], group=...) raises ValueError and leaves no group behind."""
    queue = Queue.connect(shared_redis.url, queue_name)
    with pytest.raises(ValueError, match="at least one member"):
        queue.push_many([], group="g", on_complete=queue_name + "-done")
    assert queue.groups() == [] and not queue.client.exists(queue.keys.group("g"))


def start_stages(env: dict[str, str], *flags: str) -> tuple[subprocess.Popen, list[str]]:
    """`workqueue worker tests.stages:STAGES` in a process group of its own, as a terminal starts it; its stderr lines are gathered."""
    command = subprocess.Popen([sys.executable, "-m", "workqueue", "worker", "tests.stages:STAGES", "--processes", "1", *flags],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(command.stderr), daemon=True).start()
    return command, lines


def events_named(lines: list[str], name: str) -> list[dict]:
    return [event for line in list(lines) if line.startswith("{") and (event := json.loads(line))["event"] == name]


def test_ctrl_c_stops_every_queue_of_a_dict_command_cleanly_and_a_killed_one_is_reported(shared_redis, queue_name, tmp_path):
    """SIGINT to the dict command's process group (a terminal's Ctrl-C) stops each worker gracefully once, exit 0; a worker SIGKILLed makes the command stop the others and exit 137."""
    env = stage_env(shared_redis, queue_name + "-a", queue_name + "-b", tmp_path / "runs", LOG_LEVEL="info")
    command, lines = start_stages(env)
    try:
        wait_until(lambda: len(events_named(lines, "worker_started")) == 2, timeout=30)
        os.killpg(command.pid, signal.SIGINT)
        assert command.wait(30) == 0
        wait_until(lambda: len(events_named(lines, "worker_stopped")) == 2, timeout=10)
        assert not events_named(lines, "worker_forced_exit")
        command, lines = start_stages(env)
        started = wait_until(lambda: (e := events_named(lines, "worker_started")) and len(e) == 2 and e, timeout=30)
        os.kill(int(started[0]["worker"].split("-")[-2]), signal.SIGKILL)
        assert command.wait(30) == 137
        wait_until(lambda: len(events_named(lines, "worker_stopped")) == 1, timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)


def test_the_workers_of_a_dict_command_stop_when_it_is_killed(shared_redis, queue_name, tmp_path):
    """SIGKILL of the command serving a dict of queues: each of its workers gets SIGTERM and stops cleanly, deregistered."""
    first, second = Queue.connect(shared_redis.url, queue_name + "-a"), Queue.connect(shared_redis.url, queue_name + "-b")
    env = stage_env(shared_redis, first.name, second.name, tmp_path / "runs", LOG_LEVEL="info")
    command, lines = start_stages(env)
    try:
        wait_until(lambda: len(events_named(lines, "worker_started")) == 2, timeout=30)
        command.kill()
        command.wait(10)
        wait_until(lambda: first.stats()["workers"] == second.stats()["workers"] == 0, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)


def test_a_burst_dict_command_whose_worker_is_killed_stops_instead_of_waiting_for_ever(shared_redis, queue_name, tmp_path):
    """With --burst, a worker of the dict command SIGKILLed while the other still works: the command stops the other and exits 137, rather than wait for a queue no one serves."""
    first, second = Queue.connect(shared_redis.url, queue_name + "-a"), Queue.connect(shared_redis.url, queue_name + "-b")
    first.push({"to": second.name, "count": 1, "seconds": 30})
    env = stage_env(shared_redis, first.name, second.name, tmp_path / "runs", LOG_LEVEL="info", GRACE=1)
    command, lines = start_stages(env, "--burst")
    try:
        started = wait_until(lambda: (e := events_named(lines, "worker_started")) and len(e) == 2 and e, timeout=30)
        idle = next(event for event in started if event["queue"] == second.name)
        os.kill(int(idle["worker"].split("-")[-2]), signal.SIGKILL)
        assert command.wait(30) == 137
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)


def test_a_child_crash_charges_no_completed_try_whose_follow_ups_were_not_sent_yet(shared_redis, queue_name, tmp_path):
    """Quick emitting tries batched in one child, then a message that ends the child: every innocent message completes (none charged a crash, with one attempt allowed) and its follow-up is pushed once; the crasher is dead-lettered."""
    first, second = Queue.connect(shared_redis.url, queue_name + "-a"), Queue.connect(shared_redis.url, queue_name + "-b")
    innocent = first.push_many([{"to": second.name, "count": 1} for _ in range(300)])
    first.push({"exit": True})
    innocent += first.push_many([{"to": second.name, "count": 1} for _ in range(300)])
    env = stage_env(shared_redis, first.name, second.name, tmp_path / "runs", MAX_ATTEMPTS=1)
    worker = subprocess.run([sys.executable, "-m", "workqueue", "worker", "tests.stages:STAGES", "--queue", first.name, "--burst",
                             "--processes", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert worker.returncode == 0, worker.stderr
    assert first.stats()["completed"] == 600 and first.stats()["dead_lettered"] == 1
    assert second.stats()["produced"] == 600 and len({json.loads(raw)["id"] for raw in second.peek(1000)}) == 600
