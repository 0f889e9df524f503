"""Pushes go down a connection the Queue keeps: after a script flush, from many threads, and in a forked child."""

import json
import multiprocessing
import threading

from workqueue import Queue


def stored_ids(client, queue_name: str) -> list[str]:
    return [json.loads(raw)["id"] for raw in client.lrange(queue_name, 0, -1)]


def test_a_push_after_the_script_cache_is_flushed_loads_it_and_pushes_once(client, queue_name, queue):
    """SCRIPT FLUSH between two pushes on the kept connection: the second loads the script and lands once."""
    first = queue.push({"n": 1})
    client.script_flush()
    second = queue.push({"n": 2})
    assert stored_ids(client, queue_name) == [first, second]
    assert int(client.hget(queue.keys.stats, "produced")) == 2


def test_threads_pushing_at_once_lose_nothing_and_mix_no_replies(client, queue_name, queue):
    """Eight threads push through one Queue at once (one uses the kept connection, the others the pool): every id returned is stored once."""
    returned: list[str] = []
    lock = threading.Lock()

    def push_many_one_by_one() -> None:
        for n in range(200):
            message_id = queue.push({"n": n})
            with lock:
                returned.append(message_id)

    threads = [threading.Thread(target=push_many_one_by_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stored = stored_ids(client, queue_name)
    assert len(returned) == 1600 and sorted(stored) == sorted(returned)


def _push_in_child(url: str, queue_name: str, pushed: multiprocessing.Queue, release: multiprocessing.Event) -> None:
    """A forked child pushes with the Queue its parent made, says so, and waits to be let go."""
    pushed.put(_QUEUE.push({"from": "child"}))
    release.wait(timeout=30)


_QUEUE: Queue  # set before forking: the child inherits it, kept connection and all


def test_a_forked_child_pushes_on_a_connection_of_its_own(own_redis, queue_name):
    """A Queue used before a fork: the child's push opens its own connection rather than writing on the parent's socket, and both land."""
    global _QUEUE
    client = own_redis.client()  # a server of its own: no other test's connection opens or closes meanwhile
    _QUEUE = Queue.connect(own_redis.url, queue_name)
    before = _QUEUE.push({"from": "parent"})  # the parent's kept connection exists now
    clients_before = {entry["id"] for entry in client.client_list()}
    context = multiprocessing.get_context("fork")
    pushed, release = context.Queue(), context.Event()
    child = context.Process(target=_push_in_child, args=(own_redis.url, queue_name, pushed, release))
    child.start()
    try:
        from_child = pushed.get(timeout=30)
        opened = {entry["id"] for entry in client.client_list()} - clients_before
        assert len(opened) == 1  # the child's own connection
    finally:
        release.set()
        child.join(timeout=30)
    after = _QUEUE.push({"from": "parent"})  # the parent's connection still answers the parent
    assert child.exitcode == 0
    assert stored_ids(client, queue_name) == [before, from_child, after]
