"""Worker commands measured as they are run: `python -m workqueue worker MODULE:ATTR`, and the
peers' own workers at the same concurrency; run inside the system's virtualenv, as systems.py.

    python command.py io SYSTEM KIND N SECONDS M CAP    # M jobs sleeping SECONDS, one worker running N at once
    python command.py bare KIND N SECONDS M             # the same sleeps with no queue: the machine's ceiling
    python command.py crash SYSTEM KIND N SECONDS M WINDOW   # the same, SIGKILLed mid-run and restarted
    python command.py cpu PROCESSES M                   # workqueue: M jobs busy-waiting 1 ms, --processes P
    python command.py drain MODE N                      # workqueue: no-op drain, MODE supervised or in-process
    python command.py pickup N                          # workqueue: idle pickup, in-process beside supervised
    python command.py pipeline MODE N                   # workqueue: two-stage no-op pipeline beside the drain and
                                                        # push_many; MODE in-process, supervised or both
    python command.py worker SYSTEM KIND N              # (internal) a peer's worker in this process

SYSTEM is workqueue (the worker command, supervised: --processes 1 --concurrency N), arq, saq,
taskiq (async: KIND async, asyncio.sleep) or dramatiq, celery, huey (threads: KIND threads,
time.sleep). Each prints one JSON object. Every worker runs in a process group of its own
(start_new_session), so that it is stopped, children and all, by a SIGKILL of that group (ours:
the group's id is the pid of the process we started); it also dies with this process
(PR_SET_PDEATHSIG). Timing is from the first job's start, never from process start: a supervised
worker's children take a while to start, and so do the peers'. The Redis is BENCH_REDIS_URL
(bench/run's own server); without it, this script starts a throwaway redis-server of its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from statistics import median

from handlers import HANDLERS, STAGE_ONE, STAGE_TWO, URL, async_sleep_job, sleep_job, stamps
from systems import percentiles

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
WORKER_SECONDS = 900  # a peer's worker process ends itself after this long (as systems.py's)
WORKER_TIMEOUT = "10"  # workqueue's WORKER_TIMEOUT (s) here: a SIGKILLed worker's messages come back after it
CHUNK = 100  # the async peers' jobs are enqueued this many at a time (gather), one call a job
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc's CPU times count these a second
THROUGH_SECONDS = 120  # a burst run's last job must report within this, plus 1 ms a message
IDLE_TICK = 0.2  # s between two readings of a starting worker's CPU time, waiting for it to idle
PIPELINE_ROUNDS = 3  # each of the pipeline scenario's measurements, in rounds (ABAB): medians of 3


# -- the systems: how to enqueue the sleeping jobs, and the worker's command line -------------


class System:
    package = ""

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        raise NotImplementedError

    def argv(self, kind: str, n: int, seconds: float) -> list[str]:
        """The worker's command line: by default this script's `worker` command, in this venv."""
        return [sys.executable, str(BENCH / "command.py"), "worker", type(self).__name__.lower(), kind, str(n)]

    def work(self, kind: str, n: int) -> None:
        raise NotImplementedError

    def settled(self) -> bool:
        """Whether the system holds nothing more that could run (so a crash run can stop early);
        only workqueue says so, from its own stats: a peer's crash run waits its whole window."""
        return False


def workqueue_env(queue: str) -> dict[str, str]:
    return dict(os.environ, REDIS_URL=URL, BENCH_REDIS_URL=URL, LOG_LEVEL="warning", WORKER_TIMEOUT=WORKER_TIMEOUT,
                QUEUE_NAME=queue)


def workqueue_argv(handler: str, *flags: str, queue: str = QUEUE) -> list[str]:
    """`python -m workqueue worker handlers:NAME ...`, run in bench/ (the module is found there)."""
    return [sys.executable, "-m", "workqueue", "worker", f"handlers:{handler}", "--queue", queue, *flags]


class Workqueue(System):
    package = "workqueue-redis"  # the distribution (the import name is workqueue)

    def __init__(self, queue: str = QUEUE) -> None:
        from workqueue import Queue

        self.queue = Queue.connect(URL, queue)

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        self.queue.push_many({"i": i, "crash": crash} for i in ids)

    def argv(self, kind: str, n: int, seconds: float) -> list[str]:
        return workqueue_argv(HANDLERS[kind, seconds], "--processes", "1", "--concurrency", str(n), queue=self.queue.name)

    def settled(self) -> bool:
        stats = self.queue.stats()
        return stats["pending"] == stats["in_flight"] == stats["delayed"] == 0


async def arq_sleep(ctx, i: int, seconds: float, crash: bool) -> None:
    await async_sleep_job(i, seconds, crash)


class Arq(System):
    package = "arq"

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        async def go():
            pool = await create_pool(RedisSettings.from_dsn(URL))
            for start in range(0, len(ids), CHUNK):
                await asyncio.gather(*(pool.enqueue_job("sleep", i, seconds, crash) for i in ids[start:start + CHUNK]))
            await pool.aclose()

        asyncio.run(go())

    def work(self, kind: str, n: int) -> None:
        from arq.connections import RedisSettings
        from arq.worker import Worker, func

        Worker(functions=[func(arq_sleep, name="sleep")], redis_settings=RedisSettings.from_dsn(URL), max_jobs=n).run()


async def saq_sleep(ctx, *, i: int, seconds: float, crash: bool) -> None:
    await async_sleep_job(i, seconds, crash)


class Saq(System):
    package = "saq"

    def __init__(self) -> None:
        from saq import Queue

        self.queue = Queue.from_url(URL, name=QUEUE)

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        async def go():
            await self.queue.connect()
            for start in range(0, len(ids), CHUNK):
                await asyncio.gather(*(self.queue.enqueue("sleep", i=i, seconds=seconds, crash=crash)
                                       for i in ids[start:start + CHUNK]))
            await self.queue.disconnect()

        asyncio.run(go())

    def work(self, kind: str, n: int) -> None:
        from saq import Worker

        worker = Worker(self.queue, functions=[("sleep", saq_sleep)], concurrency=n)

        async def go():
            await self.queue.connect()
            await worker.start()

        asyncio.run(go())


class Taskiq(System):
    package = "taskiq"

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        from taskiq_app import broker, sleep

        async def go():
            await broker.startup()  # declares the consumer group, so that it reads from the first job on
            for start in range(0, len(ids), CHUNK):
                await asyncio.gather(*(sleep.kiq(i, seconds, crash) for i in ids[start:start + CHUNK]))
            await broker.shutdown()

        asyncio.run(go())

    def argv(self, kind: str, n: int, seconds: float) -> list[str]:
        """taskiq's worker command: one worker process (under its own supervising process)."""
        return [sys.executable, "-m", "taskiq", "worker", "taskiq_app:broker", "--workers", "1", "--max-async-tasks", str(n)]


_dramatiq = {}


class Dramatiq(System):
    package = "dramatiq"

    def __init__(self) -> None:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        if not _dramatiq:
            dramatiq.set_broker(RedisBroker(url=URL, namespace=QUEUE))
            _dramatiq["sleep"] = dramatiq.actor(sleep_job, actor_name="sleep", max_retries=0)
        self.broker = dramatiq.get_broker()

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        for i in ids:
            _dramatiq["sleep"].send(i, seconds, crash)

    def work(self, kind: str, n: int) -> None:
        import dramatiq

        dramatiq.Worker(self.broker, worker_threads=n).start()
        time.sleep(WORKER_SECONDS)  # until killed


class Celery(System):
    package = "celery"

    def __init__(self) -> None:
        from celery import Celery as App

        self.app = App("command", broker=URL)
        self.app.conf.update(worker_hijack_root_logger=False, task_ignore_result=True, broker_connection_retry_on_startup=True)
        self.app.task(name="sleep")(sleep_job)

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        with self.app.producer_or_acquire() as producer:
            for i in ids:
                self.app.send_task("sleep", (i, seconds, crash), producer=producer)

    def work(self, kind: str, n: int) -> None:
        self.app.worker_main(["worker", "--pool=threads", f"--concurrency={n}", "--loglevel=WARNING",
                              "--without-gossip", "--without-mingle", "--without-heartbeat"])


class Huey(System):
    package = "huey"

    def __init__(self) -> None:
        from huey import RedisHuey

        self.huey = RedisHuey(QUEUE, url=URL, results=False)
        self.task = self.huey.task(name="sleep")(sleep_job)

    def enqueue(self, kind: str, seconds: float, ids: range, crash: bool) -> None:
        for i in ids:
            self.task(i, seconds, crash)

    def work(self, kind: str, n: int) -> None:
        self.huey.create_consumer(workers=n, worker_type="thread").run()


SYSTEMS = {"workqueue": Workqueue, "arq": Arq, "saq": Saq, "taskiq": Taskiq, "dramatiq": Dramatiq, "celery": Celery, "huey": Huey}


# -- worker processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the started process: end it when this one ends (PR_SET_PDEATHSIG, SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Running:
    """A worker process in a group of its own, its stderr kept in a file (its tail explains a
    failure); stopped by a SIGKILL of the whole group."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
        self.argv = argv
        self.process = subprocess.Popen(argv, cwd=BENCH, env=env or dict(os.environ, BENCH_REDIS_URL=URL),
                                        stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                        start_new_session=True, preexec_fn=_die_with_parent)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.log.close()

    def kill(self) -> int:
        """SIGKILL to its group (its id is the pid of the process we started, which is not reaped
        before this: the id cannot have been reused), then reap it; returns its exit code."""
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        return self.process.returncode

    def exited(self) -> bool:
        """Whether the process we started has exited; it is left unreaped (WNOWAIT)."""
        return self.process.returncode is not None or os.waitid(
            os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def wait(self, seconds: float) -> int | None:
        """Its exit code once it exits by itself within `seconds` (what is left of its group is
        then killed), else None."""
        deadline = time.monotonic() + seconds
        while not self.exited():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        return self.kill()

    def check(self) -> None:
        """Fail, with its last words, if it exited (every worker here runs until killed, but burst ones)."""
        if self.exited():
            code = self.kill()
            raise SystemExit(f"{' '.join(self.argv[-8:])} exited with {code}: {self.tail()}")

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-1500:]

    def _group_stats(self) -> Iterator[tuple[str, list[str]]]:
        """(pid, the fields of /proc/PID/stat after the command's name) of every live process of
        its group: the worker and its children (a process that ends meanwhile is left out)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:
                    yield entry, fields
            except (OSError, ValueError, IndexError):
                continue

    def rss_kib(self) -> int:
        """VmRSS summed over every live process of its group: the worker and its children."""
        total = 0
        for pid, _ in self._group_stats():
            try:
                with open(f"/proc/{pid}/status") as status:
                    total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            except (OSError, StopIteration, ValueError, IndexError):
                continue
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time summed over every live process of its group (in clock ticks,
        10 ms each on Linux: a reading is that coarse per process)."""
        return sum(int(fields[11]) + int(fields[12]) for _, fields in self._group_stats()) / CLOCK_TICKS


def wait_until(condition, seconds: float, what: str, worker: Running | None = None, poll: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if worker is not None and worker.exited() and not condition():
            worker.check()  # it exited, and what it was to do is not done
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {seconds:.0f} s" + (f"; worker said: {worker.tail()}" if worker else ""))
        time.sleep(poll)


def spans(key: str = "bench:timings") -> tuple[int, float, float]:
    """Jobs reported under `key`, the first start and the last end among them."""
    pairs = [tuple(map(float, raw.split())) for raw in stamps.lrange(key, 0, -1)]
    return len(pairs), min(start for start, _ in pairs), max(end for _, end in pairs)


# -- measurements -------------------------------------------------------------------------------


def io(name: str, kind: str, n: int, seconds: float, messages: int, cap: float) -> dict:
    """Throughput of one worker running up to n jobs at once, each sleeping `seconds`: jobs
    reported / (last end − first start), against the limit n / seconds. The run ends when all
    `messages` are reported, or `cap` seconds after the first report (a slow system is timed
    over the jobs it finished by then, the same formula). RSS: the largest sum over the worker's
    processes, sampled every 0.25 s while it works."""
    stamps.flushdb()  # the benchmark's own throwaway server
    target = SYSTEMS[name]()
    started = time.perf_counter()
    target.enqueue(kind, seconds, range(messages), crash=False)
    enqueue_seconds = time.perf_counter() - started
    with Running(target.argv(kind, n, seconds), workqueue_env(QUEUE) if name == "workqueue" else None) as worker:
        wait_until(lambda: stamps.llen("bench:timings") > 0, 60, f"{name}: the first job", worker)
        first, rss, next_rss = time.monotonic(), 0, 0.0
        while stamps.llen("bench:timings") < messages and time.monotonic() < first + cap:
            worker.check()
            if time.monotonic() >= next_rss:
                rss, next_rss = max(rss, worker.rss_kib()), time.monotonic() + 0.25
            time.sleep(0.02)
        count, start, end = spans()
    rate = count / (end - start)
    return {"system": name, "kind": kind, "concurrency": n, "handler_seconds": seconds, "messages": messages, "done": count,
            "rate": rate, "limit": n / seconds, "efficiency": rate * seconds / n, "rss_mib": rss / 1024,
            "enqueue": messages / enqueue_seconds, "version": version(target.package)}


def bare(kind: str, n: int, seconds: float, messages: int) -> dict:
    """The ceiling of the I/O-bound runs on this machine, with no queue at all: `messages` sleeps
    of `seconds`, n at once (asyncio tasks on one event loop, or n threads), in this process:
    sleeps / elapsed, against the limit n / seconds."""
    left = messages
    if kind == "async":

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await asyncio.sleep(seconds)

        async def all_of_them() -> None:
            await asyncio.gather(*(one() for _ in range(n)))

        started = time.perf_counter()
        asyncio.run(all_of_them())
    else:
        lock = threading.Lock()

        def loop() -> None:
            nonlocal left
            while True:
                with lock:
                    if left <= 0:
                        return
                    left -= 1
                time.sleep(seconds)

        started = time.perf_counter()
        threads = [threading.Thread(target=loop) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    rate = messages / (time.perf_counter() - started)
    return {"system": "no queue", "kind": kind, "concurrency": n, "handler_seconds": seconds, "messages": messages, "done": messages,
            "rate": rate, "limit": n / seconds, "efficiency": rate * seconds / n, "rss_mib": 0.0, "version": ""}


def crash(name: str, kind: str, n: int, seconds: float, messages: int, window: float) -> dict:
    """A SIGKILL of the whole worker (its process group) once 40% of `messages` jobs have run
    (or 10 s after the first did), then the same worker command again; `window` seconds after
    the restart (or as soon as every job has run and workqueue holds nothing more) count the
    jobs that never ran (lost) and the runs beyond one per job (duplicated)."""
    stamps.flushdb()
    target = SYSTEMS[name]()
    target.enqueue(kind, seconds, range(messages), crash=True)
    env = workqueue_env(QUEUE) if name == "workqueue" else None
    with Running(target.argv(kind, n, seconds), env) as first:
        wait_until(lambda: stamps.llen("bench:ran") > 0, 60, f"{name}: the first job", first)
        began = time.monotonic()
        wait_until(lambda: stamps.llen("bench:ran") >= 0.4 * messages or time.monotonic() > began + 10, 60, "40% run", first)
        first.kill()
    ran_before = stamps.llen("bench:ran")
    with Running(target.argv(kind, n, seconds), env) as second:
        restarted, ids = time.monotonic(), []
        while time.monotonic() < restarted + window:
            second.check()
            ids = [int(i) for i in stamps.lrange("bench:ran", 0, -1)]
            if len(set(ids)) == messages and target.settled():
                break
            time.sleep(0.2)
        waited = time.monotonic() - restarted
        ids = [int(i) for i in stamps.lrange("bench:ran", 0, -1)]
    extra = {}
    if name == "workqueue":
        extra = {key: target.queue.stats()[key] for key in ("pending", "in_flight", "delayed", "dead", "recovered", "unaccounted")}
    return {"system": name, "kind": kind, "concurrency": n, "handler_seconds": seconds, "messages": messages,
            "ran_before_kill": ran_before, "lost": messages - len(set(ids)), "duplicated": len(ids) - len(set(ids)),
            "waited": waited, "window": window, "worker_timeout": WORKER_TIMEOUT, "version": version(target.package)} | extra


def cpu(processes: int, messages: int) -> dict:
    """`--processes P` (concurrency 1) on jobs busy-waiting 1 ms: jobs / (last end − first start)."""
    stamps.flushdb()
    from workqueue import Queue

    Queue.connect(URL, QUEUE).push_many({} for _ in range(messages))
    with Running(workqueue_argv("busy_1ms", "--processes", str(processes)), workqueue_env(QUEUE)) as worker:
        wait_until(lambda: stamps.llen("bench:timings") >= messages, 60 + messages * 0.002, f"{messages} busy jobs", worker)
        rss = worker.rss_kib()
    count, start, end = spans()
    return {"processes": processes, "messages": count, "rate": count / (end - start), "rss_mib": rss / 1024}


def drain(mode: str, n: int) -> dict:
    """No-op drain of `workqueue worker handlers:noop --burst`, supervised (default processes and
    concurrency) or --in-process: (n − 1) / (last job's time − first job's)."""
    stamps.flushdb()
    from workqueue import Queue

    queue = Queue.connect(URL, QUEUE)
    for start in range(0, n, 100_000):
        queue.push_many({"i": i, "n": n} for i in range(start, min(n, start + 100_000)))
    flags = ["--burst"] + (["--in-process"] if mode == "in-process" else [])
    with Running(workqueue_argv("noop", *flags), workqueue_env(QUEUE)) as worker:
        wait_until(lambda: stamps.llen("bench:done") > 0, 120 + n * 0.0002, f"{mode} drain of {n}", worker)
        code = worker.wait(30)  # --burst: it exits by itself once nothing is left
    seconds = float(stamps.get("bench:last")) - float(stamps.get("bench:first"))
    return {"mode": mode, "messages": n, "drain": (n - 1) / seconds, "exit": code}


def pickup(samples: int) -> dict:
    """Idle pickup of the worker command, --in-process beside supervised (default processes),
    each on its own queue; their samples alternate (20 ms apart), as systems.paired_pickup's."""
    stamps.flushdb()
    from workqueue import Queue

    names = ["in-process", "supervised"]
    queues = {name: Queue.connect(URL, f"pickup-{name}") for name in names}
    workers = [Running(workqueue_argv("pickup", *(["--in-process"] if name == "in-process" else []), queue=queues[name].name),
                       workqueue_env(queues[name].name)) for name in names]
    latencies: dict[str, list[float]] = {name: [] for name in names}
    try:
        for name in names:  # each is up once it has run one
            queues[name].push({"sent": time.time()})
            wait_until(lambda: stamps.llen("bench:latency") > 0, 60, f"{name} worker starting", workers[names.index(name)])
            stamps.delete("bench:latency")
        for i in range(samples):
            for name in names if i % 2 == 0 else names[::-1]:
                time.sleep(0.02)  # let the workers go idle
                queues[name].push({"sent": time.time()})
                reply = stamps.blpop(["bench:latency"], timeout=30)
                if not reply:
                    raise SystemExit(f"{name}: a pickup took over 30 s")
                latencies[name].append(float(reply[1]) * 1000)
    finally:
        for worker in workers:
            worker.kill()
    result = {name: percentiles(values) | {"samples": samples} for name, values in latencies.items()}
    differences = sorted(b - a for a, b in zip(latencies["in-process"], latencies["supervised"], strict=True))
    result["supervised"]["median_overhead_ms"] = differences[len(differences) // 2]
    return result


def redis_cpu() -> float:
    """CPU seconds the Redis server has used (user + system, all its threads)."""
    info = stamps.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def await_report(key: str, seconds: float, what: str, worker: Running, watched: list) -> None:
    """BLPOP `key` (a job's report) in 1 s slices (the socket's timeout is 10 s), for `seconds`
    at most; fails with the queues' counts and the worker's last words."""
    deadline = time.monotonic() + seconds
    while not stamps.blpop([key], timeout=1):
        worker.check()
        if time.monotonic() > deadline:
            counts = {q.name: {field: q.stats()[field] for field in ("pending", "in_flight", "delayed", "completed", "workers")}
                      for q in watched}
            raise SystemExit(f"{what}: no {key} within {seconds:.0f} s ({counts}); worker said: {worker.tail()}")


def timed_run(argv: list[str], queues: list[str], n: int, what: str, burst: bool, staged: bool = False) -> dict:
    """One worker command draining n no-op messages pushed to the first of `queues` (and what
    they lead to in the others). The queues are paused while the command starts, and resumed
    only once each has its worker and the command's processes have gone idle: start-up is
    neither timed nor counted in CPU time. `staged` (a pipeline): stage two is resumed only
    once stage one has completed, so each stage runs alone. Returns the wall time from the first
    job's start to the last's (bench:first, bench:last) and, for a pipeline, each stage's (its
    job 0 to its job n − 1); the CPU time the command's processes and Redis used from the
    resume to the last job's report (staged: also stage one's share, to its last job's report).
    A --burst command (`burst`) then exits by itself; any other is stopped with a SIGTERM once
    every queue has completed n."""
    from workqueue import Queue

    stamps.flushdb()  # the benchmark's own throwaway server, never a shared one
    watched = [Queue.connect(URL, name) for name in queues]
    entry = watched[0]
    for queue in watched[:2 if staged else 1]:
        queue.pause()
    for start in range(0, n, 100_000):
        entry.push_many({"i": i, "n": n} for i in range(start, min(n, start + 100_000)))
    env = workqueue_env(entry.name)
    env.pop("QUEUE_NAME")  # the command line names the queue(s)
    through = THROUGH_SECONDS + n * 0.001
    result: dict = {}
    with Running(argv, env) as worker:
        wait_until(lambda: all(q.stats()["workers"] for q in watched), 60, f"{what}: the workers registering", worker, poll=0.1)
        deadline, before = time.monotonic() + 60, worker.cpu_seconds()
        while time.monotonic() < deadline:  # idle: at most a tick of CPU in IDLE_TICK (a paused worker asks every 0.5 s)
            time.sleep(IDLE_TICK)
            now = worker.cpu_seconds()
            if now - before <= 1 / CLOCK_TICKS:
                break
            before = now
        else:
            raise SystemExit(f"{what}: the worker's processes did not go idle within 60 s")
        cpu, server = worker.cpu_seconds(), redis_cpu()
        entry.resume()
        if staged:
            await_report("bench:one-done", through, what, worker, watched)
            # Its last job has reported; its settle (with the last emits) follows within a batch.
            wait_until(lambda: entry.stats()["completed"] == n, 60, f"{what}: stage one completing", worker, poll=0.005)
            result["stage_one_cpu"] = worker.cpu_seconds() - cpu + redis_cpu() - server
            watched[1].resume()
        await_report("bench:done", through, what, worker, watched)
        cpu, server = worker.cpu_seconds() - cpu, redis_cpu() - server
        if not burst:
            wait_until(lambda: [int(q.stats()["completed"]) for q in watched] == [n] * len(queues), 60,
                       f"{what}: every queue completing {n}", worker, poll=0.1)
            os.kill(worker.process.pid, signal.SIGTERM)  # the command passes it on: each worker stops as it should
        code = worker.wait(60)
    completed = [int(q.stats()["completed"]) for q in watched]
    if code != 0 or completed != [n] * len(queues):
        raise SystemExit(f"{what}: exit {code}, completed {completed} of {n} in each of {queues}")
    times = {key: float(stamps.get(f"bench:{key}") or "nan") for key in ("first", "last", "one-last", "two-first")}
    result |= {"wall": times["last"] - times["first"], "cpu": cpu + server, "redis_cpu": server}
    if len(queues) > 1:
        result |= {"stage_one_wall": times["one-last"] - times["first"], "stage_two_wall": times["last"] - times["two-first"]}
    return result


def drain_run(mode: str, n: int) -> dict:
    """(a) The one-stage no-op drain: `workqueue worker handlers:noop --burst`, as drain()."""
    flags = ["--burst"] + (["--in-process"] if mode == "in-process" else [])
    return timed_run(workqueue_argv("noop", *flags), [QUEUE], n, f"{mode} drain of {n}", burst=True)


def pipeline_run(mode: str, n: int, staged: bool = False) -> dict:
    """(b) The two-stage pipeline: one `workqueue worker handlers:STAGES` serving both queues,
    each with a worker process of its own (--in-process: two in-process workers); `staged`:
    stage two waits (paused) until stage one is done. Not --burst: a burst worker reads its
    queues' counts one queue after the other, so stage two's worker can read its own queue
    empty, then stage one's empty once stage one's last settle has pushed its emits to stage
    two, and exit with them unrun (stage one's worker then waits for them for ever); and a
    burst stage two, often empty while it keeps up, would read both queues' stats at each such
    moment, which a served pipeline does not."""
    argv = [sys.executable, "-m", "workqueue", "worker", "handlers:STAGES"]
    argv += ["--in-process"] if mode == "in-process" else []
    return timed_run(argv, [STAGE_ONE, STAGE_TWO], n, f"{mode} {'staged ' if staged else ''}pipeline of {n}", burst=False,
                     staged=staged)


def push_run(n: int) -> dict:
    """(c) A batched push of n bodies like the pipeline's (Queue.push_many) from this process:
    its wall time, and the CPU time of this process and of Redis meanwhile."""
    from workqueue import Queue

    stamps.flushdb()
    queue = Queue.connect(URL, "bench-push")
    queue.push_many([{"i": -1, "n": n}])  # the connection and the script are ready before timing
    bodies = [{"i": i, "n": n} for i in range(n)]  # built before timing: an emit gets its body built too
    server, cpu, started = redis_cpu(), time.process_time(), time.perf_counter()
    queue.push_many(bodies)
    wall, cpu, server = time.perf_counter() - started, time.process_time() - cpu, redis_cpu() - server
    return {"wall": wall, "cpu": cpu + server, "redis_cpu": server}


def costs(a: float, b: float, c: float, one: float, two: float, n: int) -> dict:
    """Per-message costs (µs) from seconds: the drain's (a), the pipeline's (b), the push's (c),
    and the staged pipeline's stage one (`one`, n runs with an emit each) and stage two (`two`).
    The brief's comparison: (b) per handler run beside (a) per message, and what an emit adds,
    (b − 2a) / n, beside (c) / n. Staged, the emit's share is read directly: (one − a) / n."""
    extra, alone = (b - 2 * a) / n, (one - a) / n
    return {"drain_us": a / n * 1e6, "pipeline_us": b / (2 * n) * 1e6, "pipeline_over_drain": b / (2 * a),
            "emit_extra_us": extra * 1e6, "push_us": c / n * 1e6, "emit_over_push": extra / (c / n),
            "staged_us": (one + two) / (2 * n) * 1e6, "staged_over_drain": (one + two) / (2 * a),
            "stage_one_us": one / n * 1e6, "stage_two_us": two / n * 1e6,
            "staged_emit_us": alone * 1e6, "staged_emit_over_push": alone / (c / n)}


def pipeline(modes: str, n: int) -> dict:
    """The two-stage no-op pipeline (n messages to stage one, n emits to stage two: 2n handler
    runs), served with both stages at once and staged (stage two only after stage one), beside
    the one-stage no-op drain of n and a batched push of n: PIPELINE_ROUNDS rounds, each
    measuring them one after the other (ABAB: the machine's drift falls on all alike), for each
    mode (in-process, supervised, or both). Per-message costs from the medians of wall time and
    of CPU time (the command's processes and Redis: run at once, the stages share the cores, so
    wall time is not the sum of their costs), and the same costs computed within each round,
    with their medians (a round's figures saw the same machine)."""
    chosen = ["in-process", "supervised"] if modes == "both" else [modes]
    if any(mode not in ("in-process", "supervised") for mode in chosen):
        raise SystemExit(f"unknown mode {modes}: in-process, supervised or both")
    kinds = ("drain", "pipeline", "staged")
    runs: dict[str, list[dict]] = {"push": []} | {f"{kind} {mode}": [] for mode in chosen for kind in kinds}
    for _ in range(PIPELINE_ROUNDS):
        for mode in chosen:
            runs[f"drain {mode}"].append(drain_run(mode, n))
            runs[f"pipeline {mode}"].append(pipeline_run(mode, n))
            runs[f"staged {mode}"].append(pipeline_run(mode, n, staged=True))
        runs["push"].append(push_run(n))
    result: dict = {"messages": n, "rounds": PIPELINE_ROUNDS, "cores": os.cpu_count(),
                    "push": {key + "_s": [r[key] for r in runs["push"]] for key in ("wall", "cpu", "redis_cpu")}}
    for mode in chosen:
        drains, pipelines, staged = (runs[f"{kind} {mode}"] for kind in kinds)
        figures: dict = {kind: {key: [r[key] for r in runs[f"{kind} {mode}"]] for key in runs[f"{kind} {mode}"][0]} for kind in kinds}
        rounds: dict[str, list[tuple[float, ...]]] = {
            "wall": [(a["wall"], b["wall"], c["wall"], s["stage_one_wall"], s["stage_two_wall"])
                     for a, b, c, s in zip(drains, pipelines, runs["push"], staged, strict=True)],
            "cpu": [(a["cpu"], b["cpu"], c["cpu"], s["stage_one_cpu"], s["cpu"] - s["stage_one_cpu"])
                    for a, b, c, s in zip(drains, pipelines, runs["push"], staged, strict=True)]}
        for measure, seconds in rounds.items():
            figures[f"{measure}_from_medians"] = costs(*(median(column) for column in zip(*seconds, strict=True)), n)
            each = [costs(*row, n) for row in seconds]
            figures[f"{measure}_round_medians"] = {key: median(r[key] for r in each) for key in each[0]}
        result[mode] = figures
    return result


def work(name: str, kind: str, n: int) -> None:
    """A peer's worker in this process; it ends itself after WORKER_SECONDS at most."""
    watchdog = threading.Timer(WORKER_SECONDS, os._exit, [3])
    watchdog.daemon = True
    watchdog.start()
    SYSTEMS[name]().work(kind, n)


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "worker":
        work(args[0], args[1], int(args[2]))
        return
    if command == "io":
        result = io(args[0], args[1], int(args[2]), float(args[3]), int(args[4]), float(args[5]))
    elif command == "bare":
        result = bare(args[0], int(args[1]), float(args[2]), int(args[3]))
    elif command == "crash":
        result = crash(args[0], args[1], int(args[2]), float(args[3]), int(args[4]), float(args[5]))
    elif command == "cpu":
        result = cpu(int(args[0]), int(args[1]))
    elif command == "drain":
        result = drain(args[0], int(args[1]))
    elif command == "pickup":
        result = pickup(int(args[0]))
    elif command == "pipeline":
        result = pipeline(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    # Work through the module under its importable name, so that producers and workers name the
    # jobs alike (command.arq_sleep, not __main__.arq_sleep).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if "BENCH_REDIS_URL" not in os.environ:
        # Run standalone: this script again, against a throwaway server of bench/run's making
        # (handlers.py binds its URL on import, so the server must exist before that import).
        from run import throwaway_redis

        with throwaway_redis() as url:
            sys.exit(subprocess.run([sys.executable, *sys.argv], env=dict(os.environ, BENCH_REDIS_URL=url), timeout=900).returncode)
    import command

    command.main(sys.argv[1:])
