"""Worker: take messages from the queue and process them with the demo handler.

    python worker/main.py [--queue NAME] [--delivery reliable|simple] [--max-attempts N]
                          [--fail-rate P] [--work-seconds S] [--burst] [--prefetch N]
                          [--worker-timeout S] [--grace S] [--job-timeout S] [--metrics-port PORT]
"""

import argparse
import random
import sys
import time
from collections.abc import Callable

import structlog

from workqueue import ConfigError, Message, Settings, Worker, __version__
from workqueue.cli.serve import serve
from workqueue.settings import SUPERVISOR_ONLY, add_flags, fraction, load_env_file, parse_value, seconds


class SimulatedFailure(Exception):
    """Raised by the demo handler when --fail-rate says this try fails."""


def demo_handler(fail_rate: float, work_seconds: float) -> Callable[[Message], None]:
    log = structlog.get_logger().bind()  # bound once: below its level a log call is then a no-op, not a proxy lookup

    def handle(message: Message) -> None:
        if work_seconds:  # time.sleep(0) alone costs tens of microseconds a message
            log.debug("demo_work_started", id=message.id)
            time.sleep(work_seconds)
        if fail_rate and random.random() < fail_rate:
            raise SimulatedFailure(f"simulated failure (fail rate {fail_rate})")
        log.debug("demo_work_done", id=message.id, body=message.body)

    return handle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"workqueue {__version__}")
    add_flags(parser, exclude=SUPERVISOR_ONLY)  # --queue, --delivery, --max-attempts, ... each setting that has a flag
    parser.add_argument("--fail-rate", default="0", help="demo: probability that a try fails (default 0)")
    parser.add_argument("--work-seconds", default="0", help="demo: seconds each message takes (default 0)")
    parser.add_argument("--burst", action="store_true", help="exit 0 once nothing is left to do")
    args = parser.parse_args()
    load_env_file()
    try:
        settings = Settings.load(**{name: value for name, value in vars(args).items() if name in Settings.flagged()})
        fail_rate = parse_value("--fail-rate", args.fail_rate, fraction)
        work_seconds = parse_value("--work-seconds", args.work_seconds, seconds)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The handler is made once logging is set up: it binds its logger then.
    return serve(settings, lambda queue, metrics, abort: Worker.from_settings(
        settings, demo_handler(fail_rate, work_seconds), burst=args.burst, abort=abort, queue=queue, metrics=metrics))

if __name__ == "__main__":
    sys.exit(main())
