"""Running a worker from a command line, the same for `workqueue worker` and the demo's
worker/main.py: logging, metrics, the weak-password warning, and exit codes (0 done; 2
configuration, Redis refusing us included)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..logs import configure_logging
from ..queue import Queue
from ..settings import Settings, weak_password_warning
from ..store.outages import RedisRefused
from ..worker import Worker

if TYPE_CHECKING:  # metrics.py needs prometheus-client, an optional extra
    from ..metrics import WorkerMetrics

# Builds the worker for a queue, given the settings, the metrics (None: off) and the abort hook.
MakeWorker = Callable[[Queue, "WorkerMetrics | None", Callable[[int], None]], Worker]


def serve(settings: Settings, make_worker: MakeWorker) -> int:
    """Run the worker `make_worker` builds until it stops; returns the exit code."""
    if settings.metrics_port:
        try:
            from ..metrics import WorkerMetrics
        except ImportError:
            print("error: --metrics-port (METRICS_PORT) needs prometheus-client: pip install \"workqueue-redis[metrics]\"", file=sys.stderr)
            return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        queue = Queue.from_settings(settings)
        metrics = WorkerMetrics(queue) if settings.metrics_port else None
        worker = make_worker(queue, metrics, os._exit)
        if metrics is not None:
            try:
                metrics.serve(settings.metrics_port, worker.log)
            except OSError as error:
                print(f"error: --metrics-port (METRICS_PORT) {settings.metrics_port} cannot be served: {error.strerror or error}",
                      file=sys.stderr)
                return 2
        if (weak := weak_password_warning(settings)) is not None:
            worker.log.warning("redis_password_weak", reason=weak)
        return worker.run()
    except RedisRefused as error:
        print(f"error: Redis at {settings.masked_url} refused the worker: {error}", file=sys.stderr)
        return 2
