"""The producer script: what it pushes and what it logs."""

import json
import signal
import time

from support import free_port, run, script_env


def test_producer_pushes_count_messages_in_order(shared_redis, client, queue_name):
    """With --count 30 --interval 0 and no worker, the list holds 30 fresh JSON messages in order."""
    code, events, _ = run("app/main.py", "--count", "30", "--interval", "0", env=script_env(shared_redis.url, queue_name))
    assert code == 0
    messages = [json.loads(raw) for raw in client.lrange(queue_name, 0, -1)]
    assert [m["body"]["seq"] for m in messages] == list(range(30))
    assert all(m["attempts"] == 0 and isinstance(m["created_at"], float) for m in messages)
    assert len({m["id"] for m in messages}) == 30
    pushed = [e for e in events if e["event"] == "message_pushed"]
    assert [e["id"] for e in pushed] == [m["id"] for m in messages]
    assert all(e["level"] == "info" and e["queue"] == queue_name and "timestamp" in e for e in pushed)


def test_producer_batch_pushes_the_same_messages(shared_redis, client, queue_name):
    """--batch pipelines pushes without changing what lands in the list or what is logged."""
    code, events, _ = run("app/main.py", "--count", "25", "--interval", "0", "--batch", "10", env=script_env(shared_redis.url, queue_name))
    assert code == 0
    messages = [json.loads(raw) for raw in client.lrange(queue_name, 0, -1)]
    assert [m["body"]["seq"] for m in messages] == list(range(25))
    assert len([e for e in events if e["event"] == "message_pushed"]) == 25
    assert int(client.hget(f"{{{queue_name}}}:stats", "produced")) == 25


def test_producer_stops_cleanly_on_sigterm(shared_redis, client, queue_name, processes):
    """SIGTERM: the producer finishes the push in progress, logs producer_stopped, exits 0 at once."""
    producer = processes.start("app/main.py", "--interval", "0.5", env=script_env(shared_redis.url, queue_name))
    producer.wait_for("message_pushed", timeout=15, count=2)
    producer.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert producer.wait(timeout=10) == 0
    assert time.monotonic() - signalled < 2
    [stopped] = producer.named("producer_stopped")
    pushed = [e["id"] for e in producer.named("message_pushed")]
    assert stopped["pushed"] == len(pushed) == client.llen(queue_name)
    assert [json.loads(raw)["id"] for raw in client.lrange(queue_name, 0, -1)] == pushed


def test_producer_keeps_its_message_through_an_outage(own_redis, queue_name, processes):
    """Redis down mid-run: the producer warns, keeps the same message, and pushes it once Redis is back."""
    env = script_env(own_redis.url, queue_name)
    producer = processes.start("app/main.py", "--count", "6", "--interval", "0.2", env=env)
    producer.wait_for("message_pushed", timeout=15, count=2)
    own_redis.kill()
    producer.wait_for("redis_unavailable", timeout=10, count=2)
    own_redis.start()
    assert producer.wait(timeout=30) == 0
    pushed = [e["id"] for e in producer.named("message_pushed")]
    stored = [json.loads(raw)["id"] for raw in own_redis.client().lrange(queue_name, 0, -1)]
    assert len(pushed) == 6 and set(stored) == set(pushed)
    assert len(stored) - len(set(stored)) <= 1  # a push whose reply was lost may land twice, same id


def test_producer_gives_up_after_the_grace_when_stopped_during_an_outage(queue_name, processes):
    """SIGTERM while Redis is unreachable: after GRACE seconds the producer exits 1 naming the unpushed ids."""
    producer = processes.start("app/main.py", env=script_env(f"redis://127.0.0.1:{free_port()}/0", queue_name, GRACE=1))
    producer.wait_for("redis_unavailable", timeout=15)
    producer.signal(signal.SIGTERM)
    assert producer.wait(timeout=15) == 1
    [abandoned] = producer.named("push_abandoned")
    assert abandoned["level"] == "error" and len(abandoned["ids"]) == 1
    assert not producer.named("message_pushed")


def test_producer_waits_out_a_full_redis(own_redis, queue_name, processes):
    """Redis at maxmemory (noeviction) refuses writes: the producer warns, waits, and pushes every message once memory is freed."""
    admin = own_redis.client()
    admin.config_set("maxmemory", 1)
    producer = processes.start("app/main.py", "--count", "3", "--interval", "0", env=script_env(own_redis.url, queue_name))
    warning = producer.wait_for("redis_unavailable", timeout=15)[0]
    assert warning["level"] == "warning" and "OutOfMemoryError" in warning["error"]
    assert not producer.named("message_pushed") and admin.llen(queue_name) == 0
    admin.config_set("maxmemory", 0)
    assert producer.wait(timeout=30) == 0
    pushed = [e["id"] for e in producer.named("message_pushed")]
    assert len(pushed) == 3 and [json.loads(raw)["id"] for raw in admin.lrange(queue_name, 0, -1)] == pushed
    assert producer.named("redis_available")
