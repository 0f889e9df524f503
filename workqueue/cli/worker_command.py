"""`workqueue worker MODULE:ATTR`: serve your own handler. By default a supervisor runs it in
child processes (worker/supervisor.py); --in-process runs it in the worker's own process."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..settings import SUPERVISOR_ONLY, ConfigError, Settings, add_flags
from ..worker import Worker
from ..worker.spec import HandlerNotFound, load_handler
from ..worker.supervisor import Supervisor
from .serve import serve


def add_options(sub: argparse.ArgumentParser) -> None:
    """The worker command's arguments: the handler, and the worker's settings as flags."""
    sub.add_argument("handler", metavar="MODULE:ATTR", help="the handler: a plain or async def function of one message, "
                     "imported from MODULE (the current folder first)")
    add_flags(sub, exclude=("queue_name",))  # --queue is the command line's own
    sub.add_argument("--in-process", action="store_true",
                     help="run the handler in the worker's own process, one message at a time: faster for quick, trusted "
                          "handlers, but a crash or a stuck try ends the worker (--processes and --concurrency do not apply)")
    sub.add_argument("--burst", action="store_true", help="exit 0 once nothing is left to do")


def run(args: argparse.Namespace) -> int:
    """Serve the handler until stopped; returns the exit code (2: a bad setting or handler)."""
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in Settings.flagged()}
    flags["queue_name"] = args.queue
    try:
        settings = Settings.load(**flags)
        handler = load_handler(args.handler)
    except (ConfigError, HandlerNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.in_process:
        if any(flags[name] is not None for name in SUPERVISOR_ONLY):
            print("error: --processes and --concurrency are for the supervised worker, not --in-process", file=sys.stderr)
            return 2
        return serve(settings, lambda queue, metrics, abort: Worker.from_settings(
            settings, handler, burst=args.burst, abort=abort, queue=queue, metrics=metrics))
    return serve(settings, lambda queue, metrics, abort: Supervisor(
        queue, args.handler, processes=settings.processes, concurrency=settings.concurrency, log_level=settings.log_level,
        log_format=settings.log_format, delivery=settings.delivery, prefetch=settings.prefetch, burst=args.burst,
        grace=settings.grace, worker_timeout=settings.worker_timeout, job_timeout=settings.job_timeout, abort=abort,
        metrics=metrics))
