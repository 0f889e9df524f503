"""Producer: push demo messages onto the queue, one per --interval seconds.

    python app/main.py [--count N] [--interval SECONDS] [--batch B] [--queue NAME]
"""

import argparse
import sys

from workqueue import ConfigError, Queue, RedisRefused, Settings, __version__
from workqueue.logs import configure_logging
from workqueue.producer import produce
from workqueue.settings import add_flags, count, load_env_file, parse_value, seconds
from workqueue.signing import MessageTooLarge


def demo_body(seq: int) -> dict:
    """A sequence number and a little data, standing in for a real unit of work."""
    return {"seq": seq, "numbers": [seq, seq * seq, seq**3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"workqueue {__version__}")
    parser.add_argument("--count", help="push this many messages, then exit (default: forever)")
    parser.add_argument("--interval", default="1.0", help="seconds between pushes (default 1.0)")
    parser.add_argument("--batch", default="1", help="messages per push, in one script call (default 1)")
    add_flags(parser, "queue_name")
    args = parser.parse_args()
    load_env_file()
    try:
        settings = Settings.load(queue_name=args.queue_name)
        total = parse_value("--count", args.count, count) if args.count is not None else None
        interval = parse_value("--interval", args.interval, seconds)
        batch = parse_value("--batch", args.batch, count)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    queue = Queue.from_settings(settings)
    try:
        return produce(queue, demo_body, count=total, interval=interval, batch=batch, grace=settings.grace)
    except RedisRefused as error:
        print(f"error: Redis at {settings.masked_url} refused the producer: {error}", file=sys.stderr)
        return 2
    except MessageTooLarge as error:  # nothing of that batch was pushed
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
