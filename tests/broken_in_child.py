"""A handler module whose import fails in a supervisor's child process (and only there)."""

import sys

if getattr(sys.modules["__main__"].__spec__, "name", "") == "workqueue.worker.child":
    raise ImportError("this module refuses to load in a child")


def handle(message) -> None:
    """Never reached in a child."""
