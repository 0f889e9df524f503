"""The worker script end to end: processing, retries, dead letters, poison messages, both deliveries."""

import json
import subprocess
import sys
import time

import pytest
from support import ROOT, parse_events, run, script_env

DELIVERIES = ["reliable", "simple"]


def dead_entries(client, queue):
    return [json.loads(raw) for raw in client.lrange(f"{{{queue}}}:dead", 0, -1)]


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_producer_output_is_consumed_in_order_by_one_worker(client, queue_name, delivery, env):
    """One worker processes every pushed message exactly once, oldest first, and logs each."""
    assert run("app/main.py", "--count", "30", "--interval", "0", env=env)[0] == 0
    ids = [json.loads(raw)["id"] for raw in client.lrange(queue_name, 0, -1)]
    code, events, _ = run("worker/main.py", "--burst", "--delivery", delivery, env=env)
    assert code == 0
    processed = [e for e in events if e["event"] == "message_processed"]
    assert [e["id"] for e in processed] == ids
    assert all(e["attempts"] == 0 and e["worker"] and e["queue"] == queue_name for e in processed)
    assert client.llen(queue_name) == 0


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_three_failing_workers_process_or_dead_letter_every_message(shared_redis, client, queue_name, delivery):
    """Three burst workers at a 30% failure rate: each id ends processed once or dead with 3 attempts."""
    env = script_env(shared_redis.url, queue_name, MAX_ATTEMPTS=3)
    assert run("app/main.py", "--count", "50", "--interval", "0", env=env)[0] == 0
    ids = {json.loads(raw)["id"] for raw in client.lrange(queue_name, 0, -1)}
    workers = [
        subprocess.Popen([sys.executable, "worker/main.py", "--burst", "--fail-rate", "0.3", "--delivery", delivery, "--prefetch", "5"],
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for _ in range(3)
    ]
    events = []
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        events += parse_events(err)
    processed = [e["id"] for e in events if e["event"] == "message_processed"]
    dead = dead_entries(client, queue_name)
    assert len(processed) == len(set(processed))
    assert set(processed) | {d["id"] for d in dead} == ids
    assert not set(processed) & {d["id"] for d in dead}
    assert all(d["attempts"] == 3 and d["error"].startswith("SimulatedFailure") for d in dead)
    assert any(e["event"] == "message_retried" for e in events)
    assert client.llen(queue_name) == 0
    assert client.zcard(f"{{{queue_name}}}:delayed") == 0


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_always_failing_message_retries_then_dead_letters(shared_redis, client, queue_name, delivery):
    """A message that always fails logs MAX_ATTEMPTS-1 retries, then one dead-lettering, and lies
    in the dead-letter list as it was, with attempts = MAX_ATTEMPTS and its last error."""
    env = script_env(shared_redis.url, queue_name, MAX_ATTEMPTS=4)
    assert run("app/main.py", "--count", "1", "--interval", "0", env=env)[0] == 0
    original = json.loads(client.lindex(queue_name, 0))
    code, events, _ = run("worker/main.py", "--burst", "--fail-rate", "1", "--delivery", delivery, env=env)
    assert code == 0
    names = [e["event"] for e in events if e["event"].startswith("message_")]
    assert names == ["message_retried"] * 3 + ["message_dead_lettered"]
    assert [e["attempts"] for e in events if e["event"] == "message_retried"] == [1, 2, 3]
    dead_event = [e for e in events if e["event"] == "message_dead_lettered"][0]
    assert dead_event["level"] == "error" and dead_event["id"] == original["id"] and dead_event["attempts"] == 4
    [entry] = dead_entries(client, queue_name)
    assert entry == {**original, "attempts": 4, "error": entry["error"], "dead_lettered_at": entry["dead_lettered_at"]}
    assert original["created_at"] <= entry["dead_lettered_at"] <= time.time()
    assert entry["error"].startswith("SimulatedFailure")
    tracebacks = [e["exception"] for e in events if e["event"] in ("message_retried", "message_dead_lettered")]
    assert len(tracebacks) == 4 and all(t.startswith("Traceback") and "SimulatedFailure" in t for t in tracebacks)


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_poison_messages_are_dead_lettered_and_good_ones_processed(client, queue_name, delivery, env):
    """Non-JSON, non-object and id-less elements go to the dead-letter list with their reason; the rest run."""
    client.rpush(queue_name, "not json", "[1,2]", '{"body": 1}', b"\xff\xfe")
    assert run("app/main.py", "--count", "3", "--interval", "0", env=env)[0] == 0
    code, events, _ = run("worker/main.py", "--burst", "--delivery", delivery, env=env)
    assert code == 0
    assert len([e for e in events if e["event"] == "message_processed"]) == 3
    dead = dead_entries(client, queue_name)
    assert [d["raw"] for d in dead[:3]] == ["not json", "[1,2]", '{"body": 1}']
    assert dead[3]["raw_base64"] == "//4="  # not UTF-8: kept whole, as base64
    assert "not valid JSON" in dead[0]["error"]
    assert "not a JSON object" in dead[1]["error"]
    assert "no id" in dead[2]["error"]
    assert "not valid JSON" in dead[3]["error"]
    logged = [e for e in events if e["event"] == "message_dead_lettered"]
    assert len(logged) == 4 and all(e["level"] == "error" and e["id"] is None for e in logged)
    assert client.llen(queue_name) == 0
