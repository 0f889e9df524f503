"""Dead letters and stats through the Queue API, under concurrent operators and hostile bytes."""

import threading

from workqueue import Queue, message

DEEP = b'{"id":"deep","body":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HOSTILE = [b"", b"\xff\xfe", DEEP, b"x" * 5_000_000, b'{"id":"x","created_at":1e400}', b'{"created_at":"soon"}', b"[1,2]", b'{"id":"\\ud800"}']


def test_two_operators_requeueing_everything_at_once_move_each_dead_letter_exactly_once(shared_redis, client, queue_name, queue):
    """Concurrent requeue of the whole list by two operators puts every message back once: none in both lists, none in neither."""
    ids = queue.push_many({"n": i} for i in range(2500))
    client.rename(queue_name, f"{{{queue_name}}}:dead")  # as if each had been dead-lettered
    client.hincrby(f"{{{queue_name}}}:stats", "dead_lettered", 2500)
    operators = [Queue.connect(shared_redis.url, queue_name) for _ in range(2)]
    outcomes = []
    threads = [threading.Thread(target=lambda q=q: outcomes.append(q.dead.requeue())) for q in operators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(outcome.changed for outcome in outcomes) == 2500
    assert sorted(message.decode(raw).id for raw in client.lrange(queue_name, 0, -1)) == sorted(ids)
    assert client.llen(f"{{{queue_name}}}:dead") == 0
    result = queue.stats()
    assert result["requeued"] == 2500 and result["produced"] == 2500 and result["unaccounted"] == 0


def test_stats_and_dead_letter_scripts_survive_any_bytes(shared_redis, client, queue_name):
    """Hostile elements at the head of the queue or in the dead-letter list never make stats, listing, requeue or purge fail."""
    queue = Queue.connect(shared_redis.url, queue_name)
    good = queue.push({"n": 1})
    client.rpush(f"{{{queue_name}}}:dead", *HOSTILE, client.lpop(queue_name))
    for raw in HOSTILE:
        client.delete(queue_name)
        client.rpush(queue_name, raw)
        assert queue.stats()["oldest_pending_age_seconds"] is None, raw[:40]
    listed = queue.dead.newest(100)
    assert [entry.id for entry in listed][0] == good and len(listed) == len(HOSTILE) + 1
    malformed = [entry.to_json() for entry in listed if entry.msg is None]
    assert len(malformed) == len(HOSTILE) - 1  # all but the message whose created_at is 1e400
    assert all(entry["raw"] is not None or "raw_base64" in entry for entry in malformed)
    assert queue.dead.requeue([good, "x"]).changed == 2
    assert queue.dead.purge(malformed_only=True).changed == len(HOSTILE) - 1
    assert client.llen(f"{{{queue_name}}}:dead") == 0
