"""Prometheus metrics (--metrics-port, METRICS_PORT): scraped over HTTP on 127.0.0.1 as a worker runs."""

import os
import signal
import socket
import threading
import time
import urllib.request

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, run_raw, script_env, wait_until

from workqueue import Queue, Worker, message
from workqueue.metrics import OUTCOMES, WorkerMetrics

DEPTHS = ("workqueue_pending", "workqueue_in_flight", "workqueue_delayed", "workqueue_dead")


class Scraped(dict):
    """One scrape's samples by (name, labels); called with a name and labels, the value or None."""

    def __call__(self, name, **labels):
        return self.get((name, frozenset(labels.items())))


def scrape(port: int) -> Scraped:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return Scraped({(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples})


def counts(scraped: Scraped, queue: str) -> dict:
    return {outcome: scraped("workqueue_messages_total", queue=queue, outcome=outcome) for outcome in OUTCOMES}


class Running:
    """A Worker with metrics served on a free port, run in a thread until the block ends."""

    def __init__(self, queue: Queue, handler=lambda m: None, **options) -> None:
        self.metrics = WorkerMetrics(queue)
        self.port = free_port()
        self.worker = Worker(queue, handler, metrics=self.metrics, **options)
        self.thread = threading.Thread(target=self.worker.run, kwargs={"install_signals": False}, daemon=True)

    def __enter__(self) -> "Running":
        self.metrics.serve(self.port, structlog.get_logger())
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.worker.shutdown.request()
        self.thread.join(timeout=30)
        self.metrics.close()
        assert not self.thread.is_alive()

    def scrape(self) -> Scraped:
        return scrape(self.port)


def test_worker_script_serves_outcomes_timings_and_queue_depths(shared_redis, client, queue_name, processes):
    """The worker script with METRICS_PORT serves the paused queue's depth, then counts each retry, dead letter (failed or malformed), try and wait, with the queue as the only label besides outcome and le."""
    port = free_port()
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.pause()
    env = script_env(shared_redis.url, queue_name, METRICS_PORT=port, MAX_ATTEMPTS=2)
    worker = processes.start("worker/main.py", "--fail-rate", "1", env=env)
    [serving] = worker.wait_for("metrics_serving", timeout=20)
    assert serving["port"] == port and serving["queue"] == queue_name and serving["level"] == "info"
    queue.push_many([{"n": i} for i in range(5)])
    client.rpush(queue_name, "garbage")
    before = scrape(port)
    assert [before(name, queue=queue_name) for name in DEPTHS] == [6, 0, 0, 0]
    assert counts(before, queue_name) == dict.fromkeys(OUTCOMES, 0)
    assert before("workqueue_handler_seconds_count", queue=queue_name) == before("workqueue_wait_seconds_count", queue=queue_name) == 0
    queue.resume()
    after = wait_until(lambda: (s := scrape(port))("workqueue_dead", queue=queue_name) == 6
                       and s("workqueue_messages_total", queue=queue_name, outcome="dead_lettered") == 6 and s, timeout=30)
    assert counts(after, queue_name) == {"completed": 0, "retried": 5, "dead_lettered": 6, "recovered": 0, "duplicate_skipped": 0}
    assert [after(name, queue=queue_name) for name in DEPTHS] == [0, 0, 0, 6]
    for histogram in ("workqueue_handler_seconds", "workqueue_wait_seconds"):
        assert after(f"{histogram}_count", queue=queue_name) == after(f"{histogram}_bucket", queue=queue_name, le="+Inf") == 10
        assert 0 <= after(f"{histogram}_sum", queue=queue_name) < 30
    assert {key for name, labels in after if name.startswith("workqueue_") for key, _ in labels} == {"queue", "outcome", "le"}
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_in_process_worker_counts_completed_and_duplicates_and_times_the_wait(queue_name, queue):
    """A Worker given WorkerMetrics counts completed tries and a skipped duplicate, and times a message created 100 s ago as waiting about 100 s."""
    with Running(queue) as running:
        queue.push_encoded([message.encode({"id": "old", "attempts": 0, "created_at": time.time() - 100, "body": None})])
        queue.push({"n": 1}, message_id="twice")
        wait_until(lambda: queue.stats()["completed"] == 2, timeout=15)
        queue.push({"n": 1}, message_id="twice")
        scraped = wait_until(lambda: (s := running.scrape())("workqueue_messages_total", queue=queue_name, outcome="duplicate_skipped") == 1 and s,
                             timeout=15)
    assert counts(scraped, queue_name) == {"completed": 2, "retried": 0, "dead_lettered": 0, "recovered": 0, "duplicate_skipped": 1}
    assert scraped("workqueue_handler_seconds_count", queue=queue_name) == scraped("workqueue_wait_seconds_count", queue=queue_name) == 2
    assert scraped("workqueue_wait_seconds_bucket", queue=queue_name, le="60.0") == 1
    assert scraped("workqueue_wait_seconds_bucket", queue=queue_name, le="300.0") == 2
    assert 100 <= scraped("workqueue_wait_seconds_sum", queue=queue_name) < 160


def test_messages_taken_back_from_a_dead_worker_count_as_recovered(shared_redis, queue_name):
    """Messages held by a worker that stopped responding count as recovered on the worker that took them back, and as dead_lettered when their attempts were used up."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=2)
    queue.push({"n": 1})
    queue.push_encoded([message.encode({"id": "last-try", "attempts": 1, "created_at": time.time(), "body": None})])
    taken = queue.consumer("ghost", worker_timeout=1).fetch(2).taken
    assert len(taken) == 2
    expected = {"completed": 1, "retried": 0, "dead_lettered": 1, "recovered": 2, "duplicate_skipped": 0}
    with Running(queue) as running:
        # The housekeeper counts a recovery once its script has answered, and the loop may run the
        # recovered message before that: wait for every count, not for the first to arrive.
        scraped = wait_until(lambda: (s := running.scrape())("workqueue_dead", queue=queue_name) == 1
                             and counts(s, queue_name) == expected and s, timeout=20)
    assert counts(scraped, queue_name) == expected


def test_a_scrape_while_redis_is_down_serves_the_counters_without_the_depths(queue_name):
    """With Redis unreachable a scrape still answers with the counters and histograms, and leaves the depth gauges out."""
    metrics = WorkerMetrics(Queue.connect(f"redis://127.0.0.1:{free_port()}/0", queue_name))
    port = free_port()
    metrics.serve(port, structlog.get_logger())
    try:
        scraped = scrape(port)
        again = scrape(port)  # the server goes on after a failed read
    finally:
        metrics.close()
    assert counts(scraped, queue_name) == counts(again, queue_name) == dict.fromkeys(OUTCOMES, 0)
    assert scraped("workqueue_handler_seconds_count", queue=queue_name) == 0
    assert not [name for name, _ in scraped if name in DEPTHS]


@pytest.mark.parametrize("env_overrides, args, named", [
    ({"METRICS_PORT": "70000"}, [], "METRICS_PORT"),
    ({"METRICS_PORT": "http"}, [], "METRICS_PORT"),
    ({}, ["--metrics-port=-1"], "--metrics-port"),
])
def test_a_bad_metrics_port_exits_2_with_one_line_naming_it(shared_redis, queue_name, env_overrides, args, named):
    """A METRICS_PORT or --metrics-port that is not a port from 0 to 65535 stops the worker with exit 2 and one line naming it."""
    code, stderr = run_raw("worker/main.py", *args, env=script_env(shared_redis.url, queue_name, **env_overrides), timeout=30)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0] and "Traceback" not in stderr


def test_without_prometheus_client_the_worker_exits_2_naming_the_extra(shared_redis, queue_name, tmp_path):
    """With METRICS_PORT set and prometheus_client not importable, the worker exits 2 with one line saying pip install "workqueue-redis[metrics]"; unset, it runs."""
    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    code, stderr = run_raw("worker/main.py", env=script_env(shared_redis.url, queue_name, METRICS_PORT=free_port(), PYTHONPATH=path), timeout=30)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'pip install "workqueue-redis[metrics]"' in lines[0]
    code, stderr = run_raw("worker/main.py", "--burst", env=script_env(shared_redis.url, queue_name, PYTHONPATH=path), timeout=30)
    assert code == 0, stderr


def test_a_metrics_port_in_use_exits_2_with_one_line(shared_redis, queue_name):
    """A METRICS_PORT another socket holds stops the worker with exit 2 and one line naming the setting."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = run_raw("worker/main.py", env=script_env(shared_redis.url, queue_name, METRICS_PORT=port), timeout=30)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "METRICS_PORT" in lines[0] and str(port) in lines[0], stderr
