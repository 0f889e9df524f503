"""One job queue system measured the same way; run inside that system's own virtualenv.

    python systems.py drain  SYSTEM N        # prints {"drain": jobs/s, "enqueue": jobs/s, "version": ...}
    python systems.py pickup SYSTEM N        # prints {"p50_ms": ..., "p99_ms": ...}
    python systems.py paired-pickup N A B    # A's and B's pickups, samples interleaved (see below)
    python systems.py efficiency SYSTEM S N  # N jobs busy-waiting S seconds each: handler time / wall time
    python systems.py worker SYSTEM          # (internal) runs one single-process worker until killed
    python systems.py rss N                  # workqueue only: worker RSS after 10 000 and after N messages

SYSTEM is raw (redis-py alone, one message at a time), raw-batched (redis-py alone, batches of
200), workqueue, workqueue-simple, workqueue-info (INFO logs on), rq, dramatiq, celery, huey or
arq. The Redis is BENCH_REDIS_URL (the benchmark's own server). Drain jobs are no-ops, except
that job 0 and job N-1 record when they ran, so the drain rate excludes start-up:
(N-1) / (last - first).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from importlib.metadata import version

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
WORKER_SECONDS = 900  # a worker process ends itself after this long, should its parent die without killing it
ONE_AT_A_TIME = 10_000  # jobs enqueued one at a time to time it, on systems that also have a batched path
stamps = redis.Redis.from_url(URL, socket_timeout=10)  # every blocking wait below is 2 s at most


def wait_pop(key: str, seconds: float, workers: Sequence[subprocess.Popen] = ()):
    """BLPOP in short slices (a long block would outlast the socket timeout) until `seconds`
    pass; gives up at once when one of `workers` has exited (it failed: they run until killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reply = stamps.blpop([key], timeout=1)
        if reply:
            return reply
        ended = [worker.args for worker in workers if worker.poll() is not None]
        if ended:
            raise SystemExit(f"a worker exited early: {ended[0]}")
    return None


# -- the jobs: every system runs these same functions --------------------------------------


def record(i: int, n: int) -> None:
    """The work of one drain job: nothing, but the first and last say when they ran."""
    if i == 0:
        stamps.set("bench:first", repr(time.time()))
    if i == n - 1:
        stamps.set("bench:last", repr(time.time()))
        stamps.rpush("bench:done", 1)


def pickup(sent: float) -> None:
    """Say how long after its push this job started."""
    stamps.rpush("bench:latency", repr(time.time() - sent))


def noop() -> None:
    """Nothing at all: the many-workers drain reads its progress from workqueue's own counters."""


def sleep(seconds: float) -> None:
    """An I/O-like job: it waits without using the CPU."""
    time.sleep(seconds)


class Samples:
    """Values gathered in a worker process and sent to Redis lists by a daemon thread every
    50 ms: an RPUSH per job would add a round trip to every job being timed."""

    def __init__(self) -> None:
        self.pending: collections.deque[tuple[str, float]] = collections.deque()  # append/popleft are thread-safe
        self.thread: threading.Thread | None = None

    def add(self, key: str, value: float) -> None:
        self.pending.append((key, value))
        if self.thread is None:
            self.thread = threading.Thread(target=self._flush, daemon=True)
            self.thread.start()

    def _flush(self) -> None:
        """Send what was gathered, every 50 ms, for as long as a worker process may live."""
        deadline = time.monotonic() + WORKER_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
            batch: dict[str, list[str]] = collections.defaultdict(list)
            while self.pending:
                key, value = self.pending.popleft()
                batch[key].append(repr(value))
            for key, values in batch.items():
                stamps.rpush(key, *values)


_samples = Samples()


def loaded(sent: float, seconds: float, key: str) -> None:
    """A job of the latency-under-load run: note its push-to-start latency (ms) under `key`, then sleep."""
    _samples.add(key, (time.time() - sent) * 1000)
    time.sleep(seconds)


# A lock around the timed busy-wait: a busy-wait holds the GIL anyway, and with Dramatiq's 8
# threads it keeps two threads' waits from being counted over the same stretch of wall time.
_spin_lock = threading.Lock()
_spun = {"count": 0, "handler": 0.0, "first": 0.0}


def spin(seconds: float, n: int) -> None:
    """A CPU-bound job: busy-wait `seconds`, and add the time spent here to the total. After
    the n-th job, report the total and the wall time from the first job's start to now."""
    with _spin_lock:
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            pass
        ended = time.perf_counter()
        _spun["handler"] += ended - started
        _spun["count"] += 1
        if _spun["count"] == 1:
            _spun["first"] = started
        if _spun["count"] == n:
            stamps.set("bench:spin", json.dumps({"handler": _spun["handler"], "wall": ended - _spun["first"], "messages": n}))
            stamps.rpush("bench:done", 1)


JOBS = {"record": record, "pickup": pickup, "noop": noop, "sleep": sleep, "loaded": loaded, "spin": spin}


def run_job(body: dict) -> None:
    """What each worker of raw redis-py and workqueue does with a message's body."""
    JOBS[body["kind"]](*body["args"])


# -- each system: its package, how to enqueue, how to run one worker process ------------------


def system(name: str, queue: str = QUEUE):
    """The named system, set up (only its own package is imported)."""
    if name == "raw":
        return Raw(queue)
    if name == "raw-batched":
        return RawBatched(queue)
    if name.startswith("workqueue"):
        return Workqueue("simple" if name.endswith("simple") else "reliable", "info" if name.endswith("info") else "warning", queue)
    return {"rq": Rq, "dramatiq": Dramatiq, "celery": Celery, "huey": Huey, "arq": Arq}[name]()


class System:
    """What every system offers the measurements; `batched` says enqueue_many is faster than
    one job at a time (the peers' is a plain loop)."""

    package = ""
    batched = False

    def enqueue(self, kind: str, *args) -> None:
        raise NotImplementedError

    def enqueue_many(self, kind: str, argsets) -> None:
        for args in argsets:
            self.enqueue(kind, *args)


class Raw(System):
    """The floor: redis-py alone, the minimal reliable consumer (BLMOVE, run, LREM) per message."""

    package = "redis"
    batched = True

    def __init__(self, queue: str = QUEUE) -> None:
        self.client = redis.Redis.from_url(URL)
        self.queue = queue
        self.processing = f"{queue}:processing:{os.getpid()}"  # one per worker, as recovery would need

    def encode(self, kind: str, args) -> str:
        return json.dumps({"kind": kind, "args": args})

    def enqueue(self, kind: str, *args) -> None:
        self.client.rpush(self.queue, self.encode(kind, args))

    def enqueue_many(self, kind: str, argsets) -> None:
        pipe = self.client.pipeline(transaction=False)
        for count, args in enumerate(argsets, 1):
            pipe.rpush(self.queue, self.encode(kind, args))
            if count % 1000 == 0:
                pipe.execute()
        pipe.execute()

    def work(self) -> None:
        while True:
            raw = self.client.blmove(self.queue, self.processing, 1, "LEFT", "RIGHT")
            if raw is not None:
                run_job(json.loads(raw))
                self.client.lrem(self.processing, 1, raw)


# Take up to ARGV[1] messages from the head of KEYS[1] into the processing list KEYS[2].
_TAKE = """
local taken = redis.call('LPOP', KEYS[1], ARGV[1])
if not taken then return {} end
redis.call('RPUSH', KEYS[2], unpack(taken))
return taken
"""
# Acknowledge ARGV[2] messages (ARGV[3..]: the messages, then their ids): out of the processing
# list KEYS[1] (they are at its head, so each LREM stops at once), ids into the done set KEYS[2]
# scored ARGV[1] (ms), and the count into the hash KEYS[3].
_ACK = """
local n = tonumber(ARGV[2])
local markers = {}
for i = 1, n do
  redis.call('LREM', KEYS[1], 1, ARGV[2 + i])
  markers[#markers + 1] = ARGV[1]
  markers[#markers + 1] = ARGV[2 + n + i]
end
redis.call('ZADD', KEYS[2], unpack(markers))
redis.call('HINCRBY', KEYS[3], 'completed', n)
"""


class RawBatched(Raw):
    """The second floor: a bare batched consumer in redis-py. One script call moves up to 200
    messages into a processing list, each is decoded and run, and one script call acknowledges
    the batch (out of the processing list, done markers by id, a counter). No retries, no
    recovery, no duplicate check, no overlap of Redis's work with the jobs'."""

    BATCH = 200

    def encode(self, kind: str, args) -> str:
        """workqueue's message format, so both decode the same bytes."""
        return json.dumps({"id": uuid.uuid4().hex, "attempts": 0, "created_at": time.time(), "body": {"kind": kind, "args": args}})

    def work(self) -> None:
        take, ack = self.client.register_script(_TAKE), self.client.register_script(_ACK)
        done, counters = f"{self.queue}:completed-ids", f"{self.queue}:counters"  # not bench:done, the stamps list
        while True:
            batch = take(keys=[self.queue, self.processing], args=[self.BATCH])
            if not batch:  # idle: block for one rather than poll
                raw = self.client.blmove(self.queue, self.processing, 1, "LEFT", "RIGHT")
                if raw is None:
                    continue
                batch = [raw]
            ids = []
            for raw in batch:
                message = json.loads(raw)
                run_job(message["body"])
                ids.append(message["id"])
            ack(keys=[self.processing, done, counters], args=[int(time.time() * 1000), len(batch), *batch, *ids])


class Workqueue(System):
    package = "workqueue-redis"  # the distribution (the import name is workqueue)
    batched = True

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
        Worker(self.queue, lambda m: run_job(m.body), delivery=self.delivery).run()


class Rq(System):
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


class Dramatiq(System):
    package = "dramatiq"

    def __init__(self) -> None:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        if not _dramatiq_actors:
            dramatiq.set_broker(RedisBroker(url=URL, namespace=QUEUE))
            _dramatiq_actors.update({kind: dramatiq.actor(job, max_retries=0) for kind, job in JOBS.items()})
        self.broker = dramatiq.get_broker()

    def enqueue(self, kind: str, *args) -> None:
        _dramatiq_actors[kind].send(*args)

    def work(self) -> None:
        import dramatiq

        worker = dramatiq.Worker(self.broker, worker_threads=8)  # its documented default
        worker.start()
        time.sleep(WORKER_SECONDS)  # until killed


def _celery_app():
    from celery import Celery as App

    app = App("systems", broker=URL)
    app.conf.update(worker_hijack_root_logger=False, task_ignore_result=True, broker_connection_retry_on_startup=True)
    for kind, job in JOBS.items():
        app.task(name=f"systems.{kind}")(job)
    return app


class Celery(System):
    package = "celery"

    def __init__(self) -> None:
        self.app = _celery_app()

    def enqueue(self, kind: str, *args) -> None:
        self.app.send_task(f"systems.{kind}", args)

    def work(self) -> None:
        self.app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--loglevel=WARNING",
                              "--without-gossip", "--without-mingle", "--without-heartbeat"])


_huey_tasks = {}


class Huey(System):
    package = "huey"

    def __init__(self) -> None:
        from huey import RedisHuey

        if not _huey_tasks:
            huey = RedisHuey(QUEUE, url=URL, results=False)
            _huey_tasks.update({kind: huey.task()(job) for kind, job in JOBS.items()}, app=huey)
        self.huey = _huey_tasks["app"]

    def enqueue(self, kind: str, *args) -> None:
        _huey_tasks[kind](*args)

    def work(self) -> None:
        self.huey.create_consumer(workers=1, worker_type="thread").run()


def _arq_function(kind: str):
    """arq runs coroutines that take its context first; this one runs the job of that kind."""
    from arq.worker import func

    job = JOBS[kind]

    async def run(ctx, *args):
        job(*args)

    return func(run, name=f"arq_{kind}")


class Arq(System):
    package = "arq"

    def __init__(self) -> None:
        from arq.connections import RedisSettings

        self.settings = RedisSettings.from_dsn(URL)

    def enqueue(self, kind: str, *args) -> None:
        self.enqueue_many(kind, [args])

    def enqueue_many(self, kind: str, argsets) -> None:
        """One pool for all of them (a pool per job would time arq's connecting), one job a round trip."""
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

        Worker(functions=[_arq_function(kind) for kind in JOBS], redis_settings=self.settings).run()


# -- measurements ---------------------------------------------------------------------------


def start_worker(name: str, queue: str = QUEUE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "worker", name], cwd=os.path.dirname(os.path.abspath(__file__)),
                            env=dict(os.environ, BENCH_QUEUE=queue), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(workers: list[subprocess.Popen]) -> None:
    """Kill our worker processes (only these, by their handles) and reap them."""
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.wait()


def fill(target: System, kind: str, argsets: list) -> float:
    """Enqueue the jobs; returns the one-at-a-time enqueue rate. Peers enqueue every job one at
    a time; systems with a batched path enqueue only the first ONE_AT_A_TIME so, which is enough
    for the rate, and the rest batched: a drain does not depend on how its jobs were pushed, and
    enqueueing 200 000 one at a time, seven times over, would take minutes."""
    timed = argsets[:ONE_AT_A_TIME] if target.batched else argsets
    started = time.perf_counter()
    if target.batched:
        for args in timed:
            target.enqueue(kind, *args)
    else:
        target.enqueue_many(kind, timed)
    rate = len(timed) / (time.perf_counter() - started)
    if target.batched:
        target.enqueue_many(kind, argsets[len(timed):])
    return rate


def run_until_done(name: str, seconds: float) -> None:
    """Start one worker of `name` and wait (at most `seconds`) for its jobs to say they are done."""
    worker = start_worker(name)
    try:
        if not wait_pop("bench:done", seconds, [worker]):
            raise SystemExit(f"{name}: the last job did not run within {seconds:.0f} s")
    finally:
        stop([worker])


def drain(name: str, n: int) -> dict:
    stamps.flushdb()  # the benchmark's own throwaway server, never a shared one
    target = system(name)
    enqueue_rate = fill(target, "record", [(i, n) for i in range(n)])
    run_until_done(name, 600)
    seconds = float(stamps.get("bench:last")) - float(stamps.get("bench:first"))
    return {"drain": (n - 1) / seconds, "enqueue": enqueue_rate, "version": version(target.package)}


def efficiency(name: str, seconds: float, n: int) -> dict:
    """One worker drains n jobs that busy-wait `seconds` each: the share of the wall time (first
    job's start to last job's end) spent in the jobs, and the rest per message (overhead)."""
    stamps.flushdb()
    target = system(name)
    target.enqueue_many("spin", [(seconds, n)] * n)
    run_until_done(name, 120 + n * (seconds + 0.05))  # bounded, and generous even for the slowest peer
    spun = json.loads(stamps.get("bench:spin"))
    return {"handler_seconds": seconds, "messages": n, "wall": spun["wall"], "efficiency": spun["handler"] / spun["wall"],
            "overhead_us": (spun["wall"] - spun["handler"]) / n * 1e6}


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
            if not wait_pop("bench:latency", 60, workers):
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
        stop(workers)
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


def work(name: str) -> None:
    """Run one worker of `name` in this process, after saying so under bench:ready (it is then
    connected, and about to wait for jobs); it ends itself after WORKER_SECONDS at most."""
    watchdog = threading.Timer(WORKER_SECONDS, os._exit, [3])
    watchdog.daemon = True
    watchdog.start()
    target = system(name)
    stamps.rpush("bench:ready", name)
    target.work()


if __name__ == "__main__":
    # Work through the module under its importable name, so that producers and workers name
    # the jobs alike (systems.record, not __main__.record).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import systems

    command, name = sys.argv[1], sys.argv[2]
    if command == "rss":
        print(json.dumps(systems.worker_rss(int(name))))
    elif command == "worker":
        systems.work(name)
    elif command == "drain":
        print(json.dumps(systems.drain(name, int(sys.argv[3]))))
    elif command == "efficiency":
        print(json.dumps(systems.efficiency(name, float(sys.argv[3]), int(sys.argv[4]))))
    elif command == "pickup":
        print(json.dumps(systems.pickup_latency(name, int(sys.argv[3]))))
    elif command == "paired-pickup":
        print(json.dumps(systems.paired_pickup(sys.argv[3:], int(name))))
