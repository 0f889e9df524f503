"""Worker commands measured as they are run: `python -m workqueue worker MODULE:ATTR`, and the
peers' own workers at the same concurrency; run inside the system's virtualenv, as systems.py.

    python command.py io SYSTEM KIND N SECONDS M CAP    # M jobs sleeping SECONDS, one worker running N at once
    python command.py crash SYSTEM KIND N SECONDS M WINDOW   # the same, SIGKILLed mid-run and restarted
    python command.py cpu PROCESSES M                   # workqueue: M jobs busy-waiting 1 ms, --processes P
    python command.py drain MODE N                      # workqueue: no-op drain, MODE supervised or in-process
    python command.py pickup N                          # workqueue: idle pickup, in-process beside supervised
    python command.py worker SYSTEM KIND N              # (internal) a peer's worker in this process

SYSTEM is workqueue (the worker command, supervised: --processes 1 --concurrency N), arq, saq,
taskiq (async: KIND async, asyncio.sleep) or dramatiq, celery, huey (threads: KIND threads,
time.sleep). Each prints one JSON object. Every worker runs in a process group of its own
(start_new_session), so that it is stopped, children and all, by a SIGKILL of that group (ours:
the group's id is the pid of the process we started); it also dies with this process
(PR_SET_PDEATHSIG). Timing is from the first job's start, never from process start: a supervised
worker's children take a while to start, and so do the peers'.
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
from importlib.metadata import version
from pathlib import Path

from handlers import HANDLERS, URL, async_sleep_job, sleep_job, stamps
from systems import percentiles

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
WORKER_SECONDS = 900  # a peer's worker process ends itself after this long (as systems.py's)
WORKER_TIMEOUT = "10"  # workqueue's WORKER_TIMEOUT (s) here: a SIGKILLed worker's messages come back after it
CHUNK = 100  # the async peers' jobs are enqueued this many at a time (gather), one call a job


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
    package = "workqueue"

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

    def rss_kib(self) -> int:
        """VmRSS summed over every live process of its group: the worker and its children."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[2]) != self.process.pid:
                        continue
                with open(f"/proc/{entry}/status") as status:
                    total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            except (OSError, StopIteration, ValueError, IndexError):
                continue
        return total


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
    elif command == "crash":
        result = crash(args[0], args[1], int(args[2]), float(args[3]), int(args[4]), float(args[5]))
    elif command == "cpu":
        result = cpu(int(args[0]), int(args[1]))
    elif command == "drain":
        result = drain(args[0], int(args[1]))
    elif command == "pickup":
        result = pickup(int(args[0]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    # Work through the module under its importable name, so that producers and workers name the
    # jobs alike (command.arq_sleep, not __main__.arq_sleep).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import command

    command.main(sys.argv[1:])
