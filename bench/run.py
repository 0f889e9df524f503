"""The benchmark: workqueue beside raw redis-py and the Python job queues, on one Redis, in one run.

    bench/run [--quick] [--messages N]

Starts its own redis-server on a free loopback port (no persistence), measures, and writes
docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png. Every figure is taken in
this run on this machine; the targets are ratios between figures of the same run.
--quick skips the peers (RQ, Dramatiq, Celery, huey, arq) and uses fewer messages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OURS = sys.executable  # the project's .venv
PICKUP_SAMPLES = 1000  # per system: the p99 is then the 10th slowest, not one unlucky sample
PEERS = {  # peer -> (virtualenv, messages to drain in a full run)
    "huey": ("main", 20_000), "dramatiq": ("main", 20_000), "celery": ("main", 10_000),
    "rq": ("main", 3_000), "arq": ("arq", 3_000),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def systems(python: str, *args: str, url: str) -> dict:
    """Run bench/systems.py in the given interpreter; it prints one JSON object."""
    done = subprocess.run([python, str(BENCH / "systems.py"), *args], cwd=BENCH, env=dict(os.environ, BENCH_REDIS_URL=url),
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"systems.py {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_drain(python: str, system: str, n: int, url: str, runs: int = 3) -> dict:
    """The run with the median drain rate of `runs`: one noisy run must not decide a ratio."""
    results = sorted((systems(python, "drain", system, str(n), url=url) for _ in range(runs)), key=lambda r: r["drain"])
    return results[len(results) // 2] | {"runs": [round(r["drain"]) for r in results]}


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


def measure(url: str, quick: bool, messages: int) -> dict:
    client = redis.Redis.from_url(url)
    r: dict = {"machine": machine(), "quick": quick}
    print("raw redis-py ...", file=sys.stderr)
    r["raw_loop"] = median_drain(OURS, "raw", 20_000, url)["drain"]
    r["raw_rpush_pipelined"] = raw_pipelined_rpush(client, 200_000)
    r["raw_lpop_100"] = raw_lpop_count(client, 200_000)
    print("workqueue ...", file=sys.stderr)
    r["reliable"] = median_drain(OURS, "workqueue", messages, url)
    r["simple"] = median_drain(OURS, "workqueue-simple", messages, url)
    r["reliable_info_logs"] = systems(OURS, "drain", "workqueue-info", str(messages // 2), url=url)
    r["push_single"] = ours_push(url, 20_000, batched=False)
    r["push_batched"] = ours_push(url, 200_000, batched=True)
    # Raw and workqueue workers idle side by side and their samples alternate, so the machine's
    # noisy moments (which decide a p99) hit both alike.
    pickups = systems(OURS, "paired-pickup", str(PICKUP_SAMPLES), "raw", "workqueue", url=url)
    r["raw_pickup"], r["pickup"] = pickups["raw"], pickups["workqueue"]
    r["rss"] = systems(OURS, "rss", str(200_000 if quick else 1_000_000), url=url)
    r["peers"] = {}
    if not quick:
        for peer, (venv, n) in PEERS.items():
            print(f"{peer} ...", file=sys.stderr)
            python = str(BENCH / ".peers" / venv / "bin" / "python")
            r["peers"][peer] = systems(python, "drain", peer, str(n), url=url)
            r["peers"][peer].update(systems(python, "pickup", peer, "50", url=url))
    return r


def report(r: dict) -> str:
    """The markdown page: figures, then the targets as ratios of this run's figures."""
    m = r["machine"]
    fastest_peer = max((p["drain"] for p in r["peers"].values()), default=None)
    rss = r["rss"]
    rows = [
        ("raw redis-py: BLMOVE + LREM per message (drain)", r["raw_loop"], "msg/s"),
        ("raw redis-py: pipelined RPUSH", r["raw_rpush_pipelined"], "msg/s"),
        ("raw redis-py: LPOP count 100", r["raw_lpop_100"], "msg/s"),
        ("workqueue reliable drain (1 worker)", r["reliable"]["drain"], "msg/s"),
        ("workqueue simple drain (1 worker)", r["simple"]["drain"], "msg/s"),
        ("workqueue reliable drain, INFO log per message (JSON)", r["reliable_info_logs"]["drain"], "msg/s"),
        ("workqueue push, one at a time", r["push_single"], "msg/s"),
        ("workqueue push_many (batched)", r["push_batched"], "msg/s"),
    ]
    lines = [
        "# Benchmarks", "",
        "Written by `bench/run` (`bench/run --quick` skips the peers). One worker process, no-op jobs,",
        "one redis-server on loopback without persistence, everything measured in one run.",
        "Drain rate = (N−1) / (time of the last job − time of the first), so start-up is excluded;",
        "the raw loop's and workqueue's drains are the median of three runs (all in docs/benchmarks.json).",
        "Pickup = from just before the push to the start of the job, with the worker idle (20 ms between samples);",
        f"the raw loop's and workqueue's workers idle side by side and their {PICKUP_SAMPLES:,} samples each alternate,",
        "so the machine's noisy moments, which decide a p99, hit both alike.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; Python {m['python']}, redis-server {m['redis_server']},",
        f"redis-py {m['redis_py']}; {m['date']}.{' Quick run: peers skipped.' if r['quick'] else ''}", "",
        "| Measure | Figure |", "| --- | ---: |",
    ]
    lines += [f"| {name} | {value:,.0f} {unit} |" for name, value, unit in rows]
    lines += [
        f"| idle pickup p50 / p99, raw BLMOVE loop | {r['raw_pickup']['p50_ms']:.2f} / {r['raw_pickup']['p99_ms']:.2f} ms |",
        f"| idle pickup p50 / p99, workqueue | {r['pickup']['p50_ms']:.2f} / {r['pickup']['p99_ms']:.2f} ms |",
        f"| idle pickup, workqueue's median overhead over the raw loop (same rounds) | {r['pickup']['median_overhead_ms']:.3f} ms |",
        f"| worker RSS after 10 000 / after {rss['messages']:,} messages | {rss['rss_10k_mib']:.1f} / {rss['rss_end_mib']:.1f} MiB |",
        "",
    ]
    if r["peers"]:
        lines += ["## Peers (same Redis, same run, documented single-process set-ups)", "",
                  "| System | Version | Drain msg/s | Enqueue msg/s (one at a time) | Pickup p50 / p99 ms |",
                  "| --- | --- | ---: | ---: | ---: |",
                  f"| workqueue reliable | {r['reliable']['version']} | {r['reliable']['drain']:,.0f} | {r['reliable']['enqueue']:,.0f} | {r['pickup']['p50_ms']:.2f} / {r['pickup']['p99_ms']:.2f} |"]
        for peer, p in sorted(r["peers"].items(), key=lambda kv: -kv[1]["drain"]):
            lines.append(f"| {peer} | {p['version']} | {p['drain']:,.0f} | {p['enqueue']:,.0f} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f} |")
        lines += ["", "Set-ups: RQ `SimpleWorker`; Dramatiq `Worker` with its default 8 threads; Celery `--pool=solo`;",
                  "huey consumer with 1 thread worker; arq `Worker` (its own virtualenv: it pins redis-py below 6).", ""]
    targets = [
        ("reliable drain ≥ 15× raw BLMOVE+LREM loop", r["reliable"]["drain"] / r["raw_loop"], 15, "×"),
        ("simple drain ≥ 15× raw loop", r["simple"]["drain"] / r["raw_loop"], 15, "×"),
        ("batched push ≥ 50% of raw pipelined RPUSH", r["push_batched"] / r["raw_rpush_pipelined"] * 100, 50, "%"),
    ]
    if fastest_peer:
        targets.insert(1, ("reliable drain ≥ 25× fastest peer", r["reliable"]["drain"] / fastest_peer, 25, "×"))
    lines += ["## Targets", "", "| Target | This run | Met |", "| --- | ---: | :---: |"]
    lines += [f"| {name} | {value:.1f}{unit} | {'yes' if value >= goal else 'no'} |" for name, value, goal, unit in targets]
    growth = (rss["rss_end_mib"] / rss["rss_10k_mib"] - 1) * 100
    lines += [
        f"| idle pickup p99 ≤ 1 ms (raw loop, same run: {r['raw_pickup']['p99_ms']:.2f} ms) | {r['pickup']['p99_ms']:.2f} ms | {'yes' if r['pickup']['p99_ms'] <= 1 else 'no'} |",
        f"| worker RSS after {rss['messages']:,} within 10% of after 10 000 | {growth:+.1f}% | {'yes' if abs(growth) <= 10 else 'no'} |",
        "", "![drain rates](benchmarks.png)", "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the peers; fewer messages")
    parser.add_argument("--messages", type=int, help="messages per workqueue drain (default 200 000; quick 50 000)")
    args = parser.parse_args()
    messages = args.messages or (50_000 if args.quick else 200_000)
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
        results = measure(url, args.quick, messages)
    finally:
        server.terminate()
        server.wait(timeout=10)
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    (docs / "benchmarks.md").write_text(report(results))
    chart = subprocess.run([str(BENCH / ".peers" / "main" / "bin" / "python"), str(BENCH / "chart.py"), str(docs / "benchmarks.json"),
                            str(docs / "benchmarks.png")], capture_output=True, text=True)
    if chart.returncode != 0:
        print(f"chart failed: {chart.stderr[-1000:]}", file=sys.stderr)
    print((docs / "benchmarks.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
