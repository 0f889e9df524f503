"""Handlers for the pipeline tests, served by `workqueue worker tests.stages:...` in subprocesses.

Each writes the id of every try it runs to TEST_RUNS_FILE (one line each, appended), so a test
can tell which tries ran; a body may ask to emit follow-ups, to fail after emitting, or to stall.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workqueue import Message


def _ran(message: Message, what: str) -> None:
    path = os.environ.get("TEST_RUNS_FILE")
    if path:
        with open(path, "a") as runs:
            runs.write(f"{what} {message.id}\n")


def split(message: Message) -> None:
    """Emit body["count"] follow-ups to body["to"]; then fail if body["fail"], stall body["seconds"]; end the process if body["exit"]."""
    body: dict[str, Any] = message.body
    if body.get("exit"):
        os._exit(3)  # a crash of the child, as a segfault would be
    for n in range(body.get("count", 1)):
        message.emit(body["to"], {"n": n, "from": message.id, "fail": body.get("fail_follow_up", False)})
    time.sleep(body.get("seconds", 0))
    _ran(message, "split")
    if body.get("fail"):
        raise RuntimeError("failed after emitting")


def finish(message: Message) -> None:
    """The last stage: records the try, failing when the body asks to."""
    _ran(message, "finish")
    if isinstance(message.body, dict) and message.body.get("fail"):
        raise RuntimeError("this one fails")


# Served as `workqueue worker tests.stages:STAGES`: the test names the two queues.
STAGES = {os.environ.get("TEST_FIRST_QUEUE", "first"): split, os.environ.get("TEST_SECOND_QUEUE", "second"): finish}
