"""One job queue system measured the same way; run inside that system's own virtualenv.

    python systems.py drain  SYSTEM N      # prints {"drain": jobs/s, "enqueue": jobs/s, "version": ...}
    python systems.py pickup SYSTEM N      # prints {"p50_ms": ..., "p99_ms": ...}
    python systems.py paired-pickup N A B  # A's and B's pickups, samples interleaved (see below)
    python systems.py worker SYSTEM        # (internal) runs one single-process worker until killed
    python systems.py rss N                # workqueue only: worker RSS after 10 000 and after N messages

SYSTEM is raw (redis-py alone), workqueue, workqueue-simple, workqueue-info (INFO logs on), rq, dramatiq, celery, huey or arq. The Redis is
BENCH_REDIS_URL (the benchmark's own server). Jobs are no-ops, except that job 0 and job N-1
record when they ran, so the drain rate excludes start-up: (N-1) / (last - first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import version

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
stamps = redis.Redis.from_url(URL, socket_timeout=10)  # every blocking wait below is 2 s at most


def wait_pop(key: str, seconds: float):
    """BLPOP in short slices (a long block would outlast the socket timeout) until `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reply = stamps.blpop([key], timeout=2)
        if reply:
            return reply
    return None


def record(i: int, n: int) -> None:
    """The work of one benchmark job: nothing, but the first and last say when they ran."""
    if i == 0:
        stamps.set("bench:first", repr(time.time()))
    if i == n - 1:
        stamps.set("bench:last", repr(time.time()))
        stamps.rpush("bench:done", 1)


def pickup(sent: float) -> None:
    stamps.rpush("bench:latency", repr(time.time() - sent))


# -- each system: its package, how to enqueue, how to run one worker process ------------------


def system(name: str, queue: str = QUEUE):
    """The named system, set up (only its own package is imported)."""
    if name == "raw":
        return Raw(queue)
    if name.startswith("workqueue"):
        return Workqueue("simple" if name.endswith("simple") else "reliable", "info" if name.endswith("info") else "warning", queue)
    return {"rq": Rq, "dramatiq": Dramatiq, "celery": Celery, "huey": Huey, "arq": Arq}[name]()


class Raw:
    """The floor: redis-py alone, the minimal reliable consumer (BLMOVE, run, LREM) per message."""

    package = "redis"

    def __init__(self, queue: str = QUEUE) -> None:
        self.client = redis.Redis.from_url(URL)
        self.queue = queue

    def enqueue(self, kind: str, *args) -> None:
        self.client.rpush(self.queue, json.dumps({"kind": kind, "args": args}))

    def work(self) -> None:
        jobs = {"record": record, "pickup": pickup}
        while True:
            raw = self.client.blmove(self.queue, f"{self.queue}:processing", 1, "LEFT", "RIGHT")
            if raw is not None:
                body = json.loads(raw)
                jobs[body["kind"]](*body["args"])
                self.client.lrem(f"{self.queue}:processing", 1, raw)


class Workqueue:
    package = "workqueue"

    def __init__(self, delivery: str, log_level: str, queue: str = QUEUE) -> None:
        from workqueue import Queue

        self.delivery = delivery
        self.log_level = log_level
        self.queue = Queue.connect(URL, queue)

    def enqueue(self, kind: str, *args) -> None:
        self.queue.push({"kind": kind, "args": args})

    def enqueue_many(self, kind: str, argsets) -> None:
        self.queue.push_many({"kind": kind, "args": args} for args in argsets)

    def work(self) -> None:
        from workqueue import Worker
        from workqueue.logs import configure_logging

        configure_logging(self.log_level, "json")  # the worker's stderr goes to /dev/null
        jobs = {"record": record, "pickup": pickup}
        Worker(self.queue, lambda m: jobs[m.body["kind"]](*m.body["args"]), delivery=self.delivery).run()


class Rq:
    package = "rq"

    def __init__(self) -> None:
        from rq import Queue

        self.queue = Queue(QUEUE, connection=redis.Redis.from_url(URL))

    def enqueue(self, kind: str, *args) -> None:
        self.queue.enqueue(f"systems.{kind}", *args)

    def work(self) -> None:
        from rq import SimpleWorker

        SimpleWorker([self.queue], connection=self.queue.connection).work(logging_level="WARNING")


_dramatiq_actors = {}


class Dramatiq:
    package = "dramatiq"

    def __init__(self) -> None:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        if not _dramatiq_actors:
            dramatiq.set_broker(RedisBroker(url=URL, namespace=QUEUE))
            _dramatiq_actors.update(record=dramatiq.actor(record, max_retries=0), pickup=dramatiq.actor(pickup, max_retries=0))
        self.broker = dramatiq.get_broker()

    def enqueue(self, kind: str, *args) -> None:
        _dramatiq_actors[kind].send(*args)

    def work(self) -> None:
        import dramatiq

        worker = dramatiq.Worker(self.broker, worker_threads=8)  # its documented default
        worker.start()
        while True:
            time.sleep(1)


def _celery_app():
    from celery import Celery as App

    app = App("systems", broker=URL)
    app.conf.update(worker_hijack_root_logger=False, task_ignore_result=True, broker_connection_retry_on_startup=True)
    app.task(name="systems.record")(record)
    app.task(name="systems.pickup")(pickup)
    return app


class Celery:
    package = "celery"

    def __init__(self) -> None:
        self.app = _celery_app()

    def enqueue(self, kind: str, *args) -> None:
        self.app.send_task(f"systems.{kind}", args)

    def work(self) -> None:
        self.app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--loglevel=WARNING",
                              "--without-gossip", "--without-mingle", "--without-heartbeat"])


_huey_tasks = {}


class Huey:
    package = "huey"

    def __init__(self) -> None:
        from huey import RedisHuey

        if not _huey_tasks:
            huey = RedisHuey(QUEUE, url=URL, results=False)
            _huey_tasks.update(app=huey, record=huey.task()(record), pickup=huey.task()(pickup))
        self.huey = _huey_tasks["app"]

    def enqueue(self, kind: str, *args) -> None:
        _huey_tasks[kind](*args)

    def work(self) -> None:
        self.huey.create_consumer(workers=1, worker_type="thread").run()


async def arq_record(ctx, i, n):
    record(i, n)


async def arq_pickup(ctx, sent):
    pickup(sent)


class Arq:
    package = "arq"

    def __init__(self) -> None:
        from arq.connections import RedisSettings

        self.settings = RedisSettings.from_dsn(URL)

    def enqueue(self, kind: str, *args) -> None:
        import asyncio

        from arq import create_pool

        async def go():
            pool = await create_pool(self.settings)
            await pool.enqueue_job(f"arq_{kind}", *args)
            await pool.aclose()

        asyncio.run(go())

    def enqueue_many(self, kind: str, argsets) -> None:
        import asyncio

        from arq import create_pool

        async def go():
            pool = await create_pool(self.settings)
            for args in argsets:
                await pool.enqueue_job(f"arq_{kind}", *args)
            await pool.aclose()

        asyncio.run(go())

    def work(self) -> None:
        from arq.worker import Worker

        Worker(functions=[arq_record, arq_pickup], redis_settings=self.settings).run()


# -- measurements ---------------------------------------------------------------------------


def start_worker(name: str, queue: str = QUEUE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "worker", name], cwd=os.path.dirname(os.path.abspath(__file__)),
                            env=dict(os.environ, BENCH_QUEUE=queue), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain(name: str, n: int) -> dict:
    stamps.flushdb()  # the benchmark's own throwaway server, never a shared one
    target = system(name)
    started = time.perf_counter()
    many = getattr(target, "enqueue_many", None)
    if many is not None and name.startswith("workqueue"):
        for i in range(n):  # one at a time, as the peers do; push_many is measured separately
            target.enqueue("record", i, n)
    elif many is not None:
        many("record", [(i, n) for i in range(n)])
    else:
        for i in range(n):
            target.enqueue("record", i, n)
    enqueue_rate = n / (time.perf_counter() - started)
    worker = start_worker(name)
    try:
        if not wait_pop("bench:done", 600):
            raise SystemExit(f"{name}: the last job did not run within 600 s")
    finally:
        worker.kill()
        worker.wait()
    seconds = float(stamps.get("bench:last")) - float(stamps.get("bench:first"))
    return {"drain": (n - 1) / seconds, "enqueue": enqueue_rate, "version": version(target.package)}


def pickup_latency(name: str, samples: int) -> dict:
    """Idle pickup of one system on the default queue (the peers know no other)."""
    return paired_pickup([name], samples, queue_of=lambda _: QUEUE)[name]


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": ordered[len(ordered) // 2], "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def paired_pickup(names: list[str], samples: int, queue_of=lambda name: f"bench-{name}") -> dict:
    """Idle pickup of several systems whose workers idle side by side, each on its own queue;
    their samples alternate, so a noisy moment of the machine hits all of them alike. Also the
    median of the per-round differences from the first system (its overhead over the first)."""
    stamps.flushdb()
    targets = {name: system(name, queue_of(name)) for name in names}
    workers = [start_worker(name, queue_of(name)) for name in names]
    latencies: dict[str, list[float]] = {name: [] for name in names}
    try:
        for name, target in targets.items():  # wait for each worker to be up
            target.enqueue("pickup", time.time())
            if not wait_pop("bench:latency", 60):
                raise SystemExit(f"{name}: worker did not start")
        for i in range(samples):
            for name in names if i % 2 == 0 else names[::-1]:
                time.sleep(0.02)  # let the workers go idle
                targets[name].enqueue("pickup", time.time())
                reply = wait_pop("bench:latency", 30)
                if not reply:
                    raise SystemExit(f"{name}: a pickup took over 30 s")
                latencies[name].append(float(reply[1]) * 1000)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    result = {name: percentiles(values) | {"samples": samples} for name, values in latencies.items()}
    base = latencies[names[0]]
    for name in names[1:]:
        differences = sorted(b - a for a, b in zip(base, latencies[name], strict=True))
        result[name]["median_overhead_ms"] = differences[len(differences) // 2]
    return result


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def worker_rss(n: int) -> dict:
    """Drain n messages in this process and read its RSS after 10 000 and after all of them."""
    from workqueue import Queue, Worker
    from workqueue.logs import configure_logging

    stamps.flushdb()
    configure_logging("warning", "json")
    queue = Queue.connect(URL, QUEUE)
    for start in range(0, n, 100_000):
        queue.push_many({"i": i} for i in range(start, min(n, start + 100_000)))
    seen = {"count": 0}
    rss = {}

    def handler(message) -> None:
        seen["count"] += 1
        if seen["count"] in (10_000, n):
            rss[seen["count"]] = rss_kib()

    Worker(queue, handler, burst=True).run()
    return {"rss_10k_mib": rss[10_000] / 1024, "rss_end_mib": rss[n] / 1024, "messages": n}


if __name__ == "__main__":
    # Work through the module under its importable name, so that producers and workers name
    # the jobs alike (systems.record, not __main__.record).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import systems

    command, name = sys.argv[1], sys.argv[2]
    if command == "rss":
        print(json.dumps(systems.worker_rss(int(name))))
    elif command == "worker":
        systems.system(name).work()
    elif command == "drain":
        print(json.dumps(systems.drain(name, int(sys.argv[3]))))
    elif command == "pickup":
        print(json.dumps(systems.pickup_latency(name, int(sys.argv[3]))))
    elif command == "paired-pickup":
        print(json.dumps(systems.paired_pickup(sys.argv[3:], int(name))))
