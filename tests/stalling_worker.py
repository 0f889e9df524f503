"""A worker for tests: instant on every message except one whose body says {"stall": true}
(sleeps 120 s) or {"swallow": true} (catches JobTimeout and goes on sleeping)."""

import sys
import time

import structlog

from workqueue import JobTimeout, Settings, Worker
from workqueue.logs import configure_logging


def handle(message) -> None:
    if message.body.get("stall"):
        structlog.get_logger().warning("test_stalling", id=message.id)  # what the test waits for
        time.sleep(120)
    if message.body.get("swallow"):
        for _ in range(120):  # bounded: the worker's housekeeper ends the process long before
            try:
                time.sleep(1)
            except JobTimeout:
                pass


if __name__ == "__main__":
    settings = Settings.load()
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(Worker.from_settings(settings, handle).run())
