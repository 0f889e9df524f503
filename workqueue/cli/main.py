"""The command line, `workqueue` or `python -m workqueue`: parsing, settings, exit codes.

What each command prints is in report.py (and top.py); what it changes, in queue.py and store/dead.py.
Exit codes: 0 done; 1 Redis unreachable or refusing, or a dead letter asked for by id was not
found or cannot be requeued; 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from .. import __version__
from ..logs import printable
from ..queue import GroupError, Queue
from ..settings import ConfigError, Settings, count, load_env_file, parse_value
from ..store.dead import Changed
from ..store.outages import is_outage, refusal
from . import report, top, worker_command
from .report import print_stats

__all__ = ["main", "print_stats"]


def _prog() -> str:
    return "workqueue" if Path(sys.argv[0]).name == "workqueue" else "python -m workqueue"


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(prog=prog, description="Inspect and operate a workqueue queue.",
                                     epilog=f"example:\n  {prog} --queue images stats", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"workqueue {__version__}")
    queue_help = "queue name (default: QUEUE_NAME, else demo-1)"
    parser.add_argument("--queue", default=None, help=queue_help)
    # --queue is accepted before or after the command; SUPPRESS keeps one given before it.
    queue_option = argparse.ArgumentParser(add_help=False)
    queue_option.add_argument("--queue", default=argparse.SUPPRESS, help=queue_help)

    def command(group: Any, name: str, summary: str, *examples: str) -> argparse.ArgumentParser:
        epilog = f"example{'s' if len(examples) > 1 else ''}:\n" + "\n".join(f"  {prog} {example}" for example in examples)
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[queue_option], help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        return sub

    def as_json(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    def how_many(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--count", default="10", metavar="N", help=f"how many {what} at most (default 10)")

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    worker = command(commands, "worker", "serve a handler of your own: a supervisor runs it in child processes, each "
                     "running --concurrency messages at once", "worker tasks:resize --queue images",
                     "worker tasks:fetch_page --concurrency 50 --processes 2", "worker tasks:quick --in-process")
    worker_command.add_options(worker)
    stats = command(commands, "stats", "counts, counters, the age of the oldest pending message, the pause flag and the balance "
                    "of messages (unaccounted: 0 when nothing was lost)", "stats", "stats --queue images --json")
    as_json(stats, "one object")
    peek = command(commands, "peek", "show the next pending messages, head first, without taking them", "peek --count 3")
    how_many(peek, "messages")
    as_json(peek, "a list of message objects (an element that is not a message: its error and raw text)")
    dead = command(commands, "dead", "list, requeue or purge dead letters", "dead list", "dead requeue --id 9f1c", "dead purge --malformed")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = command(dead_commands, "list", "show dead letters, newest first", "dead list --count 20 --json")
    how_many(listing, "dead letters")
    as_json(listing, "a list of objects: id, attempts, error, dead_lettered_at, body, raw (of a malformed one)")
    requeue = command(dead_commands, "requeue", "send dead letters back to the queue's tail with attempts 0 and no error, "
                      "each in one step with its removal (malformed ones cannot be requeued)", "dead requeue --id 9f1c 77ab",
                      "dead requeue --all --yes")
    purge = command(dead_commands, "purge", "remove dead letters for good (counted as purged; the balance stays exact)",
                    "dead purge --id 9f1c", "dead purge --malformed", "dead purge --all --yes")
    for sub, verb in ((requeue, "requeue"), (purge, "purge")):
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", nargs="+", action="extend", metavar="ID", help=f"{verb} the dead letters with these ids")
        which.add_argument("--all", action="store_true", help=f"{verb} every dead letter (needs --yes)")
        if sub is purge:
            which.add_argument("--malformed", action="store_true", help="purge the entries that are not messages")
        sub.add_argument("--yes", action="store_true", help="confirm --all")
    queues = command(commands, "queues", "list every queue on this Redis (from the registry of queues that pushed or had a "
                     "worker start) with pending, in flight, dead and live workers", "queues")
    as_json(queues, "a list of objects")
    group = command(commands, "group", "a group's progress (Queue.push_many(group=...)): members ended of total, completed, "
                    "dead, pending; exit 0 when all completed, 1 when any was dead-lettered or it is not done",
                    "group batch-7", "group batch-7 --wait")
    group.add_argument("name", help="the group's name")
    group.add_argument("--wait", action="store_true", help="wait until it is done, drawing its progress")
    as_json(group, "one object")
    command(commands, "pause", "pause the queue: workers take no new messages (they finish what they hold) until resume", "pause --queue images")
    command(commands, "resume", "let workers take messages from a paused queue again", "resume --queue images")
    command(commands, "top", "a live view redrawn every second: depth, in flight per worker, rates, dead, oldest age, "
            "paused; q or Ctrl-C quits (not on a terminal: one snapshot)", "top --queue images")
    web = command(commands, "web", "serve the dashboard of every queue on this Redis in a browser, and its JSON API under "
                  "/api (optional extra web; actions need WEB_TOKEN)", "web", "web --host 0.0.0.0 --port 8080")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    web.add_argument("--port", default="8080", help="port to listen on (default 8080)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    load_env_file()  # the console script's entry; `python -m workqueue` has loaded it already
    args = _parser().parse_args(argv)
    if args.command == "worker":
        return worker_command.run(args, list(sys.argv[1:] if argv is None else argv))
    try:
        settings = Settings.load(queue_name=args.queue)
        limit = parse_value("--count", args.count, count) if "count" in args else 0
        queue = Queue.from_settings(settings)
    except (ConfigError, ValueError) as error:  # ValueError: the name of the registry of queues
        print(f"error: {error}", file=sys.stderr)
        return 2
    if getattr(args, "all", False) and not args.yes:
        print(f"error: --all acts on every dead letter of {queue.name}; add --yes to confirm", file=sys.stderr)
        return 2
    try:
        code = _run(args, queue, limit)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
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


def _run(args: argparse.Namespace, queue: Queue, limit: int) -> int:
    if args.command == "stats":
        print_stats(queue, args.json)
    elif args.command == "peek":
        report.print_peek(queue, limit, args.json)
    elif args.command == "queues":
        report.print_queues(queue, args.json)
    elif args.command == "top":
        top.run(queue)
    elif args.command == "group":
        try:
            return report.print_group(queue, args.name, args.json, args.wait, sys.stdout.isatty())
        except GroupError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print()
            return 130
    elif args.command == "web":
        from ..web import command as web_command  # here alone: the web stack is an optional extra

        return web_command.run(queue, args.host, args.port)
    elif args.command in ("pause", "resume"):
        changed = queue.pause() if args.command == "pause" else queue.resume()
        state = "paused" if args.command == "pause" else "resumed"
        print(f"queue {queue.name} {state}" if changed else f"queue {queue.name} was {'paused already' if args.command == 'pause' else 'not paused'}")
    elif args.dead_command == "list":
        report.print_dead(queue, limit, args.json)
    elif args.dead_command == "purge" and args.all:
        print(f"purged {queue.dead.purge_all()} dead letters of {queue.name}")
    elif args.dead_command == "purge":
        outcome = queue.dead.purge(args.id, malformed_only=args.malformed)
        print(f"purged {outcome.changed} dead letters of {queue.name}")
        return _missing(outcome)
    else:
        outcome = queue.dead.requeue(None if args.all else args.id)
        print(f"requeued {outcome.changed} dead letters to {queue.name}"
              + (f"; left {outcome.malformed_left} malformed entries (dead purge --malformed removes them)" if args.all else ""))
        for message_id in outcome.malformed:
            print(f"error: the dead letter {printable(message_id)} is malformed and cannot be requeued", file=sys.stderr)
        return max(_missing(outcome), 1 if outcome.malformed else 0)
    return 0


def _missing(outcome: Changed) -> int:
    for message_id in outcome.missing:
        print(f"error: no dead letter with id {printable(message_id)}", file=sys.stderr)
    return 1 if outcome.missing else 0
