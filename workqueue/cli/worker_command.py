"""`workqueue worker MODULE:ATTR`: serve your own handler. By default a supervisor runs it in
child processes (worker/supervisor.py); --in-process runs it in the worker's own process.

When ATTR names a dict of queue name -> handler, the command serves each queue with its own
worker process (this same command with --queue), so that queues never wait on one another:
each has its own supervisor, children, pause, stats, recovery and metrics (on --metrics-port
plus the queue's position in the dict). There is no order or priority between them."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ..queue import Queue
from ..settings import SUPERVISOR_ONLY, ConfigError, Settings, add_flags
from ..shutdown import Shutdown, die_with_parent
from ..worker import Worker
from ..worker.spec import HandlerNotFound, load_handler, load_target
from ..worker.supervisor import Supervisor
from .serve import serve

WATCH_TICK = 0.1  # how often (s) the command serving several queues looks at its workers


def add_options(sub: argparse.ArgumentParser) -> None:
    """The worker command's arguments: the handler, and the worker's settings as flags."""
    sub.add_argument("handler", metavar="MODULE:ATTR", help="the handler: a plain or async def function of one message, "
                     "imported from MODULE (the current folder first); or a dict of queue name -> handler, each queue served "
                     "by a worker process of its own")
    add_flags(sub, exclude=("queue_name",))  # --queue is the command line's own
    sub.add_argument("--in-process", action="store_true",
                     help="run the handler in the worker's own process, one message at a time: faster for quick, trusted "
                          "handlers, but a crash or a stuck try ends the worker (--processes and --concurrency do not apply)")
    sub.add_argument("--burst", action="store_true", help="exit 0 once nothing is left to do: nothing waiting, delayed or "
                     "held by any worker, in any queue this command serves")
    # Set by a command serving several queues for each of its workers: all its queues, and its pid.
    sub.add_argument("--burst-with", default="", help=argparse.SUPPRESS)
    sub.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Serve the handler until stopped; returns the exit code (2: a bad setting or handler).
    `argv`: the command's arguments, for the workers of a dict of queues."""
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in Settings.flagged()}
    flags["queue_name"] = args.queue
    try:
        settings = Settings.load(**flags)
        target = load_target(args.handler)
        if isinstance(target, dict) and args.queue is None:
            return _serve_each(list(target), settings, args, argv)
        handler = load_handler(args.handler, settings.queue_name)
    except (ConfigError, HandlerNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # One of the workers of a command serving several queues: in a session of its own, so that a
    # terminal's Ctrl-C reaches it once, passed on by that command; stopped as SIGTERM would
    # when that command ends, whatever ends it.
    if args.parent and not die_with_parent(signal.SIGTERM, args.parent):
        return 0
    also = [name for name in args.burst_with.split(",") if name and name != settings.queue_name]

    def burst_with(worker: Worker) -> Worker:
        worker.burst_queues += [Queue(name, worker.queue.client) for name in also]
        return worker
    if args.in_process:
        if any(flags[name] is not None for name in SUPERVISOR_ONLY):
            print("error: --processes and --concurrency are for the supervised worker, not --in-process", file=sys.stderr)
            return 2
        return serve(settings, lambda queue, metrics, abort: burst_with(Worker.from_settings(
            settings, handler, burst=args.burst, abort=abort, queue=queue, metrics=metrics)))
    return serve(settings, lambda queue, metrics, abort: burst_with(Supervisor(
        queue, args.handler, processes=settings.processes, concurrency=settings.concurrency, log_level=settings.log_level,
        log_format=settings.log_format, delivery=settings.delivery, prefetch=settings.prefetch, burst=args.burst,
        grace=settings.grace, worker_timeout=settings.worker_timeout, job_timeout=settings.job_timeout, abort=abort,
        metrics=metrics)))


def _serve_each(queues: list[str], settings: Settings, args: argparse.Namespace, argv: list[str]) -> int:
    """Serve each of `queues` with a worker process of its own (this command with --queue, in a
    session of its own), passing on the signals this command receives; returns the exit code:
    the highest of theirs (128 + N for one ended by signal N). When one ends unasked (with
    --burst: ends with an error), the others are stopped too."""
    shutdown = Shutdown()
    shutdown.install()
    command = [sys.executable, "-m", "workqueue", *argv, "--parent", str(os.getpid())]
    workers = []
    for position, queue in enumerate(queues):
        extra = ["--queue", queue]
        if settings.metrics_port:
            extra += ["--metrics-port", str(settings.metrics_port + position)]
        if args.burst:
            extra += ["--burst-with", ",".join(queues)]
        workers.append(subprocess.Popen([*command, *extra], env=os.environ.copy(), start_new_session=True))
    forwarded, sent, code = 0, set(), 0
    while [worker.poll() for worker in workers].count(None):  # each polled, so each returncode is current; bounded by their lives
        if shutdown.signals > forwarded:  # each signal once to each: the second one stops them at once
            forwarded = shutdown.signals
            sent.add(shutdown.signum)
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(shutdown.signum)
        failed = [_exit_code(worker.returncode, sent) for worker in workers if worker.returncode not in (None, 0)]
        ended = [worker for worker in workers if worker.returncode is not None]
        if not forwarded and (failed or (ended and not args.burst)):  # one stopped unasked: stop the rest
            code = max(failed, default=1)
            shutdown.request()
        time.sleep(WATCH_TICK)
    return max(code, *(_exit_code(worker.returncode, sent) for worker in workers))


def _exit_code(returncode: int | None, sent: set[int]) -> int:
    """A worker's exit code as a shell says it: 128 + N for a process ended by signal N, but 0
    for one ended by a signal we passed on (it came before the worker could set up its
    handlers: it had started nothing)."""
    if returncode is None or (returncode < 0 and -returncode in sent):
        return 0
    return 128 - returncode if returncode < 0 else returncode
