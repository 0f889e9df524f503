"""Command-line inspection: `python -m workqueue stats|dead|requeue-dead`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .connection import REDIS_UNAVAILABLE
from .queue import Queue
from .settings import ConfigError, Settings, count

LABELS = {
    "pending": "waiting in the queue",
    "in_flight": "taken by a worker, not settled",
    "delayed": "failed, waiting out their backoff",
    "dead": "in the dead-letter list",
    "workers": "live workers",
    "produced": "pushed by producers",
    "completed": "processed",
    "retried": "failed tries sent back for retry",
    "recovered": "taken back from dead workers",
    "dead_lettered": "dead-lettered",
    "duplicates_skipped": "duplicates skipped",
    "unaccounted": "messages unaccounted for (0: nothing lost)",
}


def print_stats(queue: Queue) -> None:
    """Print a queue's stats as a table, one labelled line per figure."""
    result = queue.stats()
    print(f"queue {queue.name} at {queue.location}")
    for name, value in result.items():
        print(f"  {name:<19}{value:>10}  {LABELS[name]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workqueue", description="Inspect a workqueue queue.")
    parser.add_argument("--queue", help="queue name (default: QUEUE_NAME, else demo-1)")
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats", help="counts, counters and the balance of messages")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    dead = commands.add_parser("dead", help="print dead-letter entries, oldest first, one per line")
    dead.add_argument("--limit", default="100", help="how many at most (default 100)")
    requeue = commands.add_parser("requeue-dead", help="move dead letters back to the queue, attempts reset")
    requeue.add_argument("--limit", default="100", help="how many at most, oldest first (default 100)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(queue_name=args.queue)
        limit = count(args.limit) if args.command != "stats" else 0
    except (ConfigError, ValueError) as error:
        print(f"error: {error}" if isinstance(error, ConfigError) else f"error: --limit {error}", file=sys.stderr)
        return 2
    queue = Queue.from_settings(settings)
    try:
        if args.command == "stats":
            if args.json:
                print(json.dumps(queue.stats()))
            else:
                print_stats(queue)
        elif args.command == "dead":
            for entry in queue.dead_letters(limit):
                print(entry.decode(errors="replace"))
        else:
            moved, malformed = queue.requeue_dead(limit)
            print(f"requeued {moved} dead letters to {settings.queue_name}; left {malformed} malformed entries")
    except REDIS_UNAVAILABLE as error:
        print(f"error: Redis at {settings.masked_url} is not answering: {error}", file=sys.stderr)
        return 1
    return 0
