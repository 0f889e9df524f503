"""Command-line inspection: `python -m workqueue stats|dead|requeue-dead`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from redis.exceptions import RedisError

from . import __version__
from .outages import is_outage, refusal
from .queue import STATS_FIELDS, Queue
from .settings import ConfigError, Settings, count, parse_value


def print_stats(queue: Queue) -> None:
    """Print a queue's stats as a table, one labelled line per figure."""
    result = queue.stats()
    print(f"queue {queue.name} at {queue.location}")
    for name, value in result.items():
        print(f"  {name:<19}{value:>10}  {STATS_FIELDS[name]}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workqueue", description="Inspect a workqueue queue.")
    parser.add_argument("--version", action="version", version=f"workqueue {__version__}")
    # --queue is accepted before or after the command; SUPPRESS keeps one given before it.
    queue_option = argparse.ArgumentParser(add_help=False)
    queue_option.add_argument("--queue", default=argparse.SUPPRESS, help="queue name (default: QUEUE_NAME, else demo-1)")
    parser.add_argument("--queue", default=None, help="queue name (default: QUEUE_NAME, else demo-1)")
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats", parents=[queue_option], help="counts, counters and the balance of messages")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    dead = commands.add_parser("dead", parents=[queue_option], help="print dead-letter entries, oldest first, one per line")
    dead.add_argument("--limit", default="100", help="how many at most (default 100)")
    requeue = commands.add_parser("requeue-dead", parents=[queue_option], help="move dead letters back to the queue, attempts reset")
    requeue.add_argument("--limit", default="100", help="how many at most, oldest first (default 100)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (2: bad arguments or settings, 1: Redis unusable)."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(queue_name=args.queue)
        limit = parse_value("--limit", args.limit, count) if args.command != "stats" else 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    queue = Queue.from_settings(settings)
    try:
        _run(args, queue, limit)
    except RedisError as error:
        refused = refusal(error)
        if refused is not None:
            print(f"error: Redis at {settings.masked_url} refused: {refused}", file=sys.stderr)
        elif is_outage(error):
            print(f"error: Redis at {settings.masked_url} is not answering: {error}", file=sys.stderr)
        else:
            raise
        return 1
    except BrokenPipeError:
        # The reader went away (`stats | head -1`): what it wanted it has; end quietly. Python
        # would complain again when flushing stdout at exit, so point stdout at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run(args: argparse.Namespace, queue: Queue, limit: int) -> None:
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
        print(f"requeued {moved} dead letters to {queue.name}; left {malformed} malformed entries")
    sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
