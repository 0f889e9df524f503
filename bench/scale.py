"""Measurements with several worker processes, or with the shipped worker script; workqueue's venv.

    python scale.py many WORKERS KIND N        # N jobs (noop or sleep: 1 ms) drained by WORKERS processes
    python scale.py load RATE WORKERS SECONDS ROUNDS  # push-to-start latency at a fixed push rate
    python scale.py script N RUNS              # worker/main.py --burst beside the library's worker

Each prints one JSON object. The Redis is BENCH_REDIS_URL, the benchmark's own server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from systems import URL, percentiles, stamps, start_worker, stop, system

from workqueue import Queue

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.002  # seconds between reads of a progress counter: small beside drains of a second or more


def wait_for(condition, seconds: float, what: str, poll: float = POLL, workers: Sequence[subprocess.Popen] = ()) -> None:
    """Poll `condition` every `poll` seconds; give up after `seconds`, or at once when one of
    `workers` has exited (they run until killed, so it failed)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {seconds:.0f} s")
        if any(worker.poll() is not None for worker in workers):
            raise SystemExit(f"{what}: a worker exited with {[w.returncode for w in workers if w.returncode is not None][0]}")
        time.sleep(poll)


def completed(queue: Queue) -> int:
    """workqueue's own count of processed messages (its stats hash), read in one HGET."""
    return int(stamps.hget(queue.keys.stats, "completed") or 0)


def redis_cpu() -> float:
    """CPU seconds the redis-server has used so far (system + user, its main thread and others)."""
    cpu = stamps.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


# -- many workers on one Redis -----------------------------------------------------------------


def many_workers(workers: int, kind: str, n: int) -> dict:
    """Aggregate drain rate of `workers` workqueue processes on one queue, and Redis's CPU.

    The workers start first and wait idle; the n messages, pushed (push_many) under another
    queue's name meanwhile, then appear at once by a RENAME, which wakes the blocked workers as a
    push would. Without that, the first worker up would drain part of the queue while the last
    is still importing, and the rate would not be that of `workers` workers."""
    stamps.flushdb()
    queue, staging = Queue.connect(URL, "many"), Queue.connect(URL, "many-staging")
    processes = [start_worker("workqueue", queue.name) for _ in range(workers)]
    try:
        wait_for(lambda: queue.stats()["workers"] == workers, 60, f"{workers} workers registering", poll=0.05, workers=processes)
        time.sleep(0.2)  # from registering into their blocking wait
        args = [0.001] if kind == "sleep" else []
        staging.push_many({"kind": kind, "args": args} for _ in range(n))
        cpu, started = redis_cpu(), time.perf_counter()
        stamps.rename(staging.keys.pending, queue.keys.pending)
        # Every 10 ms, not every 2: these reads are Redis CPU too, and that is measured here.
        wait_for(lambda: completed(queue) >= n, 120 + n * 0.002, f"{workers} workers draining {n}", poll=0.01, workers=processes)
        seconds, cpu = time.perf_counter() - started, redis_cpu() - cpu
    finally:
        stop(processes)
    return {"workers": workers, "kind": kind, "messages": n, "drain": n / seconds,
            "redis_cpu_ms_per_1k": cpu / n * 1000 * 1000, "redis_busy": cpu / seconds}


# -- latency under a fixed load ----------------------------------------------------------------


def produce(target, rate: float, n: int, key: str) -> float:
    """Push n `loaded` jobs (1 ms sleep) at `rate` a second, each due at start + i / rate (one
    that falls behind goes at once, without a burst to catch up); returns the achieved rate."""
    started = time.perf_counter()
    for i in range(n):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        target.enqueue("loaded", time.time(), 0.001, key)
    return n / (time.perf_counter() - started)


def collect(key: str, n: int, workers: Sequence[subprocess.Popen]) -> list[float]:
    """Wait for the n samples the workers send under `key` (latencies in ms) and take them."""
    wait_for(lambda: stamps.llen(key) >= n, 60, f"{n} samples under {key}", workers=workers)
    values = [float(v) for v in stamps.lrange(key, 0, -1)]
    stamps.delete(key)
    return values


def load_latency(rate: float, workers: int, seconds: float, rounds: int) -> dict:
    """Push-to-start latency of workqueue and of the raw BLMOVE loop, `workers` processes each,
    all idling side by side, under a producer at a fixed rate. The systems take turns of
    `seconds` (ABBA order over `rounds`), each turn after a warm-up of 0.3 s whose samples are
    dropped, so the machine's noisy moments fall on both alike."""
    stamps.flushdb()
    names = ["workqueue", "raw"]
    targets = {name: system(name, f"load-{name}") for name in names}
    processes = [start_worker(name, f"load-{name}") for name in names for _ in range(workers)]
    latencies: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    try:
        wait_for(lambda: stamps.llen("bench:ready") == len(processes), 60, "workers starting", poll=0.05, workers=processes)
        for turn in range(rounds):
            for name in names if turn % 2 == 0 else names[::-1]:
                produce(targets[name], rate, int(rate * 0.3), "bench:warm")
                collect("bench:warm", int(rate * 0.3), processes)
                rates[name].append(produce(targets[name], rate, int(rate * seconds), "bench:load"))
                latencies[name] += collect("bench:load", int(rate * seconds), processes)
    finally:
        stop(processes)
    return {name: percentiles(values) | {"samples": len(values), "rate": min(rates[name])} for name, values in latencies.items()}


# -- the shipped worker script -----------------------------------------------------------------


def timed_drain(queue: Queue, n: int, process: subprocess.Popen) -> float:
    """Drain rate of one worker process over messages already queued, read from the queue's own
    `completed` counter: from its first value above 0 to n, so start-up is left out."""
    wait_for(lambda: completed(queue) > 0 or process.poll() is not None, 60, "the first settled batch")
    first, started = completed(queue), time.perf_counter()
    wait_for(lambda: completed(queue) >= n or process.poll() is not None, 120 + n * 0.001, f"draining {n}")
    if completed(queue) < n:
        raise SystemExit(f"worker exited with {process.returncode} after {completed(queue)} of {n} messages")
    return (n - first) / (time.perf_counter() - started)


def start_script(queue: str, scratch: str) -> subprocess.Popen:
    """`python worker/main.py --burst` at its defaults (demo handler, --work-seconds 0), set up by
    its environment as a deployment would. It runs in an empty directory, so no `.env` of a
    developer's checkout changes its settings."""
    env = dict(os.environ, REDIS_URL=URL, QUEUE_NAME=queue, LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, str(ROOT / "worker" / "main.py"), "--burst"], cwd=scratch, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def script_drain(n: int, runs: int) -> dict:
    """worker/main.py --burst beside the library's no-op worker (bench/systems.py), timed alike
    from the same counter; they alternate, `runs` each, and the median of each is kept."""
    rates: dict[str, list[float]] = {"script": [], "library": []}
    with tempfile.TemporaryDirectory(prefix="workqueue-bench-") as scratch:
        for run in range(runs):
            for who in ("script", "library") if run % 2 == 0 else ("library", "script"):
                stamps.flushdb()
                queue = Queue.connect(URL, "script")
                queue.push_many({"kind": "noop", "args": []} for _ in range(n))
                process = start_script(queue.name, scratch) if who == "script" else start_worker("workqueue", queue.name)
                try:
                    rates[who].append(timed_drain(queue, n, process))
                    if who == "script" and process.wait(timeout=60) != 0:
                        raise SystemExit(f"worker/main.py --burst exited with {process.returncode}")
                finally:
                    stop([process])
    return {who: sorted(values)[len(values) // 2] for who, values in rates.items()} | {"runs": rates, "messages": n}


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "many":
        print(json.dumps(many_workers(int(args[0]), args[1], int(args[2]))))
    elif command == "load":
        print(json.dumps(load_latency(float(args[0]), int(args[1]), float(args[2]), int(args[3]))))
    elif command == "script":
        print(json.dumps(script_drain(int(args[0]), int(args[1]))))
