"""Pause and resume: a paused queue gives workers nothing new, and they stay alive meanwhile."""

import threading

from structlog.testing import capture_logs
from support import wait_until

from workqueue import Queue, Worker


def heartbeat_deadline(client, queue: Queue, worker: Worker) -> float:
    return client.zscore(queue.keys.workers, worker.id) or 0.0


def test_a_paused_queue_keeps_its_messages_from_an_idle_worker_until_resumed(client, queue):
    """A worker blocked waiting takes nothing pushed after pause (its heartbeat goes on); after resume it processes it."""
    seen: list[str] = []
    worker = Worker(queue, lambda m: seen.append(m.id), worker_timeout=1.5)
    with capture_logs():
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        wait_until(lambda: any(c["cmd"] == "blmove" for c in client.client_list()), timeout=10)  # idle, waiting
        assert queue.pause() is True
        message_id = queue.push({"n": 1})
        first = wait_until(lambda: heartbeat_deadline(client, queue, worker), timeout=10)
        wait_until(lambda: heartbeat_deadline(client, queue, worker) > first + 900, timeout=10)  # two heartbeats later
        result = queue.stats()
        assert seen == [] and result["paused"] is True and result["pending"] == 1 and result["workers"] == 1
        assert queue.resume() is True
        wait_until(lambda: seen == [message_id], timeout=10)
        worker.shutdown.request()
        thread.join(timeout=10)
    result = queue.stats()
    assert result["paused"] is False and result["completed"] == 1 and result["unaccounted"] == 0


def test_a_worker_with_work_stops_taking_more_once_paused(queue):
    """Pausing mid-stream: the worker finishes what it holds and takes no more; the rest stays pending, then drains."""
    queue.push_many({"n": i} for i in range(50))
    paused = threading.Event()
    seen: list[int] = []

    def handler(message):
        seen.append(message.body["n"])
        if len(seen) == 5:
            queue.pause()
            paused.set()

    worker = Worker(queue, handler, prefetch=1)
    with capture_logs():
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        paused.wait(timeout=10)
        wait_until(lambda: queue.stats()["in_flight"] == 0, timeout=10)  # what it held is done
        held_back = queue.stats()
        assert held_back["pending"] == 50 - len(seen) and held_back["pending"] >= 40
        queue.resume()
        wait_until(lambda: len(seen) == 50, timeout=20)
        worker.shutdown.request()
        thread.join(timeout=10)
    assert sorted(seen) == list(range(50)) and queue.stats()["unaccounted"] == 0
