"""Soak: the chaos test for as long as you like, with a final report. Not part of the suite.

    .venv/bin/python scripts/soak.py [--seconds 300] [--rate 200] [--workers 3]
                                     [--delivery reliable|simple] [--kill-every 2] [--redis-restart-every 60]

Starts its own redis-server (AOF, fsync always) on a free loopback port, a producer at --rate
messages/s and --workers workers; SIGKILLs a random worker every --kill-every seconds (and starts
a new one) and kills and restarts Redis every --redis-restart-every seconds. Then it lets the
workers drain, stops them, and prints what `stats` says.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import Process, RedisServer, script_env, stats, wait_until  # noqa: E402


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Chaos soak for workqueue.")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=200, help="messages per second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--delivery", choices=["reliable", "simple"], default="reliable")
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--redis-restart-every", type=float, default=60.0)
    parser.add_argument("--work-seconds", type=float, default=0.001)
    args = parser.parse_args()

    rng = random.Random()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="workqueue-soak-")), persistent=True).start()
    queue = "soak"
    env = script_env(server.url, queue, WORKER_TIMEOUT=3, MAX_ATTEMPTS=5, RETRY_BACKOFF=0.1)
    worker_args = ["--delivery", args.delivery, "--work-seconds", str(args.work_seconds), "--fail-rate", "0.01"]
    count = max(1, int(args.seconds * args.rate))
    batch = max(1, int(args.rate / 20))  # 20 pushes a second
    producer = Process("app/main.py", "--count", str(count), "--interval", str(batch / args.rate), "--batch", str(batch), env=env)
    workers = [Process("worker/main.py", *worker_args, env=env) for _ in range(args.workers)]
    everyone = list(workers)
    kills = restarts = peak_rss = 0
    started = time.monotonic()
    next_kill, next_restart = started + args.kill_every, started + args.redis_restart_every
    print(f"soak: {count} messages over {args.seconds:.0f}s, {args.workers} {args.delivery} workers, Redis at {server.url}")
    try:
        while producer.popen.poll() is None and time.monotonic() - started < args.seconds * 3 + 60:
            time.sleep(0.1)
            peak_rss = max([peak_rss] + [rss_kib(w.popen.pid) for w in workers])
            now = time.monotonic()
            if now >= next_kill:
                victim = rng.randrange(len(workers))
                workers[victim].popen.kill()
                workers[victim] = Process("worker/main.py", *worker_args, env=env)
                everyone.append(workers[victim])
                kills, next_kill = kills + 1, now + args.kill_every
            if now >= next_restart:
                server.kill()
                time.sleep(rng.uniform(0.5, 3))
                server.start()
                restarts, next_restart = restarts + 1, now + args.redis_restart_every
        wait_until(lambda: (s := stats(server.url, queue))["pending"] + s["delayed"] + s["in_flight"] == 0, timeout=120, interval=1)
        for worker in workers:
            worker.signal()
        for worker in workers:
            worker.wait(timeout=60)
        result = stats(server.url, queue)
        pushed = {e["id"] for e in producer.events if e.get("event") == "message_pushed"}
        seen = {e["id"] for w in everyone for e in w.events if e.get("event") in ("message_processed", "message_dead_lettered")}
        report = {
            "produced": result["produced"], "completed": result["completed"], "dead": result["dead_lettered"],
            "duplicates": result["duplicates_skipped"], "recovered": result["recovered"], "unaccounted": result["unaccounted"],
            "pushed_ids_never_seen": len(pushed - seen), "worker_kills": kills, "redis_restarts": restarts,
            "peak_worker_rss_mib": round(peak_rss / 1024, 1), "seconds": round(time.monotonic() - started, 1),
        }
        print(json.dumps(report, indent=2))
        return 0 if (result["unaccounted"] == 0 or args.delivery == "simple") else 1
    finally:
        for process in everyone + [producer]:
            process.kill()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
