"""The benchmark: workqueue beside raw redis-py and the Python job queues, on one Redis, in one run.

    bench/run [--quick] [--messages N] [--docs DIR]

Starts its own redis-server on a free loopback port (no persistence), measures, and writes
docs/benchmarks.md, docs/benchmarks.json, docs/benchmarks.png (drain rates) and
docs/benchmarks-efficiency.png (handler efficiency). Every figure is taken in this run on this
machine; the targets are ratios between figures of the same run.
--quick skips the peers (RQ, Dramatiq, Celery, huey, arq, saq, taskiq) and uses fewer messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OURS = sys.executable  # the project's .venv
# This checkout's workqueue, whatever the venv's editable install points at (a test that copies
# the checkout may have pointed it at its copy).
OURS_ENV = {"PYTHONPATH": str(ROOT)}
PICKUP_SAMPLES = 1000  # per system: the p99 is then the 10th slowest, not one unlucky sample
WORKER_COUNTS = (1, 2, 4, 8)  # the many-workers drains; the machine's cores are fewer, on purpose
SPINS = (0.0, 0.000_02, 0.000_1, 0.001)  # handler busy-waits (s) of the efficiency runs
LOAD_RATE, LOAD_WORKERS = 2000, 4  # the latency-under-load run: pushes a second, worker processes each
PEERS = {  # peer -> (virtualenv, messages to drain in a full run)
    "huey": ("main", 20_000), "dramatiq": ("main", 20_000), "celery": ("main", 10_000),
    "rq": ("main", 3_000), "arq": ("arq", 3_000),
}


# The worker command (`python -m workqueue worker`, bench/command.py): I/O-bound handlers sleeping
# IO_SLEEPS seconds, run N at once by one worker (async tasks or threads); the peers at the same N.
IO_SLEEPS = (0.01, 0.05)
IO_CONCURRENCY = {"async": (50, 100), "threads": (20, 50)}
IO_TARGETS = {"async": 0.90, "threads": 0.85}  # share of the limit N / handler time
IO_PEERS = {  # peer -> (virtualenv, kind of handler it runs)
    "arq": ("arq", "async"), "saq": ("async", "async"), "taskiq": ("async", "async"),
    "dramatiq": ("main", "threads"), "celery": ("main", "threads"), "huey": ("main", "threads"),
}
IO_PEER_MESSAGES, IO_PEER_CAP = 3_000, 6.0  # a peer's jobs per run at most, and its seconds after its first job
PIPELINE_MESSAGES = 20_000  # the two-stage pipeline's messages (bench/command.py pipeline: about 2 minutes)
CRASH = (50, 0.05, 2_000, 30.0)  # concurrency, handler sleep (s), jobs, seconds waited after the restart


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, without persistence, for the length of
    the block; yields its URL. Never a shared server: every scenario flushes its database."""
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="workqueue-bench-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", scratch], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):  # up to 5 s for the server to answer
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def bench_script(python: str, script: str, *args: str, url: str) -> dict:
    """Run bench/`script` in the given interpreter against `url`; it prints one JSON object last."""
    env = dict(os.environ, BENCH_REDIS_URL=url, **(OURS_ENV if python == OURS else {}))
    done = subprocess.run([python, str(BENCH / script), *args], cwd=BENCH, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{done.stdout[-1000:]}{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def systems(python: str, *args: str, url: str) -> dict:
    """bench/systems.py: one system measured, in that system's interpreter."""
    return bench_script(python, "systems.py", *args, url=url)


def scale(*args: str, url: str) -> dict:
    """bench/scale.py: several workers (the worker script), in workqueue's interpreter."""
    return bench_script(OURS, "scale.py", *args, url=url)


def command(python: str, *args: str, url: str) -> dict:
    """bench/command.py: worker commands, ours and the peers', in the given interpreter."""
    return bench_script(python, "command.py", *args, url=url)


def peer_python(venv: str) -> str:
    return str(BENCH / ".peers" / venv / "bin" / "python")


def median_run(results: list[dict]) -> dict:
    """The run with the median drain rate, with every run's rate (in the order they ran)."""
    ordered = sorted(results, key=lambda r: r["drain"])
    return ordered[len(ordered) // 2] | {"runs": [round(r["drain"]) for r in results]}


def median_drain(python: str, system: str, n: int, url: str, runs: int = 3) -> dict:
    """The median of `runs` drains: one noisy run must not decide a ratio."""
    return median_run([systems(python, "drain", system, str(n), url=url) for _ in range(runs)])


def paired_drains(python: str, systems_: tuple[str, str], n: int, url: str, pairs: int = 5) -> dict:
    """Drains of two systems in pairs, run back to back in ABBA order: this machine's speed drifts
    by a third within minutes, so a ratio is taken within each pair, where both saw the same
    machine (`ratios`, sorted: the target takes the middle one). Each system's figure is its median run."""
    first, second = systems_
    runs: dict[str, list[dict]] = {first: [], second: []}
    for i in range(pairs):
        for name in systems_ if i % 2 == 0 else systems_[::-1]:
            runs[name].append(systems(python, "drain", name, str(n), url=url))
    ratios = sorted(b["drain"] / a["drain"] for a, b in zip(runs[first], runs[second], strict=True))
    return {name: median_run(results) for name, results in runs.items()} | {"ratios": [round(ratio, 3) for ratio in ratios]}


def middle(values: list[float]) -> float:
    """The median of sorted `values` (an odd count)."""
    return values[len(values) // 2]


def raw_pipelined_rpush(client: redis.Redis, n: int) -> float:
    client.flushdb()
    payload = b'{"id":"0123456789abcdef0123456789abcdef","attempts":0,"created_at":1764400000.0,"body":{"i":1}}'
    started = time.perf_counter()
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(1000, n - start)):
            pipe.rpush("raw", payload)
        pipe.execute()
    return n / (time.perf_counter() - started)


def raw_lpop_count(client: redis.Redis, n: int) -> float:
    started = time.perf_counter()
    taken = 0
    while taken < n:  # bounded: the list holds n elements from raw_pipelined_rpush
        batch = client.lpop("raw", 100)
        if not batch:
            break
        taken += len(batch)
    return taken / (time.perf_counter() - started)


def ours_push(url: str, n: int, batched: bool) -> float:
    sys.path.insert(0, str(ROOT))
    from workqueue import Queue

    queue = Queue.connect(url, "push-bench")
    queue.client.flushdb()
    started = time.perf_counter()
    if batched:
        queue.push_many({"i": i} for i in range(n))
    else:
        for i in range(n):
            queue.push({"i": i})
    return n / (time.perf_counter() - started)


def machine() -> dict:
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
        "python": platform.python_version(), "redis_server": next((w[2:] for w in server if w.startswith("v=")), "?"),
        "redis_py": redis.__version__, "kernel": platform.release(),
    }


def many_workers(url: str, quick: bool) -> list[dict]:
    """workqueue with 1..8 worker processes: sleeping (1 ms, I/O-like) and no-op handlers."""
    per_sleeper, noops = (500, 20_000) if quick else (3_000, 100_000)
    runs = []
    for kind in ("sleep", "noop"):
        for workers in WORKER_COUNTS:
            n = per_sleeper * workers if kind == "sleep" else noops  # sleeping drains of about 3 s each
            runs.append(scale("many", str(workers), kind, str(n), url=url))
    return runs


def efficiency(python: str, system: str, drain: float, seconds_each: float, url: str) -> list[dict]:
    """The system's handler efficiency at each busy-wait of SPINS, one worker; each run sized
    from its no-op drain rate to last about `seconds_each` (from 200 to 100 000 messages)."""
    runs = []
    for spin in SPINS:
        n = int(min(100_000, max(200, seconds_each / (spin + 1 / drain))))
        runs.append(systems(python, "efficiency", system, repr(spin), str(n), url=url))
    return runs


def paired_commands(args: dict[str, tuple[str, ...]], url: str, pairs: int, key: str) -> dict:
    """Two workqueue worker-command runs in back-to-back pairs, ABBA order, as paired_drains:
    each one's median run (by `key`) with every run's figure, and the ratios second / first
    taken within each pair (sorted)."""
    first, second = args
    runs: dict[str, list[dict]] = {first: [], second: []}
    for i in range(pairs):
        for name in (first, second) if i % 2 == 0 else (second, first):
            runs[name].append(command(OURS, *args[name], url=url))
    ratios = sorted(b[key] / a[key] for a, b in zip(runs[first], runs[second], strict=True))
    medians = {name: sorted(results, key=lambda r: r[key])[len(results) // 2] | {"runs": [round(r[key]) for r in results]}
               for name, results in runs.items()}
    return medians | {"ratios": [round(ratio, 3) for ratio in ratios]}


def worker_command(url: str, quick: bool) -> dict:
    """The worker command: I/O-bound throughput (ours: the median of three runs; quick: one),
    the peers at the same concurrency, a SIGKILL mid-run, CPU-bound scaling with processes, and
    the supervised path beside --in-process (no-op drain, idle pickup). Each part's wall time too."""
    r: dict = {"seconds": {}, "io": [], "bare_io": [], "peers_io": [], "crash": []}
    clock = time.monotonic()

    def lap(part: str) -> None:
        nonlocal clock
        r["seconds"][part] = round(time.monotonic() - clock, 1)
        print(f"  {part}: {r['seconds'][part]:.0f} s", file=sys.stderr)
        clock = time.monotonic()

    span, runs = (1.0, 1) if quick else (2.0, 3)  # seconds of work at the limit per run; runs of ours
    print("worker command: I/O-bound ...", file=sys.stderr)
    for kind, counts in IO_CONCURRENCY.items():
        for n in counts:
            for seconds in IO_SLEEPS:
                args = ("io", "workqueue", kind, str(n), repr(seconds), str(round(n / seconds * span)), "30")
                results = [command(OURS, *args, url=url) for _ in range(runs)]
                ordered = sorted(results, key=lambda run: run["rate"])
                r["io"].append(ordered[len(ordered) // 2] | {"runs": [round(run["rate"]) for run in results]})
                # The same sleeps with no queue: what this machine's event loop or threads allow.
                bare = sorted((command(OURS, "bare", *args[2:6], url=url) for _ in range(runs)), key=lambda run: run["rate"])
                r["bare_io"].append(bare[len(bare) // 2] | {"runs": [round(run["rate"]) for run in bare]})
    lap("io")
    if not quick:
        for peer, (venv, kind) in IO_PEERS.items():
            print(f"worker command: {peer} ...", file=sys.stderr)
            for n in IO_CONCURRENCY[kind]:
                for seconds in IO_SLEEPS:
                    messages = min(IO_PEER_MESSAGES, round(n / seconds * span))
                    r["peers_io"].append(command(peer_python(venv), "io", peer, kind, str(n), repr(seconds), str(messages),
                                                 repr(IO_PEER_CAP), url=url))
        lap("peers_io")
    print("worker command: SIGKILL mid-run ...", file=sys.stderr)
    n, seconds, jobs, window = CRASH
    crashes = [("workqueue", OURS, "async"), ("workqueue", OURS, "threads")]
    if not quick:
        crashes += [(peer, peer_python(venv), kind) for peer, (venv, kind) in IO_PEERS.items()]
    for name, python, kind in crashes:
        r["crash"].append(command(python, "crash", name, kind, str(n), repr(seconds), str(jobs), repr(window), url=url))
    lap("crash")
    print("worker command: CPU-bound, no-op drain, pickup ...", file=sys.stderr)
    busy = str(1_500 if quick else 3_000)
    r["cpu"] = paired_commands({"1": ("cpu", "1", busy), "2": ("cpu", "2", busy)}, url, 3 if quick else 5, "rate")
    lap("cpu")
    noops = str(50_000 if quick else 100_000)
    r["drain"] = paired_commands({"in-process": ("drain", "in-process", noops), "supervised": ("drain", "supervised", noops)},
                                 url, 3 if quick else 5, "drain")
    lap("drain")
    r["pickup"] = command(OURS, "pickup", str(300 if quick else PICKUP_SAMPLES), url=url)
    lap("pickup")
    print("worker command: two-stage pipeline ...", file=sys.stderr)
    r["pipeline"] = command(OURS, "pipeline", "both", str(PIPELINE_MESSAGES), url=url)
    lap("pipeline")
    r["seconds"]["total"] = round(sum(r["seconds"].values()), 1)
    return r


def measure(url: str, quick: bool, messages: int) -> dict:
    """Every figure of the page, in one run against one Redis."""
    client = redis.Redis.from_url(url)
    r: dict = {"machine": machine(), "quick": quick}
    print("raw redis-py ...", file=sys.stderr)
    r["raw_loop"] = median_drain(OURS, "raw", 5_000 if quick else 20_000, url)["drain"]
    r["raw_rpush_pipelined"] = raw_pipelined_rpush(client, 200_000)
    r["raw_lpop_100"] = raw_lpop_count(client, 200_000)
    print("workqueue ...", file=sys.stderr)
    paired = paired_drains(OURS, ("raw-batched", "workqueue"), messages, url)
    r["raw_batched"], r["reliable"], r["versus_batched"] = paired["raw-batched"], paired["workqueue"], paired["ratios"]
    r["simple"] = median_drain(OURS, "workqueue-simple", messages, url)
    info = paired_drains(OURS, ("workqueue", "workqueue-info"), messages // 2, url)
    r["reliable_info_logs"], r["info_ratios"] = info["workqueue-info"], info["ratios"]
    r["push_single"] = ours_push(url, 20_000, batched=False)
    r["push_batched"] = ours_push(url, 200_000, batched=True)
    r["script"] = scale("script", str(messages), "3", url=url)
    # Raw and workqueue workers idle side by side and their samples alternate, so the machine's
    # noisy moments (which decide a p99) hit both alike.
    samples = 300 if quick else PICKUP_SAMPLES
    pickups = systems(OURS, "paired-pickup", str(samples), "raw", "workqueue", url=url)
    r["raw_pickup"], r["pickup"] = pickups["raw"], pickups["workqueue"]
    print("many workers, latency under load ...", file=sys.stderr)
    r["many"] = many_workers(url, quick)
    r["load"] = scale("load", str(LOAD_RATE), str(LOAD_WORKERS), "1" if quick else "2", "2" if quick else "4", url=url)
    print("handler efficiency ...", file=sys.stderr)
    seconds_each = 0.5 if quick else 1.5
    r["efficiency"] = {
        "workqueue": efficiency(OURS, "workqueue", r["reliable"]["drain"], seconds_each, url),
        "raw": efficiency(OURS, "raw", r["raw_loop"], seconds_each, url),
        "raw-batched": efficiency(OURS, "raw-batched", r["raw_batched"]["drain"], seconds_each, url),
    }
    r["rss"] = systems(OURS, "rss", str(200_000 if quick else 1_000_000), url=url)
    r["peers"] = {}
    if not quick:
        for peer, (venv, n) in PEERS.items():
            print(f"{peer} ...", file=sys.stderr)
            python = str(BENCH / ".peers" / venv / "bin" / "python")
            r["peers"][peer] = systems(python, "drain", peer, str(n), url=url)
            r["peers"][peer].update(systems(python, "pickup", peer, "50", url=url))
            r["efficiency"][peer] = efficiency(python, peer, r["peers"][peer]["drain"], seconds_each, url)
    r["command"] = worker_command(url, quick)
    return r


def spin_label(seconds: float) -> str:
    """0, 20 µs, 100 µs, 1 ms."""
    if seconds == 0:
        return "0"
    return f"{seconds * 1000:g} ms" if seconds >= 0.001 else f"{seconds * 1e6:g} µs"


def at_spin(runs: list[dict], seconds: float) -> dict:
    """The efficiency run of the given busy-wait."""
    return next(run for run in runs if run["handler_seconds"] == seconds)


def many_at(r: dict, kind: str, workers: int) -> dict:
    """The many-workers run of this handler kind and worker count."""
    return next(run for run in r["many"] if run["kind"] == kind and run["workers"] == workers)


def intro(r: dict) -> list[str]:
    m = r["machine"]
    return [
        "# Benchmarks", "",
        "Written by `bench/run` (`bench/run --quick` skips the peers and uses fewer messages). One redis-server on",
        "loopback without persistence, everything measured in one run; unless a section says otherwise, one worker process",
        "and no-op jobs. Drain rate = (N−1) / (time of the last job − time of the first), so start-up is excluded;",
        "the raw loop's and workqueue's drains are the median of three runs, the bare batched consumer's and workqueue's",
        "reliable drain the medians of five runs in back-to-back pairs, their ratio the median of the pairs' ratios",
        "(all in docs/benchmarks.json).",
        "Pickup = from just before the push to the start of the job, with the worker idle (20 ms between samples);",
        f"the raw loop's and workqueue's workers idle side by side and their {r['pickup']['samples']:,} samples each alternate,",
        "so the machine's noisy moments, which decide a p99, hit both alike.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; Python {m['python']}, redis-server {m['redis_server']},",
        f"redis-py {m['redis_py']}; {m['date']}.{' Quick run: peers skipped.' if r['quick'] else ''}", "",
    ]


def figures(r: dict) -> list[str]:
    """The single-worker table."""
    rss, script = r["rss"], r["script"]
    rows = [
        ("raw redis-py: BLMOVE + LREM per message (drain)", r["raw_loop"], "msg/s"),
        ("raw redis-py: bare batched consumer, 200 a script call (drain)", r["raw_batched"]["drain"], "msg/s"),
        ("raw redis-py: pipelined RPUSH", r["raw_rpush_pipelined"], "msg/s"),
        ("raw redis-py: LPOP count 100", r["raw_lpop_100"], "msg/s"),
        ("workqueue reliable drain (1 worker)", r["reliable"]["drain"], "msg/s"),
        ("workqueue simple drain (1 worker)", r["simple"]["drain"], "msg/s"),
        ("workqueue reliable drain, INFO log per message (JSON; median of five, each paired with a warning-level one)",
         r["reliable_info_logs"]["drain"], "msg/s"),
        ("`python worker/main.py --burst` (demo handler, LOG_LEVEL=warning), timed from `completed`", script["script"], "msg/s"),
        ("the library's no-op worker, timed the same way, runs alternating with the script's", script["library"], "msg/s"),
        ("workqueue push, one at a time", r["push_single"], "msg/s"),
        ("workqueue push_many (batched)", r["push_batched"], "msg/s"),
    ]
    lines = ["| Measure | Figure |", "| --- | ---: |"]
    lines += [f"| {name} | {value:,.0f} {unit} |" for name, value, unit in rows]
    lines += [
        f"| idle pickup p50 / p99, raw BLMOVE loop | {r['raw_pickup']['p50_ms']:.2f} / {r['raw_pickup']['p99_ms']:.2f} ms |",
        f"| idle pickup p50 / p99, workqueue | {r['pickup']['p50_ms']:.2f} / {r['pickup']['p99_ms']:.2f} ms |",
        f"| idle pickup, workqueue's median overhead over the raw loop (same rounds) | {r['pickup']['median_overhead_ms']:.3f} ms |",
        f"| worker RSS after 10 000 / after {rss['messages']:,} messages | {rss['rss_10k_mib']:.1f} / {rss['rss_end_mib']:.1f} MiB |",
        "",
        "The bare batched consumer is the least a batched reliable consumer does: one script call moves up to 200",
        "messages into its processing list, each is decoded (JSON, workqueue's message format) and run, and one script",
        "call acknowledges the batch (LREM from the processing list, ZADD of the ids as done markers, a counter).",
        "It has no retries, recovery, heartbeat or duplicate check, and does not overlap Redis's work with the jobs'.",
        f"The worker script and the library's worker each drain {script['messages']:,} messages pushed before they start;",
        "both are timed by polling the queue's `completed` counter every 2 ms, from its first value above 0 to N.",
        "",
    ]
    return lines


def many_section(r: dict) -> list[str]:
    lines = [
        "## Many workers, one Redis", "",
        "workqueue worker processes on one queue. The messages appear at once (pushed under another name, then a",
        "RENAME) when all workers are idle and registered; the drain is timed from then until the queue's `completed`",
        "counter reaches N. Redis CPU = `used_cpu_sys + used_cpu_user` from `INFO cpu`, its change over the drain.",
        f"The machine has {r['machine']['cores']} cores, shared by Redis, the workers and the timing loop.", "",
        "| Handler | Workers | Messages | Drain msg/s | × 1 worker | Redis CPU ms / 1 000 msgs | Redis CPU busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, label in (("sleep", "sleep 1 ms"), ("noop", "no-op")):
        one = many_at(r, kind, 1)["drain"]
        for workers in WORKER_COUNTS:
            run = many_at(r, kind, workers)
            lines.append(f"| {label} | {workers} | {run['messages']:,} | {run['drain']:,.0f} | {run['drain'] / one:.2f}× "
                         f"| {run['redis_cpu_ms_per_1k']:.1f} | {run['redis_busy'] * 100:.0f}% |")
    return lines + [""]


def load_section(r: dict) -> list[str]:
    load = r["load"]
    lines = [
        f"## Latency under load ({LOAD_RATE:,} msg/s, {LOAD_WORKERS} workers, handler sleeping 1 ms)", "",
        f"One producer pushes at a fixed rate ({LOAD_RATE:,} a second, each push due at its own time); push-to-start latency",
        f"of every job. {LOAD_WORKERS} workqueue workers and {LOAD_WORKERS} raw BLMOVE + LREM workers idle side by side, and the",
        "systems take turns of the same length in ABBA order, each turn after 0.3 s of warm-up whose samples are dropped.", "",
        "| System | p50 ms | p99 ms | Samples | Achieved push rate |", "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("raw", "raw BLMOVE + LREM loop"), ("workqueue", "workqueue reliable")):
        run = load[name]
        lines.append(f"| {label} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['samples']:,} | {run['rate']:,.0f} msg/s |")
    return lines + [""]


EFFICIENCY_NAMES = {"workqueue": "workqueue reliable", "raw": "raw BLMOVE + LREM loop", "raw-batched": "raw bare batched consumer"}


def efficiency_section(r: dict) -> list[str]:
    runs = r["efficiency"]
    header = " | ".join(spin_label(spin) for spin in SPINS)
    lines = [
        "## Handler efficiency", "",
        "One worker drains jobs that busy-wait (a `time.perf_counter` loop) for the given time. Efficiency = the time",
        "spent in the jobs, summed, over the wall time from the first job's start to the last job's end; overhead per",
        "message = wall time / messages − handler time. Each run lasts about as long for every system (its message count",
        "comes from the system's no-op drain rate), the peers in their single-process set-ups below.", "",
        f"| System | {header} |", "| --- |" + " ---: |" * len(SPINS),
    ]
    for name, system_runs in runs.items():
        cells = " | ".join(f"{at_spin(system_runs, spin)['efficiency'] * 100:.1f}%" for spin in SPINS)
        lines.append(f"| {EFFICIENCY_NAMES.get(name, name)} | {cells} |")
    lines += ["", "Overhead per message (µs):", "", f"| System | {header} |", "| --- |" + " ---: |" * len(SPINS)]
    for name, system_runs in runs.items():
        cells = " | ".join(f"{at_spin(system_runs, spin)['overhead_us']:,.1f}" for spin in SPINS)
        lines.append(f"| {EFFICIENCY_NAMES.get(name, name)} | {cells} |")
    return lines + ["", "![handler efficiency](benchmarks-efficiency.png)", ""]


def peers_section(r: dict) -> list[str]:
    if not r["peers"]:
        return []
    lines = ["## Peers (same Redis, same run, documented single-process set-ups)", "",
             "| System | Version | Drain msg/s | Enqueue msg/s (one at a time) | Pickup p50 / p99 ms |",
             "| --- | --- | ---: | ---: | ---: |",
             f"| workqueue reliable | {r['reliable']['version']} | {r['reliable']['drain']:,.0f} | {r['reliable']['enqueue']:,.0f} | {r['pickup']['p50_ms']:.2f} / {r['pickup']['p99_ms']:.2f} |"]
    for peer, p in sorted(r["peers"].items(), key=lambda kv: -kv[1]["drain"]):
        lines.append(f"| {peer} | {p['version']} | {p['drain']:,.0f} | {p['enqueue']:,.0f} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f} |")
    return lines + [
        "", "Set-ups: RQ `SimpleWorker`; Dramatiq `Worker` with its default 8 threads; Celery `--pool=solo`;",
        "huey consumer with 1 thread worker; arq `Worker` (its own virtualenv: it pins redis-py below 6).",
        "workqueue's enqueue rate is timed over its first 10 000 pushes (the rest of its drains' messages go batched).", "",
    ]


KIND_LABELS = {"async": "async def (asyncio.sleep)", "threads": "plain def (time.sleep)"}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def best_peer(r: dict, n: int, seconds: float) -> dict | None:
    """The fastest peer run at concurrency n and this handler sleep, if the peers ran."""
    runs = [run for run in r["command"]["peers_io"] if run["concurrency"] == n and run["handler_seconds"] == seconds]
    return max(runs, key=lambda run: run["rate"], default=None)


def command_section(r: dict) -> list[str]:
    c = r["command"]
    order = {"workqueue": 0, "no queue": 1}  # then the peers, fastest first
    io_rows = sorted(c["io"] + c.get("bare_io", []) + c["peers_io"],
                     key=lambda run: (run["handler_seconds"], run["concurrency"], order.get(run["system"], 2), -run["rate"]))
    lines = [
        "## The worker command", "",
        "`python -m workqueue worker handlers:NAME` (bench/handlers.py), started in bench/ with LOG_LEVEL=warning and",
        f"WORKER_TIMEOUT={c['crash'][0]['worker_timeout']}, each worker in a process group of its own; supervised unless it says",
        "`--in-process`. Every run is timed from the first job's start (a supervised worker's children take a while to",
        "start): jobs / (last job's end − first job's start). RSS = VmRSS summed over the worker's process group (the",
        "worker and its children), the largest of samples every 0.25 s while it works.", "",
        "### I/O-bound handlers, one worker running N at once", "",
        "Jobs sleep (asyncio.sleep in an `async def` handler, N tasks on one event loop; time.sleep in a plain one, N",
        "threads). workqueue: `--processes 1 --concurrency N`, so the limit is N / sleep; its figure is the median of",
        f"{len(c['io'][0]['runs'])} run(s) of {'about 1 s' if r['quick'] else 'about 2 s'} of work at the limit. \"no queue\": the same",
        "sleeps, N at once, in one process with no queue at all (bench/command.py bare): what this machine's event loop",
        "or threads allow, the ceiling of every row beside it.",
        f"The peers run the same job at the same N, up to {IO_PEER_MESSAGES:,} jobs or {IO_PEER_CAP:g} s from their first.", "",
        "| Sleep | N | System | Handler | msg/s | % of N / sleep | RSS MiB |", "| ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for run in io_rows:
        rss = f"{run['rss_mib']:.0f}" if run["rss_mib"] else "–"
        lines.append(f"| {ms(run['handler_seconds'])} | {run['concurrency']} | {run['system']} {run['version']} | "
                     f"{KIND_LABELS[run['kind']]} | {run['rate']:,.0f} | {run['efficiency'] * 100:.1f}% | {rss} |")
    if c["peers_io"]:
        lines += ["", "Peer set-ups (one worker process each, as documented): arq `Worker(max_jobs=N)` (it polls every 0.5 s,",
                  "its default); saq `Worker(concurrency=N)`; taskiq-redis `RedisStreamBroker` (acknowledged), `taskiq worker",
                  "--workers 1 --max-async-tasks N`; Dramatiq `Worker(worker_threads=N)`; Celery `--pool=threads",
                  "--concurrency=N`; huey consumer with N thread workers."]
    n, seconds, jobs, window = CRASH
    lines += [
        "", "### A SIGKILL mid-run", "",
        f"{jobs:,} jobs sleeping {ms(seconds)}, N = {n}; once 40% have run (or 10 s after the first did) the worker's whole",
        "process group is SIGKILLed and the same command started again. Each job pushes its id before it returns, so a",
        f"job the system took as done has said so. Lost = never run within {window:g} s of the restart (workqueue: or until",
        "every job has run and its queue holds nothing pending, in flight or delayed); duplicated = runs beyond one a job.",
        "Peers at their defaults: some take back a dead worker's jobs only later (Dramatiq after its 60 s heartbeat",
        "timeout, taskiq-redis after a 10 min idle time, saq at its sweeps), some never (at-most-once).", "",
        "| System | Handler | Run before the kill | Lost | Duplicated | Waited after the restart |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for run in c["crash"]:
        lines.append(f"| {run['system']} | {KIND_LABELS[run['kind']]} | {run['ran_before_kill']:,} | {run['lost']:,} | "
                     f"{run['duplicated']:,} | {run['waited']:.1f} s |")
    cpu, drain, pickup = c["cpu"], c["drain"], c["pickup"]
    lines += [
        "", "### CPU-bound handler, one or two child processes", "",
        f"Jobs busy-wait 1 ms (`handlers:busy_1ms`), {cpu['1']['messages']:,} a run, `--processes 1` and `--processes 2` (concurrency",
        f"1) in {len(cpu['ratios'])} back-to-back pairs (ABBA); the machine has {r['machine']['cores']} cores, shared with Redis and the supervisor.", "",
        "| Processes | msg/s (median) | Runs | RSS MiB |", "| ---: | ---: | --- | ---: |",
    ]
    for key in ("1", "2"):
        lines.append(f"| {key} | {cpu[key]['rate']:,.0f} | {', '.join(f'{x:,}' for x in cpu[key]['runs'])} | {cpu[key]['rss_mib']:.0f} |")
    lines += [
        "", "### Supervised beside `--in-process`", "",
        f"No-op drain: `handlers:noop --burst`, {drain['supervised']['messages']:,} messages, supervised at its defaults (one child",
        f"per core, concurrency 1) and `--in-process`, in {len(drain['ratios'])} back-to-back pairs (ABBA), timed from job 0's start to",
        f"job N−1's. Idle pickup: both idle side by side on queues of their own, {pickup['supervised']['samples']:,} samples each,",
        "alternating, 20 ms apart.", "",
        "| Worker | No-op drain msg/s (median) | Runs | Idle pickup p50 / p99 ms |", "| --- | ---: | --- | ---: |",
    ]
    for key in ("in-process", "supervised"):
        lines.append(f"| {key} | {drain[key]['drain']:,.0f} | {', '.join(f'{x:,}' for x in drain[key]['runs'])} | "
                     f"{pickup[key]['p50_ms']:.2f} / {pickup[key]['p99_ms']:.2f} |")
    if "pipeline" in c:
        lines += pipeline_section(c["pipeline"])
    parts = ", ".join(f"{part} {value:.0f} s" for part, value in c["seconds"].items() if part != "total")
    return lines + ["", f"This section took {c['seconds']['total']:.0f} s ({parts}).", ""]


def pipeline_section(p: dict) -> list[str]:
    """The two-stage pipeline beside the one-stage drain and a batched push (command.py pipeline)."""
    lines = [
        "", "### A two-stage pipeline", "",
        f"`handlers:STAGES`: {p['messages']:,} messages pushed to stage one, whose handler emits one follow-up to stage two (a",
        "no-op): 2N handler runs. Beside it, in the same rounds: the one-stage no-op drain (`handlers:noop --burst`) and",
        "`Queue.push_many` of N bodies. Served: both stages at once, one `workqueue worker handlers:STAGES`; staged: stage",
        "two paused until stage one is done. Wall = first job's start to last job's; CPU = the command's processes and",
        f"Redis over the same stretch (push: the producer and Redis). Per message, µs; medians of {p['rounds']} rounds.", "",
        "| Worker | Measure | Drain | Pipeline per run | Emit's extra, served | Stage one alone | Emit's extra, staged | Batched push |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("in-process", "supervised"):
        for measure in ("wall", "cpu"):
            f = p[mode][f"{measure}_from_medians"]
            lines.append(f"| {mode} | {measure} | {f['drain_us']:.1f} | {f['pipeline_us']:.1f} | {f['emit_extra_us']:.1f} | "
                         f"{f['stage_one_us']:.1f} | {f['staged_emit_us']:.1f} | {f['push_us']:.1f} |")
    return lines


def command_targets(r: dict) -> list[tuple[str, str, bool]]:
    """The worker command's targets: each a figure of this run against a limit or a figure of the same run."""
    c = r["command"]
    rows = []
    bare = {(run["kind"], run["concurrency"], run["handler_seconds"]): run for run in c.get("bare_io", [])}
    for run in c["io"]:
        kind, n, seconds, share = run["kind"], run["concurrency"], run["handler_seconds"], run["efficiency"] * 100
        goal = IO_TARGETS[kind] * 100
        ceiling = bare.get((kind, n, seconds))
        beside = f"; no queue: {ceiling['efficiency'] * 100:.1f}%" if ceiling else ""
        rows.append((f"worker command, {kind} N = {n}, {ms(seconds)} sleeps ≥ {goal:.0f}% of N / sleep ({run['limit']:,.0f} msg/s{beside})",
                     f"{share:.1f}% ({run['rate']:,.0f} msg/s)", share >= goal))
    for run in c["io"]:
        peer = best_peer(r, run["concurrency"], run["handler_seconds"])
        if peer is not None:
            ratio = run["rate"] / peer["rate"]
            rows.append((f"worker command, {run['kind']} N = {run['concurrency']}, {ms(run['handler_seconds'])} ≥ 2× the best peer "
                         f"at that N (best: {peer['system']}, {peer['rate']:,.0f} msg/s)", f"{ratio:.2f}×", ratio >= 2))
    for run in c["crash"]:
        if run["system"] == "workqueue":
            rows.append((f"SIGKILL of the worker's process group mid-run, then a restart: no job lost ({run['kind']})",
                         f"{run['lost']} lost, {run['duplicated']} duplicated", run["lost"] == 0))
    cpu = middle(c["cpu"]["ratios"])
    rows.append(("CPU-bound (1 ms busy-wait): `--processes 2` ≥ 1.8× `--processes 1` (median of paired runs' ratios)",
                 f"{cpu:.2f}× (pairs: {', '.join(f'{x:.2f}' for x in c['cpu']['ratios'])})", cpu >= 1.8))
    drain = middle(c["drain"]["ratios"])
    rows.append(("supervised no-op drain ≥ 0.5× `--in-process` (median of paired runs' ratios)",
                 f"{drain:.2f}× (pairs: {', '.join(f'{x:.2f}' for x in c['drain']['ratios'])})", drain >= 0.5))
    pickup = c["pickup"]
    for p in ("p50", "p99"):
        ours, base = pickup["supervised"][f"{p}_ms"], pickup["in-process"][f"{p}_ms"]
        rows.append((f"idle pickup {p}, supervised ≤ `--in-process` + 0.5 ms (in-process: {base:.2f} ms)", f"{ours:.2f} ms",
                     ours <= base + 0.5))
    return rows


def targets(r: dict) -> list[tuple[str, str, bool]]:
    """(target, this run's figure, met) for each target: ratios or differences of this run's figures."""
    wq = r["efficiency"]["workqueue"]
    at_100us, at_1ms = at_spin(wq, 0.000_1)["efficiency"] * 100, at_spin(wq, 0.001)["efficiency"] * 100
    script = r["script"]["script"] / r["script"]["library"] * 100
    info = middle(r["info_ratios"]) * 100  # INFO beside warning, in back-to-back pairs
    scaling = many_at(r, "sleep", 8)["drain"] / many_at(r, "sleep", 1)["drain"]
    load, raw_load = r["load"]["workqueue"]["p99_ms"], r["load"]["raw"]["p99_ms"]
    pickup, raw_pickup = r["pickup"], r["raw_pickup"]
    ratios = r["versus_batched"]  # taken within each pair of back-to-back drains
    versus_batched = middle(ratios)
    versus_raw, simple = r["reliable"]["drain"] / r["raw_loop"], r["simple"]["drain"] / r["raw_loop"]
    push = r["push_batched"] / r["raw_rpush_pipelined"] * 100
    rss = r["rss"]
    growth = (rss["rss_end_mib"] / rss["rss_10k_mib"] - 1) * 100
    return [
        ("handler efficiency at 100 µs ≥ 90% (workqueue)", f"{at_100us:.1f}%", at_100us >= 90),
        ("handler efficiency at 1 ms ≥ 97% (workqueue)", f"{at_1ms:.1f}%", at_1ms >= 97),
        ("`worker/main.py --burst` drain within 10% of the library's no-op worker", f"{script:.1f}%", script >= 90),
        ("INFO-level drain ≥ 75% of warning-level drain (median of paired runs' ratios)",
         f"{info:.1f}% (pairs: {', '.join(f'{ratio:.0%}' for ratio in r['info_ratios'])})", info >= 75),
        ("8 workers, 1 ms sleeping handler ≥ 7× one worker's drain", f"{scaling:.2f}×", scaling >= 7),
        (f"p99 push-to-start at {LOAD_RATE:,} msg/s ≤ raw loop's p99 + 1 ms (raw: {raw_load:.2f} ms)", f"{load:.2f} ms", load <= raw_load + 1),
        ("idle pickup: median overhead over the raw loop ≤ 0.1 ms", f"{pickup['median_overhead_ms']:.3f} ms", pickup["median_overhead_ms"] <= 0.1),
        (f"idle pickup p99 ≤ raw loop's p99 + 0.3 ms (raw: {raw_pickup['p99_ms']:.2f} ms)", f"{pickup['p99_ms']:.2f} ms",
         pickup["p99_ms"] <= raw_pickup["p99_ms"] + 0.3),
        ("no-op reliable drain ≥ 1.5× the bare batched consumer (median of paired runs' ratios)",
         f"{versus_batched:.2f}× (pairs: {', '.join(f'{ratio:.2f}' for ratio in ratios)})", versus_batched >= 1.5),
        ("no-op reliable drain ≥ 10× the per-message raw loop", f"{versus_raw:.1f}×", versus_raw >= 10),
        ("no-op simple drain ≥ 15× the per-message raw loop", f"{simple:.1f}×", simple >= 15),
        ("batched push ≥ 50% of raw pipelined RPUSH", f"{push:.1f}%", push >= 50),
        (f"worker RSS after {rss['messages']:,} within 10% of after 10 000", f"{growth:+.1f}%", abs(growth) <= 10),
    ] + command_targets(r)


def report(r: dict) -> str:
    """The markdown page: figures, then the targets as ratios of this run's figures."""
    lines = intro(r) + figures(r) + many_section(r) + load_section(r) + efficiency_section(r) + peers_section(r) + command_section(r)
    lines += ["## Targets", "", "| Target | This run | Met |", "| --- | ---: | :---: |"]
    lines += [f"| {name} | {value} | {'yes' if met else 'no'} |" for name, value, met in targets(r)]
    lines += ["", "![drain rates](benchmarks.png)", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the peers; fewer messages")
    parser.add_argument("--messages", type=int, help="messages per workqueue drain (default 200 000; quick 50 000)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where to write the page, its JSON and charts (default docs/)")
    args = parser.parse_args()
    messages = args.messages or (50_000 if args.quick else 200_000)
    with throwaway_redis() as url:
        results = measure(url, args.quick, messages)
    docs = args.docs
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    (docs / "benchmarks.md").write_text(report(results))
    chart = subprocess.run([str(BENCH / ".peers" / "main" / "bin" / "python"), str(BENCH / "chart.py"), str(docs / "benchmarks.json"),
                            str(docs / "benchmarks.png"), str(docs / "benchmarks-efficiency.png")], capture_output=True, text=True, timeout=300)
    if chart.returncode != 0:
        print(f"chart failed: {chart.stderr[-1000:]}", file=sys.stderr)
    print((docs / "benchmarks.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
