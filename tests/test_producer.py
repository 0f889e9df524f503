"""The producer script: what it pushes and what it logs."""

import json

from support import run, script_env


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
