"""A worker for tests: instant on every message except one whose body says {"stall": true}."""

import sys
import time

from workqueue import Settings, Worker
from workqueue.logs import configure_logging


def handle(message) -> None:
    if message.body.get("stall"):
        time.sleep(120)


if __name__ == "__main__":
    settings = Settings.load()
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(Worker.from_settings(settings, handle).run())
